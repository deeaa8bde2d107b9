//! virtio-vsock with a Firecracker-compatible hybrid Unix-socket host side (work in progress).
