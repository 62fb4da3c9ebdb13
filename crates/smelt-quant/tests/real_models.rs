//! Every tensor of both real test models, dequantised through smelt-gguf, must hash exactly like
//! gguf-py's `gguf.quants.dequantize` output (fixtures/dequant/<model>.json, made by
//! tools/oracle/dequant_fixtures.py): sha256 over the little-endian f32 bytes.

mod common;

use common::fixture_json;
use sha2::{Digest, Sha256};
use smelt_gguf::Gguf;
use smelt_quant::GgmlType;

/// Values dequantised per step: bounds memory on the 168M-value Gemma embedding.
const CHUNK_VALUES: usize = 1 << 18;

fn check_model(file: &str) {
    let path = smelt_testutil::model_path(file);
    let gguf = Gguf::open(&path).expect("open model");
    let stem = file.strip_suffix(".gguf").expect(".gguf");
    let fx = fixture_json(&format!("dequant/{stem}.json"));
    assert_eq!(
        fx["model_bytes"].as_u64(),
        Some(gguf.file_size()),
        "{file}: not the model the fixture was made from"
    );
    let want = fx["tensors"].as_array().expect("tensors");
    assert_eq!(gguf.tensors().len(), want.len(), "{file}: tensor count");

    let mut values = vec![0f32; CHUNK_VALUES];
    let mut bytes = Vec::with_capacity(4 * CHUNK_VALUES);
    for (info, expected) in gguf.tensors().iter().zip(want) {
        let name = &info.name;
        assert_eq!(
            expected["name"].as_str(),
            Some(name.as_str()),
            "{file}: tensor order"
        );
        assert_eq!(
            expected["type"].as_str(),
            Some(info.dtype.name()),
            "{file}: {name} type"
        );
        assert_eq!(
            expected["n_elements"].as_u64(),
            Some(info.n_elements),
            "{file}: {name} size"
        );

        let data = gguf.tensor_data(info);
        let dtype: GgmlType = info.dtype;
        let blocks_per_chunk = CHUNK_VALUES / dtype.block_size();
        let mut hasher = Sha256::new();
        for chunk in data.chunks(blocks_per_chunk * dtype.type_size()) {
            let n = chunk.len() / dtype.type_size() * dtype.block_size();
            let out = &mut values[..n];
            smelt_quant::dequantize(dtype, chunk, out)
                .unwrap_or_else(|e| panic!("{file}: {name}: {e}"));
            bytes.clear();
            for v in out.iter() {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            hasher.update(&bytes);
        }
        let got = format!("{:x}", hasher.finalize());
        assert_eq!(
            Some(got.as_str()),
            expected["sha256"].as_str(),
            "{file}: {name} ({dtype}) differs from gguf-py"
        );
    }
}

#[test]
fn smollm2_every_tensor_matches_gguf_py() {
    check_model(smelt_testutil::SMOLLM2);
}

#[test]
fn gemma3_every_tensor_matches_gguf_py() {
    check_model(smelt_testutil::GEMMA3);
}
