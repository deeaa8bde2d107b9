//! virtio-fs on a writable share: see `common/fs.rs`.

#![no_main]

#[path = "common/fs.rs"]
mod fs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fs::run(data, false));
