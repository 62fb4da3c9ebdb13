#!/usr/bin/env bash
# End-to-end test of the chat page (/ui) in headless Chromium against the real server and model.
# Installs Debian's chromium (apt) and playwright-core (npm, into tests/ui/node_modules) when missing.
#
#   SMELT_BIN   a prebuilt smelt binary (default: cargo build -p smelt, target/debug/smelt)
#   CHROMIUM    the browser (default /usr/bin/chromium)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y --no-install-recommends chromium >/dev/null
fi
if [ ! -d tests/ui/node_modules/playwright-core ]; then
    (cd tests/ui && npm install --no-audit --no-fund --silent)
fi
if [ -z "${SMELT_BIN:-}" ]; then
    cargo build -p smelt --quiet
    SMELT_BIN="$ROOT/target/debug/smelt"
fi
python3 scripts/fetch_models.py >/dev/null
MODELS="${SMELT_TEST_MODELS:-$HOME/.cache/smelt/test-models}"

TMP="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$TMP/store" "$TMP/ollama"
SMELT_MODELS="$TMP/store" OLLAMA_MODELS="$TMP/ollama" SMELT_HOST="127.0.0.1:$PORT" SMELT_CONTEXT_LENGTH=1024 SMELT_DEBUG=1 \
    "$SMELT_BIN" serve >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
    curl -sf "$URL/" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "$URL/api/create" -d "{\"model\": \"smollm2\", \"from\": \"$MODELS/smollm2-135m-instruct-q4_1.gguf\", \"stream\": false}" >/dev/null

if ! SMELT_URL="$URL" SMELT_UI_MODEL="smollm2:latest" node tests/ui/ui.test.mjs; then
    echo "--- server log ---" >&2
    cat "$TMP/server.log" >&2
    exit 1
fi
