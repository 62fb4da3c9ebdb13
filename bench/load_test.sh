#!/usr/bin/env bash
# The serving load test of issue 6: 64 streaming clients for 2 minutes through the real HTTP
# server; passes when no request failed and the server's RSS stayed flat after warm-up.
#
#   bench/load_test.sh [MODEL] [extra smelt bench flags...]
#
# MODEL defaults to the SmolLM2 test model. Environment: SMELT_BIN (default: a release build,
# built when missing), CLIENTS (64), DURATION (120 s), PROMPT_TOKENS (128), MAX_TOKENS (64),
# SHARED_PREFIX (0.5), MAX_RSS_GROWTH (MiB, default 64),
# OUT (the JSON report, default $TMPDIR/smelt-load-test.json). The server inherits the environment, so
# SMELT_NUM_PARALLEL etc. apply. Run it on a quiet machine: it keeps every core busy.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-$HOME/.cache/smelt/test-models/smollm2-135m-instruct-q4_1.gguf}"
shift || true
if [ -z "${SMELT_BIN:-}" ]; then
    cargo build --release -p smelt --quiet
    SMELT_BIN=target/release/smelt
fi
OUT="${OUT:-${TMPDIR:-/tmp}/smelt-load-test.json}"
# --max-rss-growth makes smelt exit non-zero (after the report) on any failed request or on RSS
# growth above the limit; the JSON report is kept either way.
set +e
"$SMELT_BIN" bench --serve "$MODEL" \
    --clients "${CLIENTS:-64}" --duration "${DURATION:-120}" \
    --prompt-tokens "${PROMPT_TOKENS:-128}" --max-tokens "${MAX_TOKENS:-64}" \
    --shared-prefix "${SHARED_PREFIX:-0.5}" \
    --max-rss-growth "${MAX_RSS_GROWTH:-64}" --json "$@" >"$OUT"
rc=$?
set -e
[ -s "$OUT" ] && python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
mib = 1024 * 1024
print(f"requests {r['requests_ok']}/{r['requests']} ok, {r['failures']} failed; "
      f"{r['output_tps']:.1f} tok/s; ttft p50 {r['ttft_ms_p50']:.0f} ms p99 {r['ttft_ms_p99']:.0f} ms; "
      f"itl p50 {r['itl_ms_p50']:.1f} ms p99 {r['itl_ms_p99']:.1f} ms; cache hit {r['cache_hit_rate']:.1%}")
print(f"server RSS {r['rss_start_bytes']/mib:.1f} MiB at start, {r['rss_after_warmup_bytes']/mib:.1f} after warm-up, "
      f"max {r['rss_max_bytes']/mib:.1f}, end {r['rss_end_bytes']/mib:.1f}; growth after warm-up "
      f"{r['rss_growth_bytes']/mib:+.1f} MiB, second half over first {r['rss_late_growth_bytes']/mib:+.1f} MiB")
for e in r["errors"]:
    print("error:", e)
PY
if [ "$rc" -ne 0 ]; then
    echo "load test FAILED (see $OUT)" >&2
    exit "$rc"
fi
echo "load test passed ($OUT)"
