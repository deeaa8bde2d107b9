//! virtio-fs backed by fuse-backend-rs passthrough (work in progress).
