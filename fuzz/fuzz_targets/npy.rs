//! Fuzz target `npy`: see seli_io::harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seli_io::harness::run("npy", data);
});
