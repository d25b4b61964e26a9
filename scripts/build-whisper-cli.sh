#!/usr/bin/env bash
# Builds whisper.cpp's own command-line tool (whisper-cli) against the very
# static libraries (libwhisper, libggml*) that whisper-rs-sys compiled for
# Kiroku's build in PROFILE (debug or release), for `just bench-speech`.
# whisper-rs-sys builds whisper.cpp optimised (CMake RelWithDebInfo or
# Release) in either profile.
#
# The whisper-rs-sys crate ships whisper.cpp's library sources but not its
# examples, so the CLI's sources come from the npm package nodejs-whisper
# (0.3.1 bundles whisper.cpp 1.9.1's examples/). Only the front end differs
# in version; every instruction that transcribes is the same compiled code.
#
# Usage: scripts/build-whisper-cli.sh TARGET_DIR [PROFILE]  → prints the tool's path.
set -euo pipefail
target=${1:?usage: build-whisper-cli.sh CARGO_TARGET_DIR [debug|release]}
profile=${2:-debug}
cache=${KIROKU_CACHE_DIR:-$HOME/.cache/kiroku}/whisper-cli
pkg=nodejs-whisper@0.3.1

build=$(ls -dt "$target"/"$profile"/build/whisper-rs-sys-*/out/build 2>/dev/null | head -1 || true)
[[ -n "$build" && -f "$build/CMakeCache.txt" ]] || {
    echo "no $profile build of whisper-rs-sys under $target (build Kiroku first)" >&2
    exit 1
}
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
lib=$(dirname "$build")/lib
for f in libwhisper.a libggml.a libggml-cpu.a libggml-base.a; do
    [[ -f "$lib/$f" ]] || { echo "missing $lib/$f" >&2; exit 1; }
done

mkdir -p "$cache"
if [[ ! -f "$cache/examples/cli/cli.cpp" ]]; then
    echo "[whisper-cli] fetching the CLI sources ($pkg from npm)" >&2
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null)
    tar -xzf "$tmp"/nodejs-whisper-*.tgz -C "$tmp" package/cpp/whisper.cpp/examples
    rm -rf "$cache/examples"
    mv "$tmp/package/cpp/whisper.cpp/examples" "$cache/examples"
fi

out=$cache/whisper-cli-$profile
stamp="$lib/libwhisper.a"
if [[ ! -x "$out" || "$stamp" -nt "$out" ]]; then
    echo "[whisper-cli] compiling against $lib" >&2
    ex=$cache/examples
    # common-ggml.cpp (quantisation helpers) is left out: the CLI does not
    # use it, and it names types newer than this library.
    g++ -O2 -DNDEBUG -std=c++17 -march=native -w \
        -I"$ex" -I"$src/include" -I"$src/ggml/include" \
        "$ex/cli/cli.cpp" "$ex/common.cpp" "$ex/common-whisper.cpp" "$ex/grammar-parser.cpp" \
        "$lib/libwhisper.a" "$lib/libggml.a" "$lib/libggml-cpu.a" "$lib/libggml-base.a" \
        -lgomp -lpthread -o "$out"
fi
echo "$out"
