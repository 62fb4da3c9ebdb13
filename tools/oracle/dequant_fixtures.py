#!/usr/bin/env python3
"""Bit-exact dequantisation fixtures for smelt-quant, made with the `gguf` Python package.

Writes, relative to the repository root:
  fixtures/dequant/<model-stem>.json   for each real test model: per tensor its type, element
                                       count and the sha256 of gguf.quants.dequantize's output as
                                       little-endian f32 bytes.
  fixtures/dequant/random_blocks.json  for 13 types: seeded random blocks and edge blocks (raw
                                       bytes as hex) with the expected f32 output as u32 bit
                                       patterns, so the Rust comparison is literal.
  fixtures/quant/quantize_blocks.json  for the types gguf-py can quantise (Q4_0, Q4_1, Q5_0,
                                       Q5_1, Q8_0, F16, BF16): f32 inputs (u32 bits) and the exact
                                       bytes gguf.quants.quantize produces.

Run with a Python that has `gguf` and `numpy` (e.g. a venv outside the repository):
  python tools/oracle/dequant_fixtures.py [--models DIR]
Models default to $SMELT_TEST_MODELS or ~/.cache/smelt/test-models (scripts/fetch_models.py).
"""
import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

REPO = Path(__file__).resolve().parents[2]
SEED = 20240611
# Rows per dequantisation call: bounds memory on the 168M-element Gemma embedding.
ROWS_PER_CHUNK = 4096

# Offsets of the f16 scale fields in each block type (bytes), from ggml-common.h. Random bytes
# there could be NaN or infinity; the generator writes sane finite f16 values instead.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
BLOCK_TYPES = list(F16_FIELDS)
PLAIN_TYPES = [T.F32, T.F16, T.BF16]


def model_fixture(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    tensors = []
    for t in reader.tensors:
        qtype = T(t.tensor_type)
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        ne0 = int(t.shape[0])
        row_bytes = ne0 // block_size * type_size
        raw = np.asarray(t.data).view(np.uint8).reshape(-1, row_bytes)
        h = hashlib.sha256()
        for start in range(0, raw.shape[0], ROWS_PER_CHUNK):
            rows = dequantize(raw[start:start + ROWS_PER_CHUNK], qtype)
            h.update(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        tensors.append({
            "name": t.name,
            "type": qtype.name,
            "shape": [int(d) for d in t.shape],
            "n_elements": int(t.n_elements),
            "sha256": h.hexdigest(),
        })
    return {
        "generator": "tools/oracle/dequant_fixtures.py",
        "gguf_version": gguf_version(),
        "numpy_version": np.__version__,
        "model": path.name,
        "model_bytes": path.stat().st_size,
        "tensors": tensors,
    }


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 bit patterns with magnitudes from the subnormals up to 2^8, either sign."""
    sign = rng.integers(0, 2, n, dtype=np.uint16) << 15
    exponent = rng.integers(0, 15 + 9, n, dtype=np.uint16) << 10
    mantissa = rng.integers(0, 1 << 10, n, dtype=np.uint16)
    return sign | exponent | mantissa


def set_f16(blocks: np.ndarray, qtype: T, values: np.ndarray) -> None:
    """Write f16 bit patterns into every scale field; `values` has one row per block."""
    for i, off in enumerate(F16_FIELDS[qtype]):
        blocks[:, off:off + 2] = values[:, i:i + 1].astype("<u2").view(np.uint8).reshape(-1, 2)


def block_cases(rng: np.random.Generator, qtype: T) -> list:
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_fields = len(F16_FIELDS[qtype])
    n_random = 6 if block_size == 32 else 2

    def random_blocks(n):
        b = rng.integers(0, 256, (n, type_size), dtype=np.uint8)
        set_f16(b, qtype, sane_f16(rng, n * n_fields).reshape(n, n_fields))
        return b

    def scales(*bits):
        # One block's f16 fields: the first `n_fields` of the given patterns (d, then dmin or m).
        return np.array([bits[:n_fields]], dtype=np.uint16)

    def fill_quants(b, byte):
        # Everything except the f16 fields: quant bits and, for K-quants, group scales.
        keep = b.copy()
        b[:] = byte
        for off in F16_FIELDS[qtype]:
            b[:, off:off + 2] = keep[:, off:off + 2]
        return b

    cases = [("random", random_blocks(n_random))]
    cases.append(("zero", np.zeros((1, type_size), dtype=np.uint8)))
    cases.append(("max-quants", fill_quants(random_blocks(1), 0xFF)))
    cases.append(("min-quants", fill_quants(random_blocks(1), 0x00)))
    neg = random_blocks(1)
    set_f16(neg, qtype, scales(0xB8A5, 0xC233))  # -0.58, -3.1
    cases.append(("negative-scales", neg))
    big = fill_quants(random_blocks(1), 0xFF)
    set_f16(big, qtype, scales(0x7BFF, 0xFBFF))  # +65504, -65504
    cases.append(("largest-scales", big))
    tiny = random_blocks(1)
    set_f16(tiny, qtype, scales(0x0001, 0x8003))  # smallest subnormals
    cases.append(("subnormal-scales", tiny))
    if block_size == 32:
        zero_d = random_blocks(2)
        set_f16(zero_d, qtype, scales(0x0000, 0x3C00))
        cases.append(("zero-scale-nonzero-min", zero_d))
    return cases


def plain_cases(rng: np.random.Generator, qtype: T) -> list:
    if qtype == T.F32:
        values = rng.standard_normal(48).astype("<f4")
        edges = np.array([0.0, -0.0, 1e-45, -3e-39, 3.4e38, np.inf, -np.inf, np.nan], dtype="<f4")
        data = np.concatenate([values, edges]).view(np.uint8)
    else:
        bits = rng.integers(0, 1 << 16, 48, dtype=np.uint16)
        if qtype == T.F16:
            # Keep NaNs quiet: how a signalling NaN widens depends on the conversion path.
            is_nan = (bits & 0x7C00 == 0x7C00) & (bits & 0x03FF != 0)
            bits[is_nan] |= 0x0200
            edges = [0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0xFE00]
        else:
            edges = [0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC0, 0x7F81]
        data = np.concatenate([bits, np.array(edges, dtype=np.uint16)]).astype("<u2").view(np.uint8)
    return [("random-and-edges", data.reshape(1, -1))]


def dequant_case(name: str, qtype: T, blocks: np.ndarray) -> dict:
    out = dequantize(blocks, qtype).astype("<f4", copy=False)
    return {
        "name": name,
        "bytes_hex": blocks.tobytes().hex(),
        "f32_bits": [int(b) for b in out.reshape(-1).view("<u4")],
    }


def random_blocks_fixture() -> dict:
    rng = np.random.default_rng(SEED)
    types = {}
    for qtype in PLAIN_TYPES + BLOCK_TYPES:
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        cases = plain_cases(rng, qtype) if qtype in PLAIN_TYPES else block_cases(rng, qtype)
        types[qtype.name] = {
            "block_size": block_size,
            "type_size": type_size,
            "cases": [dequant_case(name, qtype, blocks) for name, blocks in cases],
        }
    return {
        "generator": "tools/oracle/dequant_fixtures.py",
        "gguf_version": gguf_version(),
        "numpy_version": np.__version__,
        "seed": SEED,
        "types": types,
    }


def quantize_fixture() -> dict:
    rng = np.random.default_rng(SEED + 1)
    types = {}
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16]:
        block = 32
        rows = [
            ("normal", rng.standard_normal(4 * block)),
            ("scaled", rng.standard_normal(4 * block) * np.repeat(10.0 ** rng.uniform(-4, 2, 4), block)),
            ("uniform-positive", rng.uniform(0.5, 3.0, 2 * block)),
            ("zero", np.zeros(block)),
            ("constant", np.full(block, -1.25)),
            ("one-outlier", np.where(np.arange(block) == 7, 40.0, rng.standard_normal(block) * 0.01)),
            ("ties", np.tile([-0.5, 0.5, 1.5, -2.5, 0.25, 3.0, -3.0, 8.0], block // 8)),
        ]
        cases = []
        for name, values in rows:
            x = np.asarray(values, dtype="<f4").reshape(-1, block)
            q = quantize(x, qtype)
            cases.append({
                "name": name,
                "f32_bits": [int(b) for b in x.reshape(-1).view("<u4")],
                "bytes_hex": np.ascontiguousarray(q).view(np.uint8).tobytes().hex(),
            })
        types[qtype.name] = {"cases": cases}
    return {
        "generator": "tools/oracle/dequant_fixtures.py",
        "gguf_version": gguf_version(),
        "numpy_version": np.__version__,
        "seed": SEED + 1,
        "types": types,
    }


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def main() -> None:
    default_models = os.environ.get("SMELT_TEST_MODELS", str(Path.home() / ".cache/smelt/test-models"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=default_models, help="directory with the test models")
    args = ap.parse_args()

    write_json(REPO / "fixtures/dequant/random_blocks.json", random_blocks_fixture())
    write_json(REPO / "fixtures/quant/quantize_blocks.json", quantize_fixture())
    models = sorted(Path(args.models).glob("*.gguf"))
    if not models:
        raise SystemExit(f"no .gguf models in {args.models}: run scripts/fetch_models.py")
    for model in models:
        write_json(REPO / "fixtures/dequant" / f"{model.stem}.json", model_fixture(model))


if __name__ == "__main__":
    main()
