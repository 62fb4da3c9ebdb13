//! Model names: parsing never panics, parsed parts are safe path components, and display
//! (short and full) parses back to the same name.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Err(e) = smelt_store::check_round_trip(s) {
            panic!("{e}");
        }
    }
});
