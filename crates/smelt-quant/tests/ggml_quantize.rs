//! The reference quantisers produce exactly the bytes of ggml's `quantize_row_*_ref` (fixtures
//! made by tools/oracle/quantize_fixtures.py from ggml-quants.c): the K-quant scale searches,
//! the scale packing and the activation types Q8_1 and Q8_K included.

mod common;

use common::{fixture_json, hex};
use smelt_quant::GgmlType;

#[test]
fn quantize_matches_ggml_reference_bytes() {
    let fx = fixture_json("quant/ggml_quantize.json");
    let types = fx["types"].as_object().expect("types");
    assert_eq!(types.len(), 12);
    for (name, entry) in types {
        let dtype = GgmlType::from_name(name).expect("known type");
        for case in entry["cases"].as_array().expect("cases") {
            let label = format!("{name}/{}", case["name"].as_str().unwrap_or("?"));
            let raw = hex(case["f32_hex"].as_str().expect("f32_hex"));
            let input: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let want = hex(case["bytes_hex"].as_str().expect("bytes_hex"));
            let got = smelt_quant::quantize_to_vec(dtype, &input)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(got.len(), want.len(), "{label}");
            let bs = dtype.type_size();
            for (i, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
                assert_eq!(g, w, "{label}: block {i} differs from ggml");
            }
        }
    }
}
