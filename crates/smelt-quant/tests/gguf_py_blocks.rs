//! Bit-exactness against the `gguf` Python package on seeded random and edge-case blocks
//! (fixtures made by tools/oracle/dequant_fixtures.py): every dequantised value must have the
//! same f32 bit pattern, and the quantisers gguf-py has must produce the same bytes.

mod common;

use common::{f32_bits, fixture_json, hex};
use smelt_quant::GgmlType;

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let fx = fixture_json("dequant/random_blocks.json");
    let types = fx["types"].as_object().expect("types");
    assert_eq!(
        types.len(),
        13,
        "fixture covers the 13 types gguf-py dequantises"
    );
    for (name, entry) in types {
        let dtype = GgmlType::from_name(name).expect("known type");
        assert!(smelt_quant::is_supported(dtype), "{name}");
        assert_eq!(
            entry["block_size"].as_u64(),
            Some(dtype.block_size() as u64),
            "{name}"
        );
        assert_eq!(
            entry["type_size"].as_u64(),
            Some(dtype.type_size() as u64),
            "{name}"
        );
        for case in entry["cases"].as_array().expect("cases") {
            let label = format!("{name}/{}", case["name"].as_str().unwrap_or("?"));
            let bytes = hex(case["bytes_hex"].as_str().expect("bytes_hex"));
            let want = f32_bits(&case["f32_bits"]);
            let mut got = vec![0f32; want.len()];
            smelt_quant::dequantize(dtype, &bytes, &mut got)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    *w,
                    "{label}: value {i} is {g} ({:#010x}), gguf-py gives {} ({w:#010x})",
                    g.to_bits(),
                    f32::from_bits(*w)
                );
            }
            // Blocks need no alignment: the same bytes one byte further on give the same values.
            let mut shifted = vec![0u8; bytes.len() + 1];
            shifted[1..].copy_from_slice(&bytes);
            let mut again = vec![0f32; want.len()];
            smelt_quant::dequantize(dtype, &shifted[1..], &mut again).expect("unaligned");
            assert!(
                again
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{label} unaligned"
            );
        }
    }
}

#[test]
fn quantize_matches_gguf_py_bytes() {
    let fx = fixture_json("quant/quantize_blocks.json");
    let types = fx["types"].as_object().expect("types");
    assert_eq!(types.len(), 7);
    for (name, entry) in types {
        let dtype = GgmlType::from_name(name).expect("known type");
        for case in entry["cases"].as_array().expect("cases") {
            let label = format!("{name}/{}", case["name"].as_str().unwrap_or("?"));
            let input: Vec<f32> = f32_bits(&case["f32_bits"])
                .into_iter()
                .map(f32::from_bits)
                .collect();
            let want = hex(case["bytes_hex"].as_str().expect("bytes_hex"));
            let got = smelt_quant::quantize_to_vec(dtype, &input)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(got.len(), want.len(), "{label}");
            let bs = dtype.type_size();
            for (i, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
                assert_eq!(g, w, "{label}: block {i} differs from gguf-py");
            }
        }
    }
}
