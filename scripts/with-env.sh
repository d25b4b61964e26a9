#!/usr/bin/env bash
# Runs a command with this checkout's generated configuration loaded
# (.data/kiroku.env, written by scripts/services.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENV_FILE=${KIROKU_ENV_FILE:-$ROOT/.data/kiroku.env}
if [ ! -f "$ENV_FILE" ]; then
    echo "error: $ENV_FILE is missing; run \`just services\` first" >&2
    exit 1
fi
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
exec "$@"
