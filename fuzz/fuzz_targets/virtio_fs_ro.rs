//! virtio-fs on a read-only share: the guard (`vmm/src/devices/virtio/fs/guard.rs`) must refuse
//! every change, so the whole host directory, share included, stays exactly as it was. See
//! `common/fs.rs`.

#![no_main]

#[path = "common/fs.rs"]
mod fs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fs::run(data, true));
