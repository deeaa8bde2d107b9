use anyhow::bail;

fn main() -> anyhow::Result<()> {
    bail!("hull-vmm: booting guests is not implemented yet (work in progress: the hull-vmm issue)")
}
