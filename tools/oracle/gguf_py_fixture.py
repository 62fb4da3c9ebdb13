#!/usr/bin/env python3
"""Write fixtures/gguf/gguf_py_all_types.gguf with gguf-py, the reference Python GGUF writer.

The file holds every metadata value type (including a non-UTF-8 string, typed arrays and an
array of arrays), a custom alignment, and tensors of several types and ranks. smelt-gguf's
tests read it back and check that GgufWriter reproduces it byte for byte, which ties our
writer to the reference layout.

Needs the `gguf` package (tested with gguf 0.19.0) and numpy:
    python3 -m venv /tmp/ggufpy && /tmp/ggufpy/bin/pip install gguf==0.19.0
    /tmp/ggufpy/bin/python tools/oracle/gguf_py_fixture.py
"""
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as T

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "gguf" / "gguf_py_all_types.gguf"


def pseudo_random(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(OUT), arch="llama")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -(2**31))
    w.add_float32("t.f32", 0.15625)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo, 世界")
    w.add_key_value("t.str_not_utf8", b"\xff\xfe", T.STRING)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", -2.5)
    w.add_array("a.i32", [-7, 8, -9])
    w.add_array("a.f32", [0.5, -0.25])
    w.add_array("a.str", ["a", "", "ccc"])
    w.add_array("a.bool", [True, False, True])
    w.add_key_value("a.u64", [2**64 - 1, 0], T.ARRAY, sub_type=T.UINT64)
    w.add_key_value("a.u8", [1, 2, 3], T.ARRAY, sub_type=T.UINT8)
    w.add_array("a.nested", [[1, 2], [3]])

    w.add_tensor("t.f32", np.arange(3, dtype=np.float32))
    w.add_tensor("t.f16", np.arange(10, dtype=np.float16).reshape(2, 5))
    # Q8_0: 3 rows of 64 elements = 3 x 2 blocks of 34 bytes.
    w.add_tensor("t.q8_0", pseudo_random(3 * 68, 1).reshape(3, 68), raw_dtype=Q.Q8_0)
    w.add_tensor("t.i32", np.array([[[[7]]]], dtype=np.int32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(OUT, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
