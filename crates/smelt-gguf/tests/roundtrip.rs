//! Writer → reader → writer round trips, on a synthetic file and on both real models.

mod common;

use std::io::{self, Write};

use smelt_gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, Value, ValueType};
use smelt_testutil::{model_path, GEMMA3, SMOLLM2};

#[test]
fn every_feature_round_trips() {
    let w = common::every_feature_writer();
    let bytes = w.to_bytes().unwrap();
    let g = Gguf::from_bytes(bytes.clone()).unwrap();

    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.data_offset() % 64, 0);
    assert_eq!(g.metadata(), w.metadata());
    let infos = w.tensor_infos().unwrap();
    assert_eq!(g.tensors(), infos.as_slice());
    for (i, t) in g.tensors().iter().enumerate() {
        assert_eq!(t.offset % 64, 0);
        let expected = common::pseudo_random_bytes(t.n_bytes as usize, i as u64 + 1);
        assert_eq!(g.tensor_data(t), expected.as_slice(), "{}", t.name);
    }
    // Empty arrays keep their element type.
    assert_eq!(
        g.get_array("e.bool").unwrap().unwrap().elem_type(),
        ValueType::Bool
    );
    assert_eq!(
        g.get_array("e.arr").unwrap().unwrap().elem_type(),
        ValueType::Array
    );
    // Non-UTF-8 strings survive as bytes and are refused as text.
    assert_eq!(
        g.get_string("t.str_not_utf8").unwrap().unwrap().as_bytes(),
        [0xff, 0xfe, b'a', 0xc3]
    );
    assert!(matches!(
        g.get_str("t.str_not_utf8"),
        Err(GgufError::StringNotUtf8 { index: None, .. })
    ));
    assert!(matches!(
        g.get_str_array("a.str_bytes"),
        Err(GgufError::StringNotUtf8 { index: Some(0), .. })
    ));
    assert_eq!(g.get_str("t.str").unwrap(), Some("héllo, 世界"));
    // The file ends with the last tensor's padding, as llama.cpp and gguf-py write it.
    let last = g.tensors().last().unwrap();
    assert_eq!(
        g.file_size(),
        g.data_offset() + (last.offset + last.n_bytes).next_multiple_of(64)
    );

    // Reading and writing again gives the same bytes.
    let again = GgufWriter::from_gguf(&g).unwrap().to_bytes().unwrap();
    assert!(again == bytes, "second write differs");
}

#[test]
fn version_2_reads_and_is_rewritten_as_3() {
    let mut bytes = common::every_feature_writer().to_bytes().unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let g = Gguf::from_bytes(bytes.clone()).unwrap();
    assert_eq!(g.version(), 2);
    let rewritten = GgufWriter::from_gguf(&g).unwrap().to_bytes().unwrap();
    assert_eq!(rewritten[4..8], 3u32.to_le_bytes());
    assert_eq!(rewritten[8..], bytes[8..]);
}

#[test]
fn write_file_and_open() {
    let w = common::every_feature_writer();
    let dir = std::env::temp_dir().join(format!("smelt-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("every_feature.gguf");
    let n = w.write_file(&path).unwrap();
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.file_size(), n);
    assert_eq!(g.metadata(), w.metadata());
    assert_eq!(g.bytes(), w.to_bytes().unwrap().as_slice());
    drop(g);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_tensors_and_no_metadata() {
    let bytes = GgufWriter::new().to_bytes().unwrap();
    // Magic, version, two counts, padded to 32.
    assert_eq!(bytes.len(), 32);
    let g = Gguf::from_bytes(bytes).unwrap();
    assert!(g.metadata().is_empty() && g.tensors().is_empty());
    assert_eq!(g.architecture(), None);
}

/// A sink that checks what is written against expected bytes instead of storing it.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.pos + buf.len();
        if end > self.expected.len() || self.expected[self.pos..end] != *buf {
            let first_diff = (self.pos..end.min(self.expected.len()))
                .find(|&i| self.expected[i] != buf[i - self.pos])
                .unwrap_or(self.expected.len());
            return Err(io::Error::other(format!(
                "output differs from the original at byte {first_diff}"
            )));
        }
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Both real models were written canonically by llama.cpp's tools, so re-writing them through
/// the writer must reproduce them byte for byte.
#[test]
fn real_models_rewrite_byte_identical() {
    for name in [SMOLLM2, GEMMA3] {
        let g = Gguf::open(model_path(name)).unwrap();
        let mut cmp = Compare {
            expected: g.bytes(),
            pos: 0,
        };
        let n = GgufWriter::from_gguf(&g)
            .unwrap()
            .write_to(&mut cmp)
            .unwrap();
        assert_eq!(n, g.file_size(), "{name}");
        assert_eq!(cmp.pos as u64, g.file_size(), "{name}");
    }
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", 1u32).unwrap();
    assert!(matches!(
        w.add_metadata("k", 2u32),
        Err(GgufError::DuplicateKey { .. })
    ));
    assert!(matches!(
        w.add_metadata("", 2u32),
        Err(GgufError::EmptyKey { .. })
    ));
    assert!(matches!(
        w.set_alignment(0),
        Err(GgufError::BadAlignment { .. })
    ));
    assert!(matches!(
        w.set_alignment(48),
        Err(GgufError::BadAlignment { .. })
    ));
    assert!(matches!(
        w.add_metadata("general.alignment", 32i32),
        Err(GgufError::BadAlignment { .. })
    ));
    let mut deep = Array::U8(vec![1]);
    for _ in 0..smelt_gguf::MAX_ARRAY_DEPTH {
        deep = Array::Array(vec![deep]);
    }
    assert!(matches!(
        w.add_metadata("deep", deep),
        Err(GgufError::NestingTooDeep { .. })
    ));
    // set_metadata replaces in place.
    w.set_metadata("k", "text").unwrap();
    assert_eq!(w.metadata(), &[("k".to_string(), Value::from("text"))]);

    w.add_tensor("a", &[32], GgmlType::F32, vec![0u8; 128])
        .unwrap();
    let e = w
        .add_tensor("a", &[32], GgmlType::F32, vec![0u8; 128])
        .unwrap_err();
    assert!(matches!(e, GgufError::DuplicateTensor { .. }), "{e}");
    let e = w
        .add_tensor("b", &[32], GgmlType::F32, vec![0u8; 127])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor 'b': 127 data bytes given, F32 of shape [32] needs 128"
    );
    let e = w
        .add_tensor("c", &[33], GgmlType::Q4_0, vec![])
        .unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::RowNotBlockMultiple {
                ne0: 33,
                block: 32,
                ..
            }
        ),
        "{e}"
    );
    let e = w
        .add_tensor("d", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0u8; 4])
        .unwrap_err();
    assert!(matches!(e, GgufError::BadDimCount { n_dims: 5, .. }), "{e}");
    let e = w.add_tensor("e", &[], GgmlType::F32, vec![]).unwrap_err();
    assert!(matches!(e, GgufError::BadDimCount { n_dims: 0, .. }), "{e}");
    let e = w
        .add_tensor("x".repeat(64), &[1], GgmlType::F32, vec![0u8; 4])
        .unwrap_err();
    assert!(
        matches!(e, GgufError::TensorNameTooLong { len: 64, .. }),
        "{e}"
    );
    let e = w
        .add_tensor("f", &[1 << 32, 1 << 32], GgmlType::F32, vec![])
        .unwrap_err();
    assert!(matches!(e, GgufError::SizeOverflow { .. }), "{e}");
}

#[test]
fn typed_getters() {
    let mut w = GgufWriter::new();
    w.add_metadata("u8", 7u8).unwrap();
    w.add_metadata("neg", -1i64).unwrap();
    w.add_metadata("big", u64::MAX).unwrap();
    w.add_metadata("f64", 0.5f64).unwrap();
    w.add_metadata("s", "x").unwrap();
    w.add_metadata("ints", vec![1u8, 2, 3]).unwrap();
    w.add_metadata("negs", vec![-1i64, 2]).unwrap();
    w.add_metadata("f64s", vec![0.5f64, 1.5]).unwrap();
    let g = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();

    assert_eq!(g.get_u32("u8").unwrap(), Some(7));
    assert_eq!(g.get_i64("neg").unwrap(), Some(-1));
    assert_eq!(g.get_u64("big").unwrap(), Some(u64::MAX));
    assert_eq!(g.get_u32("missing").unwrap(), None);
    let e = g.get_u32("neg").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key 'neg': value -1 does not fit in u32"
    );
    assert!(matches!(
        g.get_i64("big"),
        Err(GgufError::OutOfRange { .. })
    ));
    let e = g.get_u32("s").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key 's': expected an integer, found str"
    );
    assert_eq!(g.get_f32("f64").unwrap(), Some(0.5));
    assert!(matches!(g.get_f32("u8"), Err(GgufError::WrongType { .. })));
    assert!(matches!(g.get_bool("u8"), Err(GgufError::WrongType { .. })));
    assert!(matches!(g.get_str("u8"), Err(GgufError::WrongType { .. })));
    assert!(matches!(
        g.get_array("u8"),
        Err(GgufError::WrongType { .. })
    ));

    assert_eq!(
        g.get_u32_array("ints").unwrap().unwrap().as_ref(),
        [1, 2, 3]
    );
    assert_eq!(g.get_i32_array("negs").unwrap().unwrap().as_ref(), [-1, 2]);
    assert!(matches!(
        g.get_u32_array("negs"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert_eq!(
        g.get_f32_array("f64s").unwrap().unwrap().as_ref(),
        [0.5, 1.5]
    );
    let e = g.get_str_array("ints").unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata key 'ints': expected an array of str, found an array of u8"
    );
    assert!(matches!(
        g.get_f32_array("ints"),
        Err(GgufError::WrongElementType { .. })
    ));
}
