#!/usr/bin/env bash
# Integration tests of `smelt serve` with the official Python clients (openai, ollama, anthropic).
# Creates its own virtual environment (never installs system-wide), builds the smelt binary, and
# runs pytest. Extra arguments go to pytest (e.g. -k anthropic).
#
#   SMELT_TEST_VENV  where the venv lives (default ~/.cache/smelt/server-test-venv)
#   SMELT_BIN        a prebuilt smelt binary (default: cargo build -p smelt, target/debug/smelt)
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV="${SMELT_TEST_VENV:-$HOME/.cache/smelt/server-test-venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Installed once; pip is quick when everything is already there.
if ! "$VENV/bin/python" -c "import openai, ollama, anthropic, pytest, jsonschema" 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "openai>=1.40" "ollama>=0.4" "anthropic>=0.40" "pytest>=8" "jsonschema>=4"
fi

if [ -z "${SMELT_BIN:-}" ]; then
    cargo build -p smelt --quiet
    export SMELT_BIN="$PWD/target/debug/smelt"
fi
python3 scripts/fetch_models.py >/dev/null
exec "$VENV/bin/python" -m pytest -q tests/server "$@"
