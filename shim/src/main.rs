//! containerd-shim-hull-v2: containerd's runtime `io.containerd.hull.v2`.
//!
//! **Owns**: containerd's shim v2 task service (ttrpc), one shim and one sandbox VM per pod.
//! **Must not**: start or drive VMs itself: it is a thin task service over `hull-runtime`.
//! (Not implemented yet: it exits with an error.)

use anyhow::bail;

fn main() -> anyhow::Result<()> {
    bail!("containerd-shim-hull-v2: the containerd shim is not implemented yet (hull is in early development)")
}
