//! Manifests from a registry or a disk: parsing hostile bytes returns an error, never panics,
//! and a parsed manifest serializes to bytes that parse back to it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = smelt_store::Manifest::parse(data, "fuzz") {
        let again = smelt_store::Manifest::parse(&m.to_bytes(), "fuzz again").expect("re-parse");
        assert_eq!(again, m);
    }
});
