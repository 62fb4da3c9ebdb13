//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use smelt_gguf::{Array, GgmlType, GgufString, GgufWriter, StringArray, Value};

/// Deterministic pseudo-random bytes (xorshift), so tensor data is not all zeros.
pub fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A writer exercising every value type, empty arrays of every element type, nested arrays,
/// non-UTF-8 strings, a custom alignment and tensors of several types and ranks.
pub fn every_feature_writer() -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.set_alignment(64).unwrap();
    let scalars: Vec<(&str, Value)> = vec![
        ("t.u8", Value::U8(255)),
        ("t.i8", Value::I8(-128)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(-1.5e-7)),
        ("t.bool_true", Value::Bool(true)),
        ("t.bool_false", Value::Bool(false)),
        ("t.str", Value::from("héllo, 世界")),
        ("t.str_empty", Value::from("")),
        (
            "t.str_not_utf8",
            Value::String(GgufString::from(vec![0xff, 0xfe, b'a', 0xc3])),
        ),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(std::f64::consts::PI)),
    ];
    for (k, v) in scalars {
        w.add_metadata(k, v).unwrap();
    }
    let arrays: Vec<(&str, Array)> = vec![
        ("a.u8", Array::U8(vec![0, 1, 255])),
        ("a.i8", Array::I8(vec![-1, 0, 127])),
        ("a.u16", Array::U16(vec![1, 65535])),
        ("a.i16", Array::I16(vec![-2, 300])),
        ("a.u32", Array::U32(vec![7, 8, 9])),
        ("a.i32", Array::I32(vec![-7, 8, -9])),
        ("a.f32", Array::F32(vec![0.5, -0.25, 1e30])),
        ("a.bool", Array::Bool(vec![true, false, true])),
        (
            "a.str",
            Array::String(["a", "", "ccc"].into_iter().collect()),
        ),
        (
            "a.str_bytes",
            Array::String(StringArray::from_iter([&b"\xff"[..], b"ok"])),
        ),
        ("a.u64", Array::U64(vec![u64::MAX, 0])),
        ("a.i64", Array::I64(vec![i64::MIN, 5])),
        ("a.f64", Array::F64(vec![1.0, -2.0])),
        (
            "a.nested",
            Array::Array(vec![
                Array::U32(vec![1, 2]),
                Array::String(["x"].into_iter().collect()),
                Array::Array(vec![Array::F32(vec![]), Array::Bool(vec![true])]),
                Array::I8(vec![]),
            ]),
        ),
        ("e.u8", Array::U8(vec![])),
        ("e.i8", Array::I8(vec![])),
        ("e.u16", Array::U16(vec![])),
        ("e.i16", Array::I16(vec![])),
        ("e.u32", Array::U32(vec![])),
        ("e.i32", Array::I32(vec![])),
        ("e.f32", Array::F32(vec![])),
        ("e.bool", Array::Bool(vec![])),
        ("e.str", Array::String(StringArray::new())),
        ("e.arr", Array::Array(vec![])),
        ("e.u64", Array::U64(vec![])),
        ("e.i64", Array::I64(vec![])),
        ("e.f64", Array::F64(vec![])),
    ];
    for (k, a) in arrays {
        w.add_metadata(k, a).unwrap();
    }
    let tensors: Vec<(&str, Vec<u64>, GgmlType)> = vec![
        ("t.f32", vec![3], GgmlType::F32),
        ("t.f16", vec![5, 2], GgmlType::F16),
        ("t.q8_0", vec![64, 3], GgmlType::Q8_0),
        ("t.empty", vec![32, 0], GgmlType::Q4_0),
        ("t.q4_k", vec![256, 1, 1, 2], GgmlType::Q4_K),
        ("t.i32", vec![1], GgmlType::I32),
        ("t.bf16", vec![2, 3, 4], GgmlType::BF16),
    ];
    for (i, (name, dims, dtype)) in tensors.into_iter().enumerate() {
        let n = dtype.bytes_for(dims.iter().product()).unwrap() as usize;
        w.add_tensor(name, &dims, dtype, pseudo_random_bytes(n, i as u64 + 1))
            .unwrap();
    }
    w
}

/// A view of the first `len` bytes of a shared buffer, to parse prefixes without copying.
pub struct Prefix {
    pub all: Arc<[u8]>,
    pub len: usize,
}

impl AsRef<[u8]> for Prefix {
    fn as_ref(&self) -> &[u8] {
        &self.all[..self.len]
    }
}
