#!/usr/bin/env bash
# Installs, once per machine, the tools Kiroku's build and tests need beyond
# the Rust toolchain: the wasm32 target, wasm-bindgen-cli at the version in
# Cargo.lock, Node.js packages (htmx, playwright-core) and Debian's Chromium.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
log() { printf '[setup] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if command -v rustup >/dev/null && ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ -n "$want" ] && [ "$want" != "$have" ]; then
    log "installing wasm-bindgen-cli $want (once per machine; 10-20 minutes)"
    cargo install wasm-bindgen-cli --version "$want"
fi

command -v node >/dev/null || apt_install nodejs npm
command -v chromium >/dev/null || apt_install chromium
command -v chromedriver >/dev/null || apt_install chromium-driver
command -v curl >/dev/null || apt_install curl
# pdftotext/pdfimages check the PDF script in the tests.
command -v pdftotext >/dev/null || apt_install poppler-utils
# LibreOffice proves in the end-to-end test that the DOCX opens.
command -v soffice >/dev/null || apt_install libreoffice-writer-nogui
# whisper-rs builds whisper.cpp with cmake and makes its bindings with libclang.
command -v cmake >/dev/null || apt_install cmake
command -v clang >/dev/null || apt_install clang
dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'ok installed' || apt_install libclang-dev

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    log "installing Node.js packages"
    npm ci --no-audit --no-fund --loglevel=error
fi
mkdir -p static/vendor
cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js

scripts/fetch-whisper-model.sh
