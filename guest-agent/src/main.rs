use anyhow::bail;

fn main() -> anyhow::Result<()> {
    bail!(
        "hull-agent: protocol version {} is not served yet (work in progress: the hull-agent issue)",
        hull_agent_protocol::PROTOCOL_VERSION
    )
}
