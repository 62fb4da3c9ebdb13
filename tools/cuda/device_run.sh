#!/bin/bash
# One device call: GPU facts, smelt-cuda kernel tests, model-level GPU-vs-CPU check, smelt bench
# on synthetic 1B/8B Q4_K_M, llama.cpp (CUDA) llama-bench on the same files. Run from the repo
# root on the device with .devcarry-cuda carried (see tools/cuda/README.md). Logs go to $OUT.
set -u
C=$PWD/.devcarry-cuda
export SMELT_CUDA_CACHE=/tmp/smelt-cuda-cache
MODE=${1:-all}
S=$(date +%s)
el() { echo "[$(( $(date +%s) - S ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
chmod +x $C/smelt $C/smelt_cuda_tests
$C/smelt --version
if [ "$MODE" != "smelt" ]; then
  # llama.cpp with CUDA, in its own session so it survives this command if needed.
  ( mkdir -p /tmp/l && tar xJf $C/lcp.tar.xz -C /tmp/l && cd /tmp/l/lcp && sed -i "/add_subdirectory(app)/d" CMakeLists.txt && \
    cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=ON > /tmp/lcp_cmake.log 2>&1 && \
    cmake --build build --target llama-bench -j14 > /tmp/lcp_build.log 2>&1; echo $? > /tmp/lcp_done ) &
fi
el "synthetic"
$C/smelt bench --synthetic llama-1b:q4_k_m -o /tmp/1b.gguf --vocab-from $C/vocab.gguf 2>&1 | tail -1
el "1b small run under cuda-gdb (backtrace of any crash)"
timeout 120 cuda-gdb -batch -ex run -ex bt --args $C/smelt bench /tmp/1b.gguf -p 16 -n 4 -r 1 > $OUT/gdb_1b.log 2>&1; grep -E "SIGSEGV|^#[0-9]|decode|prefill" $OUT/gdb_1b.log | head -30
el "perplexity gpu vs cpu"
for d in cuda cpu; do timeout 120 $C/smelt --device $d perplexity /tmp/1b.gguf README.md --chunks 2 --ctx 256 > $OUT/ppl_$d.log 2>&1; echo "$d rc=$?"; tail -2 $OUT/ppl_$d.log; done
el "bench 1b"
timeout 120 $C/smelt bench /tmp/1b.gguf -p 512 -n 128 -r 3 --json > $OUT/bench_1b.json 2> $OUT/bench_1b.err; echo rc=$?; cat $OUT/bench_1b.json; tail -3 $OUT/bench_1b.err
el "bench 1b, graphs off"
SMELT_CUDA_GRAPHS=0 timeout 120 $C/smelt bench /tmp/1b.gguf -p 512 -n 128 -r 3 --json > $OUT/bench_1b_nograph.json 2>&1; echo rc=$?; cat $OUT/bench_1b_nograph.json | tail -c 600
el "synthetic 8b"
$C/smelt bench --synthetic llama-8b:q4_k_m -o /tmp/8b.gguf --vocab-from $C/vocab.gguf 2>&1 | tail -1
el "bench 8b"
timeout 150 $C/smelt bench /tmp/8b.gguf -p 512 -n 128 -r 3 --json > $OUT/bench_8b.json 2> $OUT/bench_8b.err; echo rc=$?; cat $OUT/bench_8b.json; tail -3 $OUT/bench_8b.err
el "tests"
timeout 260 $C/smelt_cuda_tests --test-threads=1 --nocapture > $OUT/tests.log 2>&1; echo "tests rc=$?" | tee -a $OUT/tests.log
tail -3 $OUT/tests.log
if [ "$MODE" != "smelt" ]; then
  el "waiting for llama.cpp"; tail -5 /tmp/lcp_cmake.log
  while [ ! -f /tmp/lcp_done ] && [ $(( $(date +%s) - S )) -lt 540 ]; do sleep 5; done
  tail -3 /tmp/lcp_build.log; cp /tmp/lcp_build.log $OUT/ 2>/dev/null
  B=/tmp/l/lcp/build/bin/llama-bench
  if [ -x $B ]; then
    for m in 1b 8b; do timeout 60 $B -m /tmp/$m.gguf -p 512 -n 128 -r 3 -ngl 99 -o json > $OUT/lcp_$m.json 2> $OUT/lcp_$m.err; echo "lcp $m rc=$?"; done
    python3 -c "
import json
for m in ['1b','8b']:
    try:
        for r in json.load(open('$OUT/lcp_'+m+'.json')): print('llama.cpp', m, 'p', r['n_prompt'], 'n', r['n_gen'], 'tps %.1f' % r['avg_ts'])
    except Exception as e: print('lcp', m, e)"
  fi
fi
el "summary"
python3 -c "
import json
for m in ['1b','8b']:
    try:
        r = json.load(open('$OUT/bench_'+m+'.json'))
        print('smelt', m, r['device'][:40], 'prefill %.1f decode %.1f tok/s, %.1f kernels/tok, %.2f subm/tok, %.0f GB/s = %.0f%% of copy %.0f GB/s' % (r['prefill_tps'], r['decode_tps'], r['kernels_per_token'], r['submissions_per_token'], r['achieved_gbps'], 100*r['bandwidth_share'], r['membw_gbps']))
    except Exception as e: print('smelt', m, e)"
