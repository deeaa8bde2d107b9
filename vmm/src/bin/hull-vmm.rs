//! `hull-vmm`: runs one microVM. See `hull-vmm --help`, `hull_vmm::config` for the
//! configuration, `hull_vmm::api` for the control socket and `hull_vmm::exit` for exit statuses.

use std::path::PathBuf;

use clap::Parser;
use hull_vmm::config::{
    BootProtocolConfig, FsConfig, MemoryBacking, NetConfig, SerialConfig, VsockConfig,
};
use hull_vmm::VmConfig;

/// Boot a hull microVM. Flags override the values of --config.
#[derive(Parser, Debug)]
#[command(name = "hull-vmm", version)]
struct Args {
    /// VM configuration as JSON (see hull_vmm::config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Guest kernel (ELF vmlinux or bzImage).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (after the VMM's own parameters).
    #[arg(long)]
    cmdline: Option<String>,
    /// Boot protocol: auto (PVH when the kernel has a PVH note) or linux (64-bit Linux boot).
    #[arg(long)]
    boot_protocol: Option<BootProtocolConfig>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Guest memory backing: anonymous or memfd.
    #[arg(long)]
    memory_backing: Option<MemoryBacking>,
    /// Guest console: stdout, off, or a file path.
    #[arg(long)]
    serial: Option<SerialConfig>,
    /// Most bytes a --serial file keeps (default 4 MiB); past it the file is cut to its newest
    /// half.
    #[arg(long)]
    serial_max_bytes: Option<u64>,
    /// Host Unix socket of the virtio-vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest vsock context id (default 3).
    #[arg(long)]
    vsock_cid: Option<u64>,
    /// Control API socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// virtio-fs share, repeatable (added to the config's shares); the guest mounts it with
    /// `mount -t virtiofs TAG DIR`.
    #[arg(long = "fs", value_name = "TAG=HOSTDIR[,ro][,cache=never|metadata|auto|always][,xattr][,writeback]", value_parser = parse_fs)]
    fs: Vec<FsConfig>,
    /// virtio-net device on an existing host tap interface, repeatable (added to the config's
    /// devices, one device each).
    #[arg(long = "net", value_name = "tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,mtu=N]", value_parser = parse_net)]
    net: Vec<NetConfig>,
}

fn parse_fs(s: &str) -> Result<FsConfig, String> {
    FsConfig::parse_cli(s).map_err(|e| e.to_string())
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    NetConfig::parse_cli(s).map_err(|e| e.to_string())
}

fn config_from(args: Args) -> anyhow::Result<VmConfig> {
    let mut c = match (&args.config, &args.kernel) {
        (Some(path), _) => VmConfig::from_file(path)?,
        (None, Some(k)) => VmConfig::new(k.clone()),
        (None, None) => anyhow::bail!("no kernel: pass --kernel or --config"),
    };
    if let Some(k) = args.kernel {
        c.kernel = k;
    }
    if let Some(i) = args.initrd {
        c.initrd = Some(i);
    }
    if let Some(v) = args.cmdline {
        c.cmdline = v;
    }
    if let Some(v) = args.boot_protocol {
        c.boot_protocol = v;
    }
    if let Some(v) = args.vcpus {
        c.vcpus = v;
    }
    if let Some(v) = args.memory_mib {
        c.memory_mib = v;
    }
    if let Some(v) = args.memory_backing {
        c.memory_backing = v;
    }
    if let Some(v) = args.serial {
        c.serial = v;
    }
    if let Some(v) = args.serial_max_bytes {
        c.serial_max_bytes = v;
    }
    match (args.vsock_uds, args.vsock_cid) {
        (Some(uds_path), cid) => {
            let guest_cid = cid.or(c.vsock.as_ref().map(|v| v.guest_cid)).unwrap_or(3);
            c.vsock = Some(VsockConfig {
                uds_path,
                guest_cid,
            });
        }
        (None, Some(cid)) => match c.vsock.as_mut() {
            Some(v) => v.guest_cid = cid,
            None => anyhow::bail!("--vsock-cid needs --vsock-uds"),
        },
        (None, None) => {}
    }
    if let Some(v) = args.api_sock {
        c.api_socket = Some(v);
    }
    c.fs.extend(args.fs);
    c.net.extend(args.net);
    Ok(c)
}

/// Closes every fd but stdin, stdout and stderr: whatever the caller leaked to hull-vmm (a
/// socket, a file of another sandbox) is not the guest's to reach through a VMM bug.
fn close_inherited_fds() {
    // SAFETY: close_range(2) with integer arguments, before any fd of our own is open.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        eprintln!(
            "hull-vmm: cannot close inherited fds: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
}

fn main() {
    close_inherited_fds();
    tracing_subscriber::fmt()
        // The guest decides how often some lines are logged: the log file is bounded.
        .with_writer(hull_vmm::logger::LogBudget::new(
            std::io::stderr(),
            hull_vmm::logger::LOG_MAX_BYTES,
        ))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // Usage errors exit 1 like every other configuration error.
            let _ = e.print();
            std::process::exit(1);
        }
    };
    let config = match config_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hull-vmm: {e:#}");
            std::process::exit(1);
        }
    };
    match hull_vmm::run(&config) {
        Ok(reason) => {
            let code = reason.exit_code();
            eprintln!("hull-vmm: {}", reason.describe());
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("hull-vmm: {e}");
            let code = match e {
                hull_vmm::VmmError::Snapshot(_) => hull_vmm_api::exit::EXIT_SNAPSHOT_REFUSED,
                _ => 1,
            };
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, String> {
        let args = Args::try_parse_from(["hull-vmm", "--kernel", "/k"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        config_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn net_flags_add_one_device_each() {
        let c = parse(&[
            "--net",
            "tap=tap0",
            "--net",
            "tap=tap1,mac=02:00:00:00:00:01,mtu=1400",
        ])
        .unwrap();
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0], NetConfig::new("tap0"));
        assert_eq!(c.net[1].tap, "tap1");
        assert_eq!(c.net[1].mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!(c.net[1].mtu, Some(1400));
        let e = parse(&["--net", "tap=t,speed=10"]).unwrap_err();
        assert!(e.contains("unknown key `speed`"), "{e}");
        let e = parse(&["--net", "tap=t,mtu=12"]).unwrap_err();
        assert!(e.contains("MTU 12"), "{e}");
        let e = parse(&["--net", "tap=t,mac=nope"]).unwrap_err();
        assert!(e.contains("`nope`"), "{e}");
        assert!(parse(&[]).unwrap().net.is_empty());
    }
}
