//! Device tests with no VM: virtio-queue's `MockSplitQueue` plays the guest driver, real Unix
//! sockets play the host, and the device runs in a real `event_manager` loop.

use std::path::PathBuf;

use super::*;
use crate::devices::virtio::VirtioDevice;

/// A fresh directory for sockets (short paths: sun_path holds 108 bytes).
pub(super) fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("hv-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn new_binds_and_drop_removes_the_socket() {
    let dir = temp_dir("api");
    let path = dir.join("v.sock");
    let v = Vsock::new(3, path.clone()).unwrap();
    assert!(path.exists());
    assert_eq!(v.device_type(), 19);
    assert_eq!(v.queue_max_sizes().len(), 3);
    assert_ne!(v.avail_features() & (1 << 32), 0);
    let mut cfg = [0u8; 8];
    v.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);
    let mut hi = [0xaau8; 4];
    v.read_config(4, &mut hi);
    assert_eq!(hi, [0, 0, 0, 0]);
    let mut out = [0xaau8; 4];
    v.read_config(6, &mut out);
    assert_eq!(
        out, [0xaa; 4],
        "an out-of-range read must leave the buffer alone"
    );
    v.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0xaa; 4]);

    // A second device on the same path fails and names the path; the first keeps its socket.
    let err = Vsock::new(4, path.clone())
        .err()
        .expect("path in use must fail");
    assert!(matches!(err, VsockError::UdsPathExists(_)));
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert!(path.exists());

    drop(v);
    assert!(!path.exists(), "the socket must be removed on drop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn new_rejects_reserved_cids_and_bad_paths() {
    let dir = temp_dir("cid");
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let err = Vsock::new(cid, dir.join("x.sock")).err().unwrap();
        assert!(matches!(err, VsockError::InvalidCid(c) if c == cid));
    }
    assert!(!dir.join("x.sock").exists());
    let err = Vsock::new(3, dir.join("missing-dir/x.sock")).err().unwrap();
    assert!(err.to_string().contains("missing-dir/x.sock"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
