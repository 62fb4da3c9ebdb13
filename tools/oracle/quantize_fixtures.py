#!/usr/bin/env python3
"""Bit-exact quantiser fixtures for smelt-quant, made with ggml's own reference quantisers.

Writes fixtures/quant/ggml_quantize.json: for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K and Q8_K, seeded f32 inputs (little-endian bytes as hex) and the bytes ggml's
`quantize_row_<type>_ref` writes for them (what llama-quantize uses without an importance
matrix, and what ggml uses for activations).

ggml comes from one of:
  --ggml-lib PATH      a shared library exporting quantize_row_*_ref, e.g. libggml-base.so of the
                       llama-cpp-python build in the oracle venv;
  --llama-cpp DIR      a llama.cpp source tree (e.g. vendor/llama.cpp of the llama-cpp-python
                       sdist): its ggml-quants.c is compiled here with `cc -O2 -std=c11`.
Both must be built without floating-point contraction (no FMA fusing of a*b+c), as ggml-base is
on x86-64: the reference quantisers are specified by their plain f32 operation order.

  python tools/oracle/quantize_fixtures.py --llama-cpp /path/to/llama.cpp
"""
import argparse
import ctypes
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEED = 20240612
# name -> (block size, type size)
TYPES = {
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q8_0": (32, 34), "Q8_1": (32, 36),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144),
    "Q5_K": (256, 176), "Q6_K": (256, 210), "Q8_K": (256, 292),
}
# ggml-quants.c calls these for errors and sizes; the reference row quantisers never reach them.
STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
void ggml_abort(const char *file, int line, const char *fmt, ...) { fprintf(stderr, "%s:%d\n", file, line); abort(); }
void ggml_log_internal(int level, const char *fmt, ...) { (void) level; (void) fmt; }
const char *ggml_type_name(int t) { (void) t; return "?"; }
size_t ggml_type_size(int t) { (void) t; abort(); }
size_t ggml_row_size(int t, long n) { (void) t; (void) n; abort(); }
"""


def build_lib(src: Path, out_dir: Path) -> Path:
    ggml = src / "ggml"
    stubs = out_dir / "stubs.c"
    stubs.write_text(STUBS)
    lib = out_dir / "libggml_quants.so"
    cmd = ["cc", "-O2", "-std=c11", "-ffp-contract=off", "-fPIC", "-shared",
           f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cpu'}",
           "-o", str(lib), str(ggml / "src" / "ggml-quants.c"), str(stubs), "-lm"]
    subprocess.run(cmd, check=True)
    return lib


def inputs(rng: np.random.Generator, block: int) -> list:
    """Named f32 rows: typical weights, skewed and heavy-tailed data, and degenerate blocks."""
    k = 1 if block == 256 else 8
    zero_then_spike = np.zeros(2 * block)
    zero_then_spike[block + 3] = 1.0
    rows = [
        ("normal", rng.standard_normal(k * block)),
        ("small-offset", rng.standard_normal(block) * 0.02 + 0.01),
        ("skewed", rng.uniform(-1.0, 3.0, block)),
        ("heavy-tailed", rng.standard_t(2, block) * 0.05),
        ("zero-then-spike", zero_then_spike),
    ]
    return [(name, np.ascontiguousarray(x, dtype="<f4")) for name, x in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ggml-lib", type=Path, help="shared library exporting quantize_row_*_ref")
    src.add_argument("--llama-cpp", type=Path, help="llama.cpp source tree to compile ggml-quants.c from")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        lib_path = args.ggml_lib or build_lib(args.llama_cpp, Path(tmp))
        lib = ctypes.CDLL(str(lib_path))
        rng = np.random.default_rng(SEED)
        types = {}
        for name, (block, type_size) in TYPES.items():
            fn = getattr(lib, f"quantize_row_{name[:-1].lower() + 'K' if name.endswith('K') else name.lower()}_ref")
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            fn.restype = None
            cases = []
            for case, x in inputs(rng, block):
                dst = (ctypes.c_uint8 * (x.size // block * type_size))()
                fn(x.ctypes.data, ctypes.addressof(dst), x.size)
                cases.append({"name": case, "f32_hex": x.tobytes().hex(), "bytes_hex": bytes(dst).hex()})
            types[name] = {"cases": cases}

    out = REPO / "fixtures/quant/ggml_quantize.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fixture = {"generator": "tools/oracle/quantize_fixtures.py", "ggml": str(args.ggml_lib or "ggml-quants.c, cc -O2 -std=c11"),
               "seed": SEED, "types": types}
    out.write_text(json.dumps(fixture, separators=(",", ":")) + "\n")
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
