//! Fuzz target `npz`: see seli_io::harness.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    seli_io::harness::run("npz", data);
});
