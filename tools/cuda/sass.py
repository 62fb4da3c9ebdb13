#!/usr/bin/env python3
"""Compile a generated CUDA source to a cubin with NVRTC (sm_90) and print each kernel's
registers, spills and shared memory; with --sass also write the disassembly. No GPU needed:
NVRTC (the nvidia-cuda-nvrtc wheel) and cuobjdump (nvidia-cuda-cuobjdump) only.

usage: sass.py SRC.cu [--sass OUT.sass]   (NVRTC_LIB, CUOBJDUMP env vars locate the tools)"""
import ctypes, os, subprocess, sys, tempfile

lib = ctypes.CDLL(os.environ.get("NVRTC_LIB", "libnvrtc.so.13"))
src = open(sys.argv[1], "rb").read()
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"k.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=sm_90", b"-std=c++17", b"-Xptxas=-v"]
arr = (ctypes.c_char_p * len(opts))(*opts)
rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
if rc != 0:
    print(log.value.decode()); sys.exit(1)
lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
cubin = ctypes.create_string_buffer(n.value)
lib.nvrtcGetCUBIN(prog, cubin)
path = os.environ.get("CUBIN_OUT") or tempfile.mktemp(suffix=".cubin")
open(path, "wb").write(cubin.raw)
# ptxas -v lines: registers, spill stores/loads, stack frame per function.
for line in log.value.decode().splitlines():
    if any(k in line for k in ("Compiling entry", "registers", "spill", "stack frame")):
        print(line.strip())
dump = os.environ.get("CUOBJDUMP", "cuobjdump")
if "--sass" in sys.argv:
    out = sys.argv[sys.argv.index("--sass") + 1]
    open(out, "w").write(subprocess.run([dump, "-sass", path], capture_output=True, text=True).stdout)
