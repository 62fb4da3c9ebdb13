#!/usr/bin/env bash
# The kernel lab run of docs/kernel-lab/cpu-gemv.md: kernel_bench and ggml_bench, copied into one
# folder with the libggml*.so (tools/kernel-lab/build_ggml_bench.sh puts those in place), on a quiet
# machine. Run from that folder: ./run_lab.sh
cd "$(dirname "$0")"
for rep in 1 2; do
for pf in 0 1; do
  echo "== prefetch $pf rep $rep"
  SMELT_PREFETCH=$pf ./kernel_bench --types q4_0,q4_k,q5_k,q6_k,q8_0 --threads 1,16 --mb 2048 --secs 0.4 --isa avx512 --gemv-rows 2,4 --no-gemm | grep gemv
done
for T in q4_0 q4_K q5_K q6_K q8_0; do for th in 1 16; do ./ggml_bench $T 4096 4096 2048 $th 0 1 0.4 2>/dev/null; done; done
done
echo "== all types, defaults"
./kernel_bench --types all --threads 16 --mb 2048 --secs 0.4 --isa avx2,avx512 --tokens 128,512
for T in f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q2_K q3_K q4_K q5_K q6_K; do
  ./ggml_bench $T 4096 4096 2048 16 0 1 0.4 2>/dev/null
  for tok in 128 512; do ./ggml_bench $T 4096 4096 0 16 0 $tok 0.4 2>/dev/null; done
done
for tok in 128 512; do ./ggml_bench q4_0 4096 4096 0 16 1 $tok 0.4 2>/dev/null; ./ggml_bench q4_K 4096 4096 0 16 1 $tok 0.4 2>/dev/null; done
./ggml_bench q4_0 4096 4096 2048 16 1 1 0.4 2>/dev/null; ./ggml_bench q4_K 4096 4096 2048 16 1 1 0.4 2>/dev/null
