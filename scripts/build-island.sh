#!/usr/bin/env bash
# Builds the Yew island for wasm32 and binds it into static/island/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build -p kiroku-island --target wasm32-unknown-unknown --profile island
rm -rf static/island
wasm-bindgen --target web --no-typescript --out-dir static/island \
    "$TARGET_DIR/wasm32-unknown-unknown/island/kiroku_island.wasm"
ls -l static/island/*.wasm | awk '{ print "[island] " $5 " bytes: " $9 }' >&2
