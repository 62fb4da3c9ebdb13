#!/bin/bash
# One device call: GPU facts, smelt-cuda kernel tests, smelt bench on synthetic 1B/8B Q4_K_M and
# SmolLM2-135M-shaped Q8_0, GPU vs CPU perplexity, and llama.cpp (CUDA) llama-bench on the same
# files. Run from the repo root on the device with .devcarry-cuda carried (tools/cuda/README.md).
# llama.cpp builds in its own session (setsid): a call made while the machine is still warm
# finds it in /tmp/l. Logs go to $OUT (at most 8 files come back).
set -u
C=$PWD/${DEVCARRY:-.devcarry-cuda}
export SMELT_CUDA_CACHE=/tmp/smelt-cuda-cache
MODE=${1:-all}
S=$(date +%s)
el() { echo "[$(( $(date +%s) - S ))s] $*"; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
if [ "$MODE" = lcpstash ]; then
  # The FlashAttention llama-bench (three 15 MiB parts) and smelt's binaries together are over
  # one call's 64 MiB: a first call carries the parts alone (.devcarry-lcp) and leaves them
  # in /tmp for the calls after it while the machine stays warm.
  mkdir -p /tmp/lcpstash && cp $C/lcpbin.part* /tmp/lcpstash/ && ls -la /tmp/lcpstash
  exit 0
fi
chmod +x $C/smelt $C/smelt_cuda_tests
$C/smelt --version
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
LP=$C; ls $C/lcpbin.part* > /dev/null 2>&1 || LP=/tmp/lcpstash
if [ ! -e /tmp/lcp_started ] && ls $LP/lcpbin.part* > /dev/null 2>&1; then
  # llama-bench built by an earlier call (MODE=profile brings it back in parts): no rebuild.
  touch /tmp/lcp_started; mkdir -p /tmp/l/lcp/build/bin
  cat $LP/lcpbin.part* | tar xJf - -C /tmp/l/lcp/build/bin && echo 0 > /tmp/lcp_done
fi
if [ ! -e /tmp/lcp_started ] && [ -f $C/lcp.tar.xz ]; then
  touch /tmp/lcp_started
  # FlashAttention kernels (LCP_FA=ON builds them: longer than one call, keep the machine warm
  # with other calls meanwhile) and NCCL off, sm_90 only, llama-bench only: fits one call's time.
  setsid bash -c "mkdir -p /tmp/l && tar xJf $C/lcp.tar.xz -C /tmp/l && cd /tmp/l/lcp && sed -i '/add_subdirectory(app)/d' CMakeLists.txt && \
    cmake -G Ninja -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_COMPILER=$NVCC -DGGML_CUDA_FA=${LCP_FA:-OFF} \
      -DGGML_CUDA_NCCL=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF > /tmp/lcp_build.log 2>&1 && \
    nice -n 19 cmake --build build --target llama-bench -j${LCP_J:-16} >> /tmp/lcp_build.log 2>&1; echo \$? > /tmp/lcp_done" > /dev/null 2>&1 < /dev/null &
fi
bench() { # name model [env...]; a run the host SIGSEGV ends (seen, unexplained) is retried once.
  # BP: prompt tokens (512; 1 decodes from an empty context, as llama-bench's tg256 does).
  local n=$1 m=$2; shift 2; local rc
  for try in 1 2; do
    env "$@" timeout 150 $C/smelt bench $m -p ${BP:-512} -n 256 -r 5 --json > /tmp/b.json 2> /tmp/b.err; rc=$?
    echo "$n try $try rc=$rc $(tail -c 300 /tmp/b.err | tr '\n' ' ')" | tail -c 400
    [ $rc = 139 ] || break
  done
  python3 -c "import json,sys; r=json.load(open('/tmp/b.json')); r['run']='$n'; print(json.dumps(r))" >> $OUT/bench.jsonl 2>/dev/null
}
if [ "$MODE" = all ] || [ "$MODE" = smelt ]; then
  el "kernel tests"
  # generated_kernels_compile needs no GPU (it runs on the dev machine): skipped here.
  [ -n "${SKIP_TESTS:-}" ] || timeout ${TEST_S:-150} $C/smelt_cuda_tests --test-threads=1 --nocapture --skip generated_kernels_compile ${TEST_ARGS:-} > $OUT/tests.log 2>&1; echo "tests rc=$?"
  grep -E "test result|panicked|FAILED" $OUT/tests.log | head -5
  for s in llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m; do
    el "synthetic $s"; f=/tmp/${s%%:*}.gguf
    [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  done
  el "bench"
  bench 1b /tmp/llama-1b.gguf
  bench 8b /tmp/llama-8b.gguf
  bench smol /tmp/smollm2-135m.gguf
  # Decode from an empty context (a 1-token prompt): llama-bench's tg256 without -d.
  BP=1 bench 1b-d0 /tmp/llama-1b.gguf
  BP=1 bench 8b-d0 /tmp/llama-8b.gguf
  BP=1 bench smol-d0 /tmp/smollm2-135m.gguf
  if [ -n "${ALT_ENV:-}" ]; then # the same binary with other settings (ALT_ENV="A=0,B=1"), runs named *-alt
    bench 1b-alt /tmp/llama-1b.gguf ${ALT_ENV//,/ }
    bench 8b-alt /tmp/llama-8b.gguf ${ALT_ENV//,/ }
    bench smol-alt /tmp/smollm2-135m.gguf ${ALT_ENV//,/ }
    BP=1 bench 1b-d0-alt /tmp/llama-1b.gguf ${ALT_ENV//,/ }
    BP=1 bench 8b-d0-alt /tmp/llama-8b.gguf ${ALT_ENV//,/ }
    BP=1 bench smol-d0-alt /tmp/smollm2-135m.gguf ${ALT_ENV//,/ }
  fi
  if [ -n "${ABLATE:-}" ]; then # the same binary with programmatic dependent launch off
    bench 1b-nopdl /tmp/llama-1b.gguf SMELT_CUDA_PDL=0
    bench 8b-nopdl /tmp/llama-8b.gguf SMELT_CUDA_PDL=0
    bench smol-nopdl /tmp/smollm2-135m.gguf SMELT_CUDA_PDL=0
  fi
  $C/smelt show /tmp/llama-1b.gguf 2>&1 | grep -i -E "device|backend|prefill" | head -3
  el "profile 8b"
  [ -n "${SKIP_PROFILE:-}" ] || SMELT_CUDA_PROFILE=1 timeout 100 $C/smelt bench /tmp/llama-8b.gguf -p 512 -n 64 -r 1 2>&1 | grep -v -E "^\s*$" > $OUT/profile.txt
fi
if [ "$MODE" = batch ]; then
  # Batched decode on the GPU: the kernel tests named by TEST_ARGS (default: the batch test),
  # then `smelt bench --serve` (the real HTTP server, SMELT_NUM_PARALLEL = clients) on the
  # synthetic 1B and 8B: aggregate output tok/s, inter-token and first-token latency.
  el "kernel tests"
  # TEST_ENV: assignments for the tests alone (comma-separated).
  [ -n "${SKIP_TESTS:-}" ] || env $(echo "${TEST_ENV:-}" | tr , " ") X=1 timeout ${TEST_S:-200} $C/smelt_cuda_tests --test-threads=1 --nocapture ${TEST_ARGS:-batched} > $OUT/tests.log 2>&1; echo "tests rc=$?"
  grep -E "test result|panicked|FAILED" $OUT/tests.log | head -8
  for s in ${BATCH_MODELS:-llama-1b:q4_k_m llama-8b:q4_k_m}; do
    f=/tmp/${s%%:*}.gguf
    [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
    # BATCH_ENVS: settings to compare, each a comma-separated list of assignments, run
    # interleaved per batch size (e.g. "X=1 SMELT_CUDA_SEQ_SPLIT=0 SMELT_CUDA_BATCH_MMA=0").
    for b in ${BATCH_SIZES:-1 2 4 8}; do for e in ${BATCH_ENVS:-X=1}; do
      el "bench --batch $b ${s%%:*} $e"
      # BIN=name in a setting runs $C/name (an older build carried beside) in place of smelt.
      bin=$C/smelt; case ",$e" in *,BIN=*) bin=$C/$(echo ",$e" | sed 's/.*,BIN=\([^,]*\).*/\1/') ;; esac
      env ${e//,/ } timeout 200 $bin bench --batch $b $f -p 128 -n ${BATCH_GEN:-128} -r 3 --json 2>> $OUT/serve.log \
        | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['env']='$e'; print(json.dumps(r))" | tee -a $OUT/batch.jsonl
    done; done
    for c in ${BATCH_CLIENTS-8}; do
      el "serve ${s%%:*} clients=$c"
      SMELT_DEBUG=1 SMELT_NUM_PARALLEL=$c timeout ${BATCH_S:-150} $C/smelt bench --serve $f --clients $c --requests ${BATCH_REQ:-2} \
        --prompt-tokens 128 --max-tokens ${BATCH_TOKENS:-128} --verbose --json > /tmp/s.json 2> /tmp/s.err; echo "rc=$?"
      { echo "=== ${s%%:*} clients=$c"; cat /tmp/s.err; } >> $OUT/serve.log
      python3 -c "import json; r=json.load(open('/tmp/s.json')); print(json.dumps({k: r.get(k) for k in ['clients','requests_ok','failures','errors','output_tps','itl_ms_p50','itl_ms_p99','stream_tps_p50','ttft_ms_p50','wall_s']} | {'model': '${s%%:*}'}))" | tee -a $OUT/serve.jsonl
    done
  done
  exit 0
fi
if [ "$MODE" = load ]; then
  # Cold-cache load on the three shapes: the batch engine's step shapes (the `prepare` line:
  # graphs, sources, compile threads and the slowest compile), then one sequence's load to first
  # token and its decode.
  for s in llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
    rm -rf $SMELT_CUDA_CACHE
    el "batch load ${s%%:*}"
    timeout 200 $C/smelt bench --batch 8 $f -p 128 -n 16 -r 1 --json 2>&1 > /dev/null | grep -E "step shapes|compiled in" | tail -3
    rm -rf $SMELT_CUDA_CACHE
    timeout 120 $C/smelt bench $f -p 512 -n 64 -r 1 --json > /tmp/b.json 2> /dev/null
    python3 -c "import json; r=json.load(open('/tmp/b.json')); print('${s%%:*} cold: load %.0f ms, load to first token %.0f ms, decode %.1f tok/s' % (r['load_ms'], r['load_to_first_token_ms'], r['decode_tps']))"
  done
  exit 0
fi
if [ "$MODE" = stash ]; then
  # First of two calls made back to back (the machine stays warm for 30 s): the real SmolLM2
  # (98 MB) is over one call's 64 MiB, so this call leaves its first part in /tmp.
  cp $C/smolA.part* /tmp/ && ls -la /tmp/smolA.part*
  exit 0
fi
if [ "$MODE" = oracle ]; then
  # Second call: join the parts, check the file, run the CUDA oracle tests (the CUDA backend
  # against llama.cpp's committed fixtures: argmax agreement, KL, perplexity).
  mkdir -p /tmp/tm && cat /tmp/smolA.part* $C/smolB.part* > /tmp/tm/smollm2-135m-instruct-q4_1.gguf
  echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /tmp/tm/smollm2-135m-instruct-q4_1.gguf" | sha256sum -c || exit 1
  chmod +x $C/oracle_tests
  SMELT_REPO_ROOT=$PWD SMELT_TEST_MODELS=/tmp/tm timeout 300 $C/oracle_tests --test-threads=1 --nocapture smollm2_teacher_forced_cuda 2>&1 | tee $OUT/oracle.log | grep -v "^\s*$" | tail -20
  if [ -x $C/batch_tests ] || [ -f $C/batch_tests ]; then
    # The engine's batch tests on the GPU (the batch runner picks it): batched greedy tokens
    # equal each prompt's alone, and the batch loop's concurrent requests.
    chmod +x $C/batch_tests
    SMELT_REPO_ROOT=$PWD SMELT_TEST_MODELS=/tmp/tm timeout 200 $C/batch_tests --test-threads=1 --nocapture smollm2 batch_loop 2>&1 | tee $OUT/batch.log | grep -v "^\s*$" | tail -20
  fi
  exit 0
fi
if [ "$MODE" = ncu ]; then
  # Nsight Compute on decode kernels (named dk<i>; graphs off so each is a launch of its own):
  # skip the first decode steps, then the next NCU_COUNT launches (a layer and a half by
  # default), full sections: achieved DRAM bandwidth, warp stall reasons, occupancy.
  # NCU_SPEC names the synthetic model (llama-8b:q4_k_m, llama-1b:q4_k_m, smollm2-135m:q8_0).
  s=${NCU_SPEC:-llama-8b:q4_k_m}; f=/tmp/${s%%:*}.gguf
  [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  o=$OUT/ncu-${s%%:*}.txt
  SMELT_CUDA_GRAPHS=0 timeout ${NCU_S:-300} /usr/local/cuda/bin/ncu -k regex:^dk --launch-skip ${NCU_SKIP:-322} \
    --launch-count ${NCU_COUNT:-8} --set full $C/smelt bench $f -p 64 -n 8 -r 1 > $o 2>&1
  echo "ncu rc=$?"; grep -E "^  dk|Duration|DRAM Throughput|Achieved Occupancy|Registers Per" $o | head -60
fi
if [ "$MODE" = ab ]; then
  # A/B of one environment variable (AB_VAR, values AB_VALUES) on the three synthetic models,
  # interleaved per model so clocks and heat treat each value alike; AB_P prompt tokens (512;
  # 1 decodes from an empty context).
  for s in llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m; do
    case " ${AB_MODELS:-llama-1b smollm2-135m llama-8b} " in *" ${s%%:*} "*) ;; *) continue ;; esac
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  done
  # A value with '=' in it is a comma-separated list of assignments (several variables at once:
  # AB_VALUES="A=0,B=2 A=1,B=1").
  for m in ${AB_MODELS:-llama-1b smollm2-135m llama-8b}; do for v in ${AB_VALUES:-0 1}; do
    case $v in *=*) a=${v//,/ } ;; *) a="${AB_VAR:-X}=$v" ;; esac
    # BIN=name in a value runs another carried binary (two builds A/B: BIN=smelt_old).
    bin=$C/smelt; case " $a" in *" BIN="*) bin=$C/$(echo " $a" | sed 's/.* BIN=\([^ ]*\).*/\1/') ;; esac
    env $a timeout 90 $bin bench /tmp/$m.gguf -p ${AB_P:-512} -n 256 -r 5 --json > /tmp/b.json 2> /tmp/b.err
    python3 -c "import json; r=json.load(open('/tmp/b.json')); print('$m -p ${AB_P:-512} $a prefill %.1f decode %.1f tok/s, %.0f GB/s' % (r['prefill_tps'], r['decode_tps'], r['achieved_gbps']))" || tail -3 /tmp/b.err
  done; done
fi
if [ "$MODE" = long ]; then
  # Decode deep into a long context: smelt `bench -p D -n LONG_N` (prefill D tokens, then
  # decode) against llama-bench `-p 0 -n LONG_N -d D` (FlashAttention on) on the same file,
  # for each depth of LONG_DEPTHS, interleaved per model.
  B=/tmp/l/lcp/build/bin/llama-bench
  for s in ${LONG_MODELS:-llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m}; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
    for d in ${LONG_DEPTHS:-4096 16384}; do
      # LONG_VALUES: settings for smelt's runs, interleaved (each a comma-separated list of
      # assignments, e.g. "X=1 SMELT_CUDA_ATTN_REGION=0"); LONG_LCP=0 skips llama.cpp.
      for e in ${LONG_VALUES:-X=1}; do
      env ${e//,/ } timeout 200 $C/smelt bench $f -p $d -n ${LONG_N:-128} -r ${LONG_R:-3} --json > /tmp/b.json 2> /tmp/b.err
      python3 -c "import json; r=json.load(open('/tmp/b.json')); print('smelt ${s%%:*} depth $d $e prefill %.1f decode %.1f tok/s, %.0f GB/s' % (r['prefill_tps'], r['decode_tps'], r['achieved_gbps']))" || tail -3 /tmp/b.err
      done
      [ "${LONG_LCP:-1}" != 0 ] && [ -x $B ] && timeout 200 $B -m $f -p 0 -n ${LONG_N:-128} -d $d -r ${LONG_R:-3} -ngl 99 -fa on -o jsonl 2>> $OUT/lcp.err | tee -a $OUT/lcp.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l); print('llama.cpp ${s%%:*} depth', r.get('n_depth'), 'decode %.1f tok/s (median of' % sorted(r['samples_ts'])[len(r['samples_ts'])//2], len(r['samples_ts']), ')')"
    done
  done
fi
if [ "$MODE" = trace ]; then
  # Each decode launch's span and the gap before it inside the replayed graph
  # (SMELT_CUDA_TRACE=1: global-timer stamps by the first and last block), by label.
  # TRACE_MODELS picks the shapes (default all three); TRACE_ENV sets variables for the runs.
  for s in ${TRACE_MODELS:-llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m}; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
    echo "=== ${s%%:*} ${TRACE_ENV:-}" | tee -a $OUT/trace.txt
    env ${TRACE_ENV:-X=1} SMELT_CUDA_TRACE=1 timeout 120 $C/smelt bench $f -p ${TRACE_P:-512} -n ${TRACE_N:-64} -r 1 2>> $OUT/trace.txt | tail -1
    grep -A12 "SMELT_CUDA_TRACE" $OUT/trace.txt | tail -13
  done
fi
if [ "$MODE" = tiled ]; then
  # The tiled prefill attention (SMELT_CUDA_PREFILL_ATTN=tiled): 1B perplexity on the GPU with
  # and without it against the CPU, then prefill speed of both on 1B and 8B.
  for s in llama-1b:q4_k_m llama-8b:q4_k_m; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  done
  for v in tiled default; do
    SMELT_CUDA_PREFILL_ATTN=$v timeout 60 $C/smelt --device cuda perplexity /tmp/llama-1b.gguf README.md --chunks 2 --ctx 256 > /tmp/p.log 2>&1; echo "ppl cuda $v rc=$? $(tail -1 /tmp/p.log)"
  done
  timeout 60 $C/smelt --device cpu perplexity /tmp/llama-1b.gguf README.md --chunks 2 --ctx 256 > /tmp/p.log 2>&1; echo "ppl cpu rc=$? $(tail -1 /tmp/p.log)"
  for m in ${TILED_MODELS:-llama-1b llama-8b}; do for v in tiled default; do
    SMELT_CUDA_PREFILL_ATTN=$v timeout 60 $C/smelt bench /tmp/$m.gguf -p 512 -n 16 -r 3 --json > /tmp/b.json 2>/dev/null
    python3 -c "import json; r=json.load(open('/tmp/b.json')); print('$m $v prefill %.1f decode %.1f' % (r['prefill_tps'], r['decode_tps']))"
  done; done
fi
if [ "$MODE" = profile ]; then
  # Per-kernel device time (SMELT_CUDA_PROFILE=1: graphs off, events around every launch), then
  # the normal bench, on the three synthetic shapes; facts about the machine's CUDA libraries.
  { ls /usr/local/cuda*/lib64/ 2>/dev/null | grep -E "cublas|nvrtc" | head; ldconfig -p | grep -E "cublas|nvrtc"; command -v nsys ncu; } > $OUT/libs.txt 2>&1
  for s in llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  done
  for m in llama-8b llama-1b smollm2-135m; do
    el "profile $m"
    echo "=== $m" >> $OUT/profile.txt
    SMELT_CUDA_PROFILE=1 timeout 120 $C/smelt bench /tmp/$m.gguf -p 512 -n 64 -r 1 2>> $OUT/profile.txt | tail -4 >> $OUT/profile.txt
  done
  el "bench"
  bench 1b /tmp/llama-1b.gguf
  bench 8b /tmp/llama-8b.gguf
  bench smol /tmp/smollm2-135m.gguf
fi
if [ "$MODE" = all ] || [ "$MODE" = lcp ] || [ "$MODE" = profile ]; then
  el "waiting for llama.cpp"
  while [ ! -f /tmp/lcp_done ] && [ $(( $(date +%s) - S )) -lt ${LCP_WAIT:-560} ]; do sleep 5; done
  cp /tmp/lcp_build.log $OUT/ 2>/dev/null; tail -3 /tmp/lcp_build.log
  B=/tmp/l/lcp/build/bin/llama-bench
  if [ -x $B ]; then
    for m in llama-1b llama-8b smollm2-135m; do
      [ -f /tmp/$m.gguf ] || continue
      # pp512 and tg256 from an empty context, then tg256 after 512 positions (-d 512: the
      # context smelt's `bench -p 512 -n 256` decodes in).
      # LCP_ARGS adds llama-bench options (`-fa off,on` with a FlashAttention build).
      timeout 150 $B -m /tmp/$m.gguf -p 512 -n 256 -r 5 -ngl 99 ${LCP_ARGS:-} -o jsonl >> $OUT/lcp.jsonl 2>> $OUT/lcp.err; echo "lcp $m rc=$?"
      timeout 150 $B -m /tmp/$m.gguf -p 0 -n 256 -d 512 -r 5 -ngl 99 ${LCP_ARGS:-} -o jsonl >> $OUT/lcp.jsonl 2>> $OUT/lcp.err; echo "lcp $m -d 512 rc=$?"
    done
    if { [ "$MODE" = profile ] || [ "$MODE" = lcp ] || [ -n "${LCP_PACK:-}" ]; } && [ ! -f $LP/lcpbin.part00 ]; then
      # Bring the built llama-bench back (static but for the CUDA runtime libraries) in parts.
      ldd $B | grep -v -E "^\s*(linux-vdso|/lib)" | head -20
      strip $B; tar cf - -C /tmp/l/lcp/build/bin llama-bench | xz -T16 -6 | split -d -b 15M - $OUT/lcpbin.part
      ls -la $OUT
    fi
  fi
fi
if [ "$MODE" = all ] && [ $(( $(date +%s) - S )) -lt 480 ]; then
  el "perplexity gpu vs cpu (1b)"
  for d in cuda cpu; do timeout 50 $C/smelt --device $d perplexity /tmp/llama-1b.gguf README.md --chunks 2 --ctx 256 >> $OUT/ppl.log 2>&1; echo "$d rc=$? $(tail -1 $OUT/ppl.log)"; done
fi
el "summary"
python3 - <<PY
import json
try:
    for l in open('$OUT/bench.jsonl'):
        r = json.loads(l)
        print('smelt %-11s prefill %7.1f decode %7.1f tok/s, %5.1f kern/tok, %.2f subm/tok, %4.0f GB/s = %3.0f%% of copy %4.0f' % (r['run'], r['prefill_tps'], r['decode_tps'], r['kernels_per_token'], r['submissions_per_token'], r['achieved_gbps'], 100*r['bandwidth_share'], r['membw_gbps']))
except Exception as e: print('smelt', e)
try:
    for l in open('$OUT/lcp.jsonl'):
        r = json.loads(l)
        # The median of the repetitions, as smelt reports (llama-bench's avg_ts keeps a slow
        # first repetition: pp512 23212 against 35935-36602 tok/s for the others, cuda13).
        s = sorted(r['samples_ts']); med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
        print('llama.cpp %-40s p %3d n %3d d %3d fa %2s median %8.1f tok/s (mean %8.1f)' % (r['model_filename'][-30:], r['n_prompt'], r['n_gen'], r.get('n_depth', 0), r.get('flash_attn', '?'), med, r['avg_ts']))
except Exception as e: print('lcp', e)
PY
if [ "$MODE" = serve1 ]; then
  # One client through `smelt serve` (4 sequences, the batch engine), the server's own eval
  # rate (tools/cuda/evalrate.py, carried as $C/evalrate.py), for each sampling of SERVE1_TEMPS
  # (temperature, or temperature,repeat-penalty) and each setting of SERVE1_ENVS interleaved,
  # twice; then `smelt bench` (one sequence, no server) at that temperature (cuda.md v27).
  for s in llama-1b:q4_k_m smollm2-135m:q8_0; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  done
  for m in ${SERVE1_MODELS:-smollm2-135m llama-1b}; do
    for t in ${SERVE1_TEMPS:-0 0.8 0,1.0}; do
      rp=1.1; case $t in *,*) rp=${t#*,}; t=${t%,*} ;; esac
      for rep in 1 2; do for e in ${SERVE1_ENVS:-SMELT_CUDA_SOLO=0 X=1}; do
        bin=$C/smelt; case ",$e" in *,BIN=*) bin=$C/$(echo ",$e" | sed 's/.*,BIN=\([^,]*\).*/\1/') ;; esac
        echo -n "$m t=$t rp=$rp $e: "
        env ${e//,/ } SMELT_NUM_PARALLEL=4 timeout 120 python3 $C/evalrate.py $bin /tmp/$m.gguf ${SERVE1_N:-5} $t 256 $rp 2>&1 | tail -1
      done; done
      timeout 60 $C/smelt bench /tmp/$m.gguf -p 128 -n 256 -r 3 --temperature $t --json > /tmp/b.json 2> /tmp/b.err
      python3 -c "import json; r=json.load(open('/tmp/b.json')); print('$m smelt bench t=$t decode %.1f tok/s' % r['decode_tps'])" || tail -3 /tmp/b.err
    done
  done
fi
if [ "$MODE" = prefill ]; then
  # Prefill time of prompts of PREFILL_P tokens (`smelt bench -p N`), each setting of
  # PREFILL_ENVS interleaved (cuda.md v28: SMELT_CUDA_PREFILL_GRAPH=0 against the default).
  for m in ${PREFILL_MODELS:-smollm2-135m llama-1b}; do
    case $m in smollm2-135m) s=$m:q8_0 ;; *) s=$m:q4_k_m ;; esac
    f=/tmp/$m.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
    for p in ${PREFILL_P:-64 96 512 1024}; do for e in ${PREFILL_ENVS:-SMELT_CUDA_PREFILL_GRAPH=0 X=1}; do
      env ${e//,/ } timeout 60 $C/smelt bench $f -p $p -n 4 -r 5 --json > /tmp/b.json 2> /tmp/b.err
      python3 -c "import json; r=json.load(open('/tmp/b.json')); print('$m -p $p $e: prefill %.1f tok/s = %.2f ms' % (r['prefill_tps'], $p * 1000 / r['prefill_tps']))" || tail -3 /tmp/b.err
    done; done
  done
fi
if [ "$MODE" = versus ]; then
  # The figures of BENCHMARKS.md's current table in one call: per model, smelt twice (and
  # twice again with VS_ENV, comma-separated assignments, interleaved: a setting against the
  # default) and llama-bench (`-fa on`, after `lcpstash`), from an empty context (with pp512),
  # then after 512 tokens.
  B=/tmp/l/lcp/build/bin/llama-bench
  for s in llama-1b:q4_k_m smollm2-135m:q8_0 llama-8b:q4_k_m; do
    f=/tmp/${s%%:*}.gguf; [ -f $f ] || $C/smelt bench --synthetic $s -o $f --vocab-from $C/vocab.gguf 2>&1 | tail -1
  done
  sb() { env $3 timeout 90 $C/smelt bench /tmp/$1.gguf -p $2 -n 256 -r 5 --json > /tmp/b.json 2> /tmp/b.err
    python3 -c "import json; r=json.load(open('/tmp/b.json')); print('smelt $1 -p $2 $3 prefill %.1f decode %.1f tok/s, %.0f GB/s (%.0f%% of copy, %.0f GB/s), %.1f kernels/token, %.2f subm/token' % (r['prefill_tps'], r['decode_tps'], r['achieved_gbps'], 100 * r['bandwidth_share'], r['membw_gbps'], r['kernels_per_token'], r['submissions_per_token']))" || tail -3 /tmp/b.err; }
  lb() { [ -x $B ] && timeout 150 $B -m /tmp/$1.gguf $2 -r 5 -ngl 99 -fa on -o jsonl 2>> $OUT/lcp.err | tee -a $OUT/lcp.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    r=json.loads(l); s=sorted(r['samples_ts']); print('llama.cpp $1 p', r['n_prompt'], 'n', r['n_gen'], 'd', r.get('n_depth'), '%.1f tok/s (median of %d)' % (s[len(s)//2], len(s)))"; }
  for m in smollm2-135m llama-1b llama-8b; do
    el $m
    for r in 1 2; do sb $m 1 X=1; [ -n "${VS_ENV:-}" ] && sb $m 1 ${VS_ENV//,/ }; done
    lb $m "-p 512 -n 256"
    for r in 1 2; do sb $m 512 X=1; [ -n "${VS_ENV:-}" ] && sb $m 512 ${VS_ENV//,/ }; done
    lb $m "-p 0 -n 256 -d 512"
  done
fi
