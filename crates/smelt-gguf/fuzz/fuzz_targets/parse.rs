//! Parse arbitrary bytes as GGUF. Whatever parses must be fully usable: every getter answers,
//! every tensor slice has its size, and a rewrite through the writer reads back the same content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_gguf::{Gguf, GgufWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, value) in g.metadata() {
        assert!(g.get(key) == Some(value) || format!("{value:?}").contains("NaN"));
        let _ = (
            g.get_u32(key),
            g.get_i64(key),
            g.get_f32(key),
            g.get_bool(key),
            g.get_str(key),
        );
        let _ = (
            g.get_str_array(key),
            g.get_f32_array(key),
            g.get_i32_array(key),
            g.get_u32_array(key),
        );
    }
    let _ = g.architecture();
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(g.tensor(&t.name).map(|x| &x.name), Some(&t.name));
    }
    // A huge (valid) alignment would make the rewrite pad gigabytes; that is not a bug.
    if g.alignment() > 1 << 16 {
        return;
    }
    let bytes = GgufWriter::from_gguf(&g)
        .expect("a parsed file is valid writer input")
        .to_bytes()
        .expect("in-memory write");
    let again = Gguf::from_bytes(bytes).expect("a written file parses");
    // Debug formatting compares NaN values as equal.
    assert_eq!(
        format!("{:?}", again.metadata()),
        format!("{:?}", g.metadata())
    );
    assert_eq!(again.tensors().len(), g.tensors().len());
    for t in g.tensors() {
        let u = again.tensor(&t.name).expect("tensor kept");
        assert_eq!((&u.dims, u.dtype), (&t.dims, t.dtype));
        assert_eq!(again.tensor_data(u), g.tensor_data(t));
    }
});
