//! Hostile and broken inputs: every one must give a precise error, never a panic or a huge allocation.

mod common;

use std::sync::Arc;

use common::Prefix;
use smelt_gguf::{Array, Gguf, GgufError, GgufWriter, Value};
use smelt_testutil::{model_path, SMOLLM2};

// ---- a byte-level builder for files the writer refuses to produce -----------------------------

const T_U8: u32 = 0;
const T_I32: u32 = 5;
const T_BOOL: u32 = 7;
const T_STR: u32 = 8;
const T_ARR: u32 = 9;
const T_U32: u32 = 4;
const F32: u32 = 0;
const Q4_0: u32 = 2;

#[derive(Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, x: u32) -> Raw {
        self.bytes(&x.to_le_bytes())
    }
    fn u64(self, x: u64) -> Raw {
        self.bytes(&x.to_le_bytes())
    }
    fn str(self, s: &[u8]) -> Raw {
        self.u64(s.len() as u64).bytes(s)
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key.as_bytes()).u32(T_U32).u32(v)
    }
    fn kv_str(self, key: &str, v: &str) -> Raw {
        self.str(key.as_bytes()).u32(T_STR).str(v.as_bytes())
    }
    fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut r = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(type_id).u64(offset)
    }
    /// Zero padding to 32, then `n` data bytes.
    fn data(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len().next_multiple_of(32) + n, 0x5a);
        self
    }
}

fn parse(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
    Gguf::from_bytes(bytes)
}

/// Parse, expect an error, and return it with its message for the assertions.
fn fail(r: Raw) -> (GgufError, String) {
    let e = parse(r.0).expect_err("malformed input was accepted");
    let msg = e.to_string();
    (e, msg)
}

/// A valid file with one key and one F32 tensor of 4 elements: the base the cases below break.
fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data: usize) -> Raw {
    Raw::header(3, 1, 1)
        .kv_str("general.architecture", "llama")
        .tensor("w", dims, type_id, offset)
        .data(data)
}

#[test]
fn baselines_parse() {
    assert!(parse(one_tensor(&[4], F32, 0, 16).0).is_ok());
    assert!(parse(Raw::header(3, 0, 1).kv_u32("general.alignment", 64).0).is_ok());
}

// ---- header --------------------------------------------------------------------------------

#[test]
fn bad_magic_and_versions() {
    let (e, msg) = fail(Raw(b"GGML".to_vec()).u32(3).u64(0).u64(0));
    assert!(
        matches!(e, GgufError::BadMagic { found } if &found == b"GGML"),
        "{msg}"
    );
    assert!(msg.contains("expected \"GGUF\""), "{msg}");

    for (version, needle) in [
        (0, "does not exist"),
        (1, "v1 is obsolete"),
        (4, "only versions 2 and 3"),
        (3 << 24, "big-endian"),
    ] {
        let (e, msg) = fail(Raw::header(version, 0, 0));
        assert!(
            matches!(e, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{msg}"
        );
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn tiny_files() {
    for len in 0..4 {
        let (e, msg) = fail(Raw(b"GGUF"[..len].to_vec()));
        assert!(matches!(e, GgufError::Truncated { .. }), "{msg}");
        assert!(msg.starts_with("header (magic)"), "{msg}");
    }
    let (_, msg) = fail(Raw(b"GGUF".to_vec()).u32(3).u64(0));
    assert!(
        msg.starts_with("header (metadata key count): needs 8 bytes at offset 16, only 0 remain"),
        "{msg}"
    );
}

#[test]
fn absurd_counts() {
    let (e, msg) = fail(Raw::header(3, 1 << 63, 0));
    assert!(
        matches!(e, GgufError::CountTooLarge { what: "tensor count", count, .. } if count == 1 << 63),
        "{msg}"
    );
    let (e, msg) = fail(Raw::header(3, 0, u64::MAX).kv_u32("a", 1));
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "metadata key count",
                ..
            }
        ),
        "{msg}"
    );
    // Just one more key than the bytes could hold.
    let (e, msg) = fail(Raw::header(3, 0, 2).kv_u32("a", 1));
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{msg}");
}

// ---- metadata ------------------------------------------------------------------------------

#[test]
fn huge_string_lengths() {
    let (e, msg) = fail(Raw::header(3, 0, 1).u64(u64::MAX).bytes(b"general.name"));
    assert!(
        matches!(e, GgufError::StringTooLong { len: u64::MAX, .. }),
        "{msg}"
    );
    assert_eq!(
        msg,
        "metadata key #0: string length 18446744073709551615 exceeds remaining 12 bytes"
    );

    let (e, msg) = fail(
        Raw::header(3, 0, 1)
            .str(b"general.name")
            .u32(T_STR)
            .u64(u64::MAX)
            .bytes(&[b'x'; 120]),
    );
    assert!(matches!(e, GgufError::StringTooLong { .. }), "{msg}");
    assert_eq!(msg, "metadata key #0 'general.name': string length 18446744073709551615 exceeds remaining 120 bytes");
    // Off by one: one byte more than remains.
    let (_, msg) = fail(
        Raw::header(3, 0, 1)
            .str(b"k")
            .u32(T_STR)
            .u64(5)
            .bytes(b"abcd"),
    );
    assert!(
        msg.ends_with("string length 5 exceeds remaining 4 bytes"),
        "{msg}"
    );
}

#[test]
fn huge_array_counts() {
    let arr = |elem: u32, count: u64| {
        Raw::header(3, 0, 1)
            .str(b"a")
            .u32(T_ARR)
            .u32(elem)
            .u64(count)
    };
    // count * 4 overflows u64.
    let (e, msg) = fail(arr(T_U32, u64::MAX).bytes(&[0; 64]));
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                what: "array count",
                count: u64::MAX,
                min_each: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.starts_with(
            "metadata key #0 'a': array count 18446744073709551615 exceeds remaining 64 bytes"
        ),
        "{msg}"
    );
    // 17 u32 in 64 bytes.
    let (e, msg) = fail(arr(T_U32, 17).bytes(&[0; 64]));
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                count: 17,
                remaining: 64,
                ..
            }
        ),
        "{msg}"
    );
    // Strings need at least their 8-byte length each.
    let (e, msg) = fail(arr(T_STR, 9).bytes(&[0; 64]));
    assert!(
        matches!(
            e,
            GgufError::CountTooLarge {
                count: 9,
                min_each: 8,
                ..
            }
        ),
        "{msg}"
    );
    // Arrays of arrays need at least 12 bytes each.
    let (e, msg) = fail(arr(T_ARR, 1 << 40).bytes(&[0; 64]));
    assert!(
        matches!(e, GgufError::CountTooLarge { min_each: 12, .. }),
        "{msg}"
    );
    // A string inside an array with an absurd length names the element.
    let (e, msg) = fail(arr(T_STR, 2).str(b"ok").u64(1 << 60).bytes(&[0; 8]));
    assert!(matches!(e, GgufError::StringTooLong { .. }), "{msg}");
    assert!(
        msg.starts_with("metadata key #0 'a' element 1: string length"),
        "{msg}"
    );
}

#[test]
fn nesting_depth_is_bounded() {
    let nested = |depth: usize| {
        let mut r = Raw::header(3, 0, 1).str(b"deep").u32(T_ARR);
        for _ in 1..depth {
            r = r.u32(T_ARR).u64(1);
        }
        r.u32(T_U8).u64(1).bytes(&[7])
    };
    let ok = parse(nested(smelt_gguf::MAX_ARRAY_DEPTH).0).unwrap();
    assert_eq!(
        ok.get_array("deep").unwrap().unwrap().elem_type(),
        smelt_gguf::ValueType::Array
    );
    let (e, msg) = fail(nested(smelt_gguf::MAX_ARRAY_DEPTH + 1));
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{msg}");
    assert!(msg.contains("element 0 element 0"), "{msg}");
    // Far deeper than any stack would survive if the parser recursed without a bound.
    let (e, _) = fail(nested(200_000));
    assert!(matches!(e, GgufError::NestingTooDeep { .. }));
}

#[test]
fn bad_value_types() {
    let (e, msg) = fail(Raw::header(3, 0, 1).str(b"k").u32(99).u32(0));
    assert!(
        matches!(e, GgufError::UnknownValueType { type_id: 99, .. }),
        "{msg}"
    );
    assert_eq!(
        msg,
        "metadata key #0 'k': unknown metadata value type id 99"
    );
    let (e, msg) = fail(Raw::header(3, 0, 1).str(b"k").u32(T_ARR).u32(13).u64(0));
    assert!(
        matches!(e, GgufError::UnknownValueType { type_id: 13, .. }),
        "{msg}"
    );
    let (e, msg) = fail(Raw::header(3, 0, 1).str(b"k").u32(T_BOOL).bytes(&[2]));
    assert!(matches!(e, GgufError::InvalidBool { byte: 2, .. }), "{msg}");
    let (e, msg) = fail(
        Raw::header(3, 0, 1)
            .str(b"k")
            .u32(T_ARR)
            .u32(T_BOOL)
            .u64(3)
            .bytes(&[1, 255, 0]),
    );
    assert!(
        matches!(e, GgufError::InvalidBool { byte: 255, .. }),
        "{msg}"
    );
    assert!(msg.contains("element 1"), "{msg}");
}

#[test]
fn bad_keys() {
    let (e, msg) = fail(Raw::header(3, 0, 1).str(b"").u32(T_U8).bytes(&[0; 8]));
    assert!(matches!(e, GgufError::EmptyKey { index: 0 }), "{msg}");
    let (e, msg) = fail(
        Raw::header(3, 0, 3)
            .kv_u32("a", 1)
            .kv_u32("b", 1)
            .kv_u32("a", 2),
    );
    assert!(
        matches!(
            e,
            GgufError::DuplicateKey {
                index: 2,
                first: 0,
                ..
            }
        ),
        "{msg}"
    );
    assert_eq!(msg, "metadata key #2 'a': duplicate of key #0");
    let (e, msg) = fail(Raw::header(3, 0, 1).str(b"\xffkey").u32(T_U8).bytes(&[0]));
    assert!(matches!(e, GgufError::NotUtf8 { what: "key", .. }), "{msg}");
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let (e, msg) = fail(Raw::header(3, 0, 1).kv_u32("general.alignment", a));
        assert!(matches!(e, GgufError::BadAlignment { .. }), "{msg}");
        assert!(msg.contains(&format!("{a} is not a power of two")), "{msg}");
    }
    let (e, msg) = fail(
        Raw::header(3, 0, 1)
            .str(b"general.alignment")
            .u32(T_I32)
            .u32(32),
    );
    assert!(matches!(e, GgufError::BadAlignment { .. }), "{msg}");
    assert!(msg.contains("type is i32, must be u32"), "{msg}");
}

// ---- tensor infos ----------------------------------------------------------------------------

#[test]
fn unknown_tensor_types() {
    for id in [4u32, 5, 100, u32::MAX] {
        let (e, msg) = fail(one_tensor(&[4], id, 0, 16));
        assert!(
            matches!(e, GgufError::UnknownTensorType { type_id, .. } if type_id == id),
            "{msg}"
        );
        assert_eq!(msg, format!("tensor 'w': unknown ggml type id {id}"));
    }
}

#[test]
fn bad_shapes() {
    for dims in [&[][..], &[1, 1, 1, 1, 1][..]] {
        let (e, msg) = fail(one_tensor(dims, F32, 0, 16));
        assert!(matches!(e, GgufError::BadDimCount { .. }), "{msg}");
    }
    // n_dims = u32::MAX must not be used to size anything.
    let (e, msg) = fail(
        Raw::header(3, 1, 0)
            .str(b"w")
            .u32(u32::MAX)
            .u64(4)
            .u32(F32)
            .u64(0)
            .data(16),
    );
    assert!(
        matches!(
            e,
            GgufError::BadDimCount {
                n_dims: u32::MAX,
                ..
            }
        ),
        "{msg}"
    );

    let (e, msg) = fail(one_tensor(&[4, 1 << 63], F32, 0, 16));
    assert!(matches!(e, GgufError::DimTooLarge { axis: 1, .. }), "{msg}");
    let (e, msg) = fail(one_tensor(&[1 << 32, 1 << 32], F32, 0, 16));
    assert!(
        matches!(
            e,
            GgufError::SizeOverflow {
                what: "element count",
                ..
            }
        ),
        "{msg}"
    );
    let (e, msg) = fail(one_tensor(&[1 << 32, 1 << 31], F32, 0, 16));
    assert!(
        matches!(
            e,
            GgufError::SizeOverflow {
                what: "element count",
                ..
            }
        ),
        "{msg}"
    );
    let (e, msg) = fail(one_tensor(&[1 << 62], F32, 0, 16));
    assert!(
        matches!(
            e,
            GgufError::SizeOverflow {
                what: "byte size",
                ..
            }
        ),
        "{msg}"
    );
    let (e, msg) = fail(one_tensor(&[33, 2], Q4_0, 0, 64));
    assert!(
        matches!(
            e,
            GgufError::RowNotBlockMultiple {
                ne0: 33,
                block: 32,
                ..
            }
        ),
        "{msg}"
    );
}

#[test]
fn bad_offsets() {
    let (e, msg) = fail(one_tensor(&[4], F32, 1, 17));
    assert!(
        matches!(
            e,
            GgufError::MisalignedOffset {
                offset: 1,
                alignment: 32,
                ..
            }
        ),
        "{msg}"
    );

    let base_len = one_tensor(&[4], F32, 0, 16).0.len() as u128;
    let (e, msg) = fail(one_tensor(&[4], F32, 1 << 40, 16));
    match e {
        GgufError::DataOutOfBounds {
            start,
            end,
            file_size,
            ..
        } => {
            assert_eq!((end - start, file_size as u128), (16, base_len));
        }
        other => panic!("{other}"),
    }
    assert!(
        msg.starts_with("tensor 'w': data range ")
            && msg.ends_with(&format!("exceeds file size {base_len}")),
        "{msg}"
    );

    // Data one byte short of the end of the file.
    let (e, msg) = fail(one_tensor(&[4], F32, 0, 15));
    assert!(matches!(e, GgufError::DataOutOfBounds { .. }), "{msg}");

    // Start + size overflows u64.
    let (e, msg) = fail(one_tensor(&[4], F32, u64::MAX - 31, 16));
    assert!(
        matches!(e, GgufError::DataOutOfBounds { end, .. } if end > u64::MAX as u128),
        "{msg}"
    );
}

fn two_tensors(second_name: &str, second_offset: u64, data: usize) -> Raw {
    Raw::header(3, 2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor(second_name, &[16], F32, second_offset)
        .data(data)
}

#[test]
fn overlapping_and_duplicate_tensors() {
    assert!(parse(two_tensors("b", 64, 128).0).is_ok());
    for off in [0, 32] {
        let (e, msg) = fail(two_tensors("b", off, 128));
        assert!(matches!(e, GgufError::OverlappingTensors { .. }), "{msg}");
        assert!(msg.contains("'b'") && msg.contains("'a'"), "{msg}");
    }
    let (e, msg) = fail(two_tensors("a", 64, 128));
    assert!(
        matches!(
            e,
            GgufError::DuplicateTensor {
                index: 1,
                first: 0,
                ..
            }
        ),
        "{msg}"
    );
    let long = "x".repeat(64);
    let (e, msg) = fail(Raw::header(3, 1, 0).tensor(&long, &[4], F32, 0).data(16));
    assert!(
        matches!(
            e,
            GgufError::TensorNameTooLong {
                len: 64,
                max: 63,
                ..
            }
        ),
        "{msg}"
    );
    let (e, msg) = fail(
        Raw::header(3, 1, 0)
            .str(b"\xc3(")
            .u32(1)
            .u64(4)
            .u32(F32)
            .u64(0)
            .data(16),
    );
    assert!(
        matches!(
            e,
            GgufError::NotUtf8 {
                what: "tensor name",
                ..
            }
        ),
        "{msg}"
    );
}

// ---- truncation ----------------------------------------------------------------------------

fn is_truncation(e: &GgufError) -> bool {
    matches!(
        e,
        GgufError::Truncated { .. }
            | GgufError::StringTooLong { .. }
            | GgufError::CountTooLarge { .. }
            | GgufError::DataOutOfBounds { .. }
    )
}

/// Cut a small written file at every byte: every cut before the end of the last tensor's data
/// fails with a truncation error; cuts inside the final padding still parse.
#[test]
fn truncated_at_every_byte() {
    let all: Arc<[u8]> = common::every_feature_writer().to_bytes().unwrap().into();
    let full = Gguf::from_bytes(all.clone()).unwrap();
    let needed = full
        .tensors()
        .iter()
        .map(|t| full.data_offset() + t.offset + t.n_bytes)
        .max()
        .unwrap() as usize;
    for len in 0..all.len() {
        match Gguf::from_bytes(Prefix {
            all: all.clone(),
            len,
        }) {
            Err(e) => {
                assert!(len < needed, "cut at {len} of {needed} failed: {e}");
                assert!(is_truncation(&e), "cut at {len}: unexpected error {e}");
            }
            Ok(_) => assert!(len >= needed, "cut at {len} of {needed} parsed"),
        }
    }
}

/// Encoded size of a value without its type id.
fn encoded_len(v: &Value) -> usize {
    fn array_len(a: &Array) -> usize {
        12 + match a {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::U16(v) => 2 * v.len(),
            Array::I16(v) => 2 * v.len(),
            Array::U32(v) => 4 * v.len(),
            Array::I32(v) => 4 * v.len(),
            Array::F32(v) => 4 * v.len(),
            Array::U64(v) => 8 * v.len(),
            Array::I64(v) => 8 * v.len(),
            Array::F64(v) => 8 * v.len(),
            Array::String(v) => 8 * v.len() + v.total_bytes(),
            Array::Array(v) => v.iter().map(array_len).sum(),
        }
    }
    match v {
        Value::U8(_) | Value::I8(_) | Value::Bool(_) => 1,
        Value::U16(_) | Value::I16(_) => 2,
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
        Value::String(s) => 8 + s.len(),
        Value::Array(a) => array_len(a),
    }
}

/// Cut the real SmolLM2 header at (and one byte either side of) the end of every section:
/// magic, version, counts, each key/value pair, tensor infos.
#[test]
fn real_header_truncated_at_section_boundaries() {
    let g = Gguf::open(model_path(SMOLLM2)).unwrap();
    // A little past the header, so cuts one byte beyond the last tensor info are possible.
    let header: Arc<[u8]> = g.bytes()[..g.data_offset() as usize + 64].into();
    let mut boundaries = vec![4, 8, 16, 24];
    let mut pos = 24;
    for (k, v) in g.metadata() {
        pos += 8 + k.len() + 4 + encoded_len(v);
        boundaries.push(pos);
    }
    // Each cut re-parses the whole key/value section (two ~49k-entry arrays), so to keep the test
    // fast only some tensor-info boundaries are cut: the first and last few and every 32nd.
    let n = g.tensors().len();
    for (i, t) in g.tensors().iter().enumerate() {
        pos += 8 + t.name.len() + 4 + 8 * t.dims.len() + 4 + 8;
        if i < 4 || i + 4 >= n || i % 32 == 0 {
            boundaries.push(pos);
        }
    }
    // The computed header end is the real one, up to the alignment padding.
    assert!(pos as u64 <= g.data_offset() && g.data_offset() - (pos as u64) < 32);
    for &b in &boundaries {
        for len in [b - 1, b, b + 1] {
            let e = Gguf::from_bytes(Prefix {
                all: header.clone(),
                len,
            })
            .expect_err("truncated header parsed");
            assert!(is_truncation(&e), "cut at {len}: unexpected error {e}");
        }
    }
}

// ---- a deterministic mutation sweep (the fuzz target explores further) -----------------------

/// Overwrite every header byte of a small file with a few values: whatever the result, parsing
/// returns (never panics), and whatever parses can be written and read back to the same content.
#[test]
fn every_header_byte_mutated() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama").unwrap();
    w.add_metadata("n", 3u32).unwrap();
    w.add_metadata("tok", vec!["a", "bc"]).unwrap();
    w.add_metadata("nested", Array::Array(vec![Array::I8(vec![1])]))
        .unwrap();
    w.add_tensor(
        "x",
        &[32, 2],
        smelt_gguf::GgmlType::Q8_0,
        common::pseudo_random_bytes(68, 3),
    )
    .unwrap();
    w.add_tensor(
        "y",
        &[3],
        smelt_gguf::GgmlType::F32,
        common::pseudo_random_bytes(12, 4),
    )
    .unwrap();
    let base = w.to_bytes().unwrap();
    let header_len = Gguf::from_bytes(base.clone()).unwrap().data_offset() as usize;
    let mut parsed = 0;
    for i in 0..header_len {
        for v in [
            0x00,
            0xff,
            0x80,
            0x01,
            base[i] ^ 0x01,
            base[i].wrapping_add(0x20),
        ] {
            let mut m = base.clone();
            m[i] = v;
            if let Ok(g) = Gguf::from_bytes(m) {
                parsed += 1;
                let again =
                    Gguf::from_bytes(GgufWriter::from_gguf(&g).unwrap().to_bytes().unwrap())
                        .unwrap();
                assert_eq!(again.tensors().len(), g.tensors().len());
                for t in g.tensors() {
                    assert_eq!(
                        again.tensor_data(again.tensor(&t.name).unwrap()),
                        g.tensor_data(t)
                    );
                }
            }
        }
    }
    // Mutations inside string bytes and values keep the file valid; the sweep must see some.
    assert!(parsed > 0);
}

// ---- files on disk -------------------------------------------------------------------------

#[test]
fn open_errors_name_the_path() {
    let missing = std::env::temp_dir().join("smelt-gguf-no-such-file.gguf");
    let e = Gguf::open(&missing).unwrap_err();
    assert!(matches!(e, GgufError::Io { op: "open", .. }), "{e}");
    assert!(
        e.to_string().contains("smelt-gguf-no-such-file.gguf"),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("smelt-gguf-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = Gguf::open(&empty).unwrap_err();
    assert!(
        matches!(e, GgufError::Truncated { .. } | GgufError::Io { .. }),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
