#!/usr/bin/env python3
"""Check GGUF files with llama.cpp's own reader (gguf_init_from_file in libggml-base).

Used to confirm that files written by smelt-gguf's GgufWriter load in llama.cpp. The whole
data blob is read too (no_alloc = false), so tensor packing and the trailing padding are
checked as well. Prints one line per file (OK with counts, or REJECTED; llama.cpp logs the
reason to stderr) and exits 1 if any file is rejected.

    /work/oracle-venv/bin/python tools/oracle/gguf_llamacpp_check.py FILE.gguf...

The library is found inside the installed llama_cpp package, or given with GGML_BASE_LIB.
"""
import ctypes
import os
import sys
from pathlib import Path


def find_lib() -> str:
    if os.environ.get("GGML_BASE_LIB"):
        return os.environ["GGML_BASE_LIB"]
    import llama_cpp  # noqa: PLC0415 (only needed when no path is given)

    for p in Path(llama_cpp.__file__).parent.rglob("libggml-base.*"):
        return str(p)
    sys.exit("libggml-base not found in the llama_cpp package; set GGML_BASE_LIB")


class InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def main() -> int:
    lib = ctypes.CDLL(find_lib())
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, InitParams]
    for name in ("gguf_get_n_kv", "gguf_get_n_tensors"):
        getattr(lib, name).restype = ctypes.c_int64
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    for name in ("gguf_get_alignment", "gguf_get_data_offset"):
        getattr(lib, name).restype = ctypes.c_size_t
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]

    rejected = 0
    for path in sys.argv[1:]:
        ggml_ctx = ctypes.c_void_p()
        ctx = lib.gguf_init_from_file(path.encode(), InitParams(False, ctypes.pointer(ggml_ctx)))
        if not ctx:
            print(f"{path}: REJECTED")
            rejected += 1
            continue
        print(
            f"{path}: OK kv={lib.gguf_get_n_kv(ctx)} tensors={lib.gguf_get_n_tensors(ctx)} "
            f"alignment={lib.gguf_get_alignment(ctx)} data_offset={lib.gguf_get_data_offset(ctx)}"
        )
        lib.gguf_free(ctx)
        if ggml_ctx:
            lib.ggml_free(ggml_ctx)
    return 1 if rejected else 0


if __name__ == "__main__":
    sys.exit(main())
