# Kiroku's daily commands. `just dev` runs it; `just test` proves it.
# Services and tools are installed by the recipes themselves (see README).

set shell := ["bash", "-euo", "pipefail", "-c"]

export CARGO_TARGET_DIR := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")
bin := CARGO_TARGET_DIR / "debug"
with_env := "scripts/with-env.sh"

# List the recipes.
default:
    @just --list

# Install the tools the build and tests need (idempotent).
setup:
    scripts/setup.sh

# Start PostgreSQL, Redis and SeaweedFS (installing what is missing).
services:
    scripts/services.sh up

# Stop the services this checkout started.
services-down:
    scripts/services.sh down

# Build the browser island into static/island/.
island:
    scripts/build-island.sh

# Build the three binaries.
build:
    cargo build --bins

# Apply database migrations.
migrate: build
    {{with_env}} {{bin}}/kiroku migrate

# Create a user and print their temporary password.
user-add name: build
    {{with_env}} {{bin}}/kiroku user add {{name}}

# Check services and credentials.
doctor: build
    {{with_env}} {{bin}}/kiroku doctor

# Run Kiroku locally: services, migrations, island, then app + worker + export.
dev: setup services island migrate
    #!/usr/bin/env bash
    set -euo pipefail
    trap 'kill 0' EXIT
    {{with_env}} {{bin}}/kiroku-worker &
    {{with_env}} {{bin}}/kiroku-export &
    {{with_env}} {{bin}}/kiroku serve &
    for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/readyz >/dev/null && break; sleep 0.2; done
    echo
    echo "Kiroku is running at http://127.0.0.1:8080"
    echo "Create the first user in another terminal with:  just user-add YOUR_NAME"
    echo "Stop with Ctrl-C."
    wait

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --exclude kiroku-island --all-targets -- -D warnings
    cargo clippy -p kiroku-island -p kiroku-crypto --target wasm32-unknown-unknown -- -D warnings

# Everything CI runs: lints, unit and integration tests on real services,
# the crypto vectors in headless Chromium, and the browser tests.
test: setup lint services island build
    {{with_env}} cargo test --workspace
    scripts/wasm-test.sh
    {{with_env}} node --test tests/browser/

# Benchmarks: they report, and fail only on a crash or a wrong result.
bench: bench-argon2 bench-decrypt bench-export bench-pipeline bench-speech bench-recording

# Argon2id (64 MiB, t=3, p=4) in headless Chromium: the island's wasm vs hash-wasm.
bench-argon2: island
    test -f node_modules/hash-wasm/package.json || npm ci --no-audit --no-fund --loglevel=error
    node bench/argon2.mjs

# Opening a 50 MiB sealed artifact in Chromium: the island's reader vs bare WebCrypto AES-GCM.
bench-decrypt: island
    node bench/decrypt.mjs

# Export service (release build) vs a direct SeaweedFS GET of the same 1 GiB object.
bench-export *args: services
    cargo build --release -p kiroku-export --bin kiroku-export
    {{with_env}} cargo run -p kiroku-tests --bin bench_export -- --export-bin {{CARGO_TARGET_DIR}}/release/kiroku-export {{args}}

# A 10-minute recording with 10 photos to sealed artifacts (release build; `--skip-engine` for the quick part).
bench-pipeline *args: services
    {{with_env}} cargo run --release -p kiroku-tests --bin bench_pipeline -- {{args}}

# Local Whisper speed: the engine vs whisper.cpp's own CLI linked with the same compiled library.
bench-speech *args: setup
    cargo build -p kiroku-tests --bin bench_speech
    {{with_env}} {{bin}}/bench_speech --cli "$(scripts/build-whisper-cli.sh {{CARGO_TARGET_DIR}} debug)" {{args}}

# Recording load: simulated recorders vs the app and SeaweedFS (`just bench-recording --help`).
bench-recording *args: services
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; {{with_env}} cargo run --release -p kiroku-tests --bin bench_recording -- {{args}}
