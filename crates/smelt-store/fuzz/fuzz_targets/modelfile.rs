//! Modelfiles: parsing arbitrary text returns an error or a Modelfile, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(mf) = smelt_store::Modelfile::parse(s, "fuzz") {
            let _ = mf.to_spec();
        }
    }
});
