#!/usr/bin/env bash
# Runs the crypto crate's known-answer tests compiled to wasm32, in Debian's
# headless Chromium through chromedriver.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
export CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver)}
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-300}
# webdriver.json beside the crate's manifest gives Chromium its flags.
cargo test -p kiroku-crypto --target wasm32-unknown-unknown --profile island-test
