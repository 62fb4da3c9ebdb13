#!/usr/bin/env bash
# Build tools/kernel-lab/ggml_bench.c against the libggml*.so of llama-cpp-python (the oracle venv)
# and the matching ggml headers; the binary and the libraries land in $1 (default
# target/ggml-bench), the binary finding the libraries beside it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/ggml-bench}"
venv="${ORACLE_VENV:-/work/oracle-venv}"
lib="$(echo "$venv"/lib/python3*/site-packages/llama_cpp/lib)"
inc="${GGML_INCLUDE:-$(echo /work/lcp-src/llama_cpp_python-*/vendor/llama.cpp/ggml/include)}"
mkdir -p "$out"
cp -L "$lib"/libggml.so.0 "$lib"/libggml-base.so.0 "$lib"/libggml-cpu.so.0 "$out"/
ln -sf libggml.so.0 "$out"/libggml.so
ln -sf libggml-base.so.0 "$out"/libggml-base.so
ln -sf libggml-cpu.so.0 "$out"/libggml-cpu.so
cc -O2 -o "$out"/ggml_bench "$here"/ggml_bench.c -I"$inc" -L"$out" -lggml -lggml-base -lggml-cpu \
    -Wl,-rpath,'$ORIGIN'
echo "$out/ggml_bench"
