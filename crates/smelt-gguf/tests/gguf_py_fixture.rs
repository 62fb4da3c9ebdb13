//! A file written by gguf-py (tools/oracle/gguf_py_fixture.py): we read what the reference writer
//! wrote, and our writer reproduces it byte for byte.

use smelt_gguf::{Array, GgmlType, Gguf, GgufWriter, Value};

fn fixture() -> Gguf {
    Gguf::open(smelt_testutil::fixture("gguf/gguf_py_all_types.gguf")).unwrap()
}

#[test]
fn reads_every_value_type() {
    let g = fixture();
    assert_eq!((g.version(), g.alignment(), g.data_offset()), (3, 64, 960));
    assert_eq!(g.architecture(), Some("llama"));
    let expected: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::from("llama")),
        ("general.alignment", Value::U32(64)),
        ("t.u8", Value::U8(255)),
        ("t.i8", Value::I8(-128)),
        ("t.u16", Value::U16(65535)),
        ("t.i16", Value::I16(-32768)),
        ("t.u32", Value::U32(u32::MAX)),
        ("t.i32", Value::I32(i32::MIN)),
        ("t.f32", Value::F32(0.15625)),
        ("t.bool", Value::Bool(true)),
        ("t.str", Value::from("héllo, 世界")),
        ("t.str_not_utf8", Value::String(vec![0xff, 0xfe].into())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-2.5)),
        ("a.i32", Value::from(vec![-7i32, 8, -9])),
        ("a.f32", Value::from(vec![0.5f32, -0.25])),
        ("a.str", Value::from(vec!["a", "", "ccc"])),
        ("a.bool", Value::from(vec![true, false, true])),
        ("a.u64", Value::from(vec![u64::MAX, 0])),
        ("a.u8", Value::from(vec![1u8, 2, 3])),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::I32(vec![3]),
            ])),
        ),
    ];
    let got: Vec<(&str, &Value)> = g.metadata().iter().map(|(k, v)| (k.as_str(), v)).collect();
    let expected: Vec<(&str, &Value)> = expected.iter().map(|(k, v)| (*k, v)).collect();
    assert_eq!(got, expected);

    let shapes: Vec<(&str, &[u64], GgmlType, u64)> = g
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t.dims.as_slice(), t.dtype, t.offset))
        .collect();
    assert_eq!(
        shapes,
        [
            ("t.f32", &[3u64][..], GgmlType::F32, 0),
            ("t.f16", &[5, 2][..], GgmlType::F16, 64),
            ("t.q8_0", &[64, 3][..], GgmlType::Q8_0, 128),
            ("t.i32", &[1, 1, 1, 1][..], GgmlType::I32, 384),
        ]
    );
    let f32s: Vec<f32> = g
        .tensor_data(g.tensor("t.f32").unwrap())
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(f32s, [0.0, 1.0, 2.0]);
    assert_eq!(
        g.tensor_data(g.tensor("t.i32").unwrap()),
        7i32.to_le_bytes()
    );
}

#[test]
fn writer_reproduces_gguf_py_bytes() {
    let g = fixture();
    let ours = GgufWriter::from_gguf(&g).unwrap().to_bytes().unwrap();
    assert!(
        ours == g.bytes(),
        "our writer's bytes differ from gguf-py's"
    );
}
