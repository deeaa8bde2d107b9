//! virtio-mmio transport (work in progress).
