use anyhow::bail;

fn main() -> anyhow::Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    if cmd == "--version" || cmd == "-v" {
        println!("hull version {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    bail!("hull: '{cmd}': running containers is not implemented yet (hull is in early development)")
}
