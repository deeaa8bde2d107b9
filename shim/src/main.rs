use anyhow::bail;

fn main() -> anyhow::Result<()> {
    bail!("containerd-shim-hull-v2: the containerd shim is not implemented yet (hull is in early development)")
}
