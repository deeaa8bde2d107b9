//! containerd-shim-hull-v2: containerd's runtime `io.containerd.hull.v2`.
//!
//! **Owns**: containerd's shim v2 task service, one shim and one sandbox VM per pod: the task
//! model ([`task`]: tasks, processes and their states, waiters, the pod, events), the ttrpc
//! adapter over it ([`service`]), containerd's stdio FIFOs ([`stdio`]) and rootfs mounts
//! ([`rootfs`]), which pod a container belongs to ([`pod`]).
//! **Must not**: start or drive VMs itself, nor speak to the guest agent: that is
//! `hull-runtime`'s, reached only through the pod backend (`task/runtime.rs`, the one place
//! of the task code that calls `hull_runtime::sandbox` and `hull_runtime::container`). Nor
//! put task logic in the ttrpc adapter: it decodes, calls the model and encodes.
//!
//! containerd runs the binary three ways (the `containerd-shim` crate parses the flags):
//! `start` (spawn the shim server for a pod, or find the running one, and print its address),
//! `delete` (clean up after a shim that died), and the server itself (`-socket`), which serves
//! the task service ([`service`]) until containerd's Shutdown finds no task left.

mod convert;
mod pod;
mod publish;
mod rootfs;
mod service;
mod stdio;
mod task;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

/// containerd's name for this runtime.
const RUNTIME_ID: &str = "io.containerd.hull.v2";

struct HullShim {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
    /// containerd's GRPC address (the shim socket address is derived from it).
    address: String,
    bundle: PathBuf,
}

/// Logs go to containerd's `log` FIFO in the bundle directory for the server (containerd copies
/// them into its own log), to stderr for `start` and `delete` (containerd shows it on failure).
fn init_logging(flags: &Flags) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("HULL_SHIM_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if flags.debug { "debug" } else { "info" })
        });
    let server = !matches!(flags.action.as_str(), "start" | "delete");
    let fifo = server
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("log")
                .ok()
        })
        .flatten();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let r = match fifo {
        Some(f) => {
            // Blocking writes from here on: a slow reader delays the shim, it never loses lines.
            let _ = nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
            );
            builder.with_writer(std::sync::Mutex::new(f)).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    if let Err(e) = r {
        eprintln!("{RUNTIME_ID}: cannot set up logging: {e}");
    }
}

/// Whether a shim serves `address` (a socket that accepts a connection).
fn shim_alive(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Removes the socket file of a shim that died (it could not remove it itself), as runc-v2's
/// cleanup does; a socket a live shim serves is left alone.
fn remove_dead_socket(address: &str) {
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    let is_socket = std::fs::symlink_metadata(path)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
    if is_socket && !shim_alive(address) {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!("removed the dead shim's socket {}", path.display()),
            Err(e) => tracing::warn!("removing the dead shim's socket {}: {e}", path.display()),
        }
    }
}

fn write_address(bundle: &Path, address: &str) -> Result<(), Error> {
    std::fs::write(bundle.join("address"), address).map_err(|e| Error::IoError {
        context: format!("writing {}/address", bundle.display()),
        err: e,
    })
}

#[async_trait]
impl Shim for HullShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        init_logging(args);
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
        } else {
            PathBuf::from(&args.bundle)
        };
        HullShim {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            bundle,
        }
    }

    /// Every container of a CRI pod goes to the shim of the pod's sandbox (grouped by the
    /// sandbox id, as runc-v2's `--group`): when that shim runs, its address is the answer.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let annotations = pod::bundle_annotations(&self.bundle).unwrap_or_else(|e| {
            tracing::warn!("start {}: reading the bundle's annotations: {e}", opts.id);
            Default::default()
        });
        let group = pod::group(&opts.id, &annotations);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        if group != opts.id && shim_alive(&address) {
            write_address(&self.bundle, &address)?;
            return Ok(address);
        }
        let address = spawn(opts, &group, Vec::new()).await?;
        write_address(&self.bundle, &address)?;
        Ok(address)
    }

    /// After the shim died: stops and removes the pod's sandbox (unless the pod's shim still
    /// serves it) and unmounts the task's rootfs. Always answers as a task killed by SIGKILL.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let annotations = pod::bundle_annotations(&self.bundle).unwrap_or_default();
        let group = pod::group(&self.id, &annotations);
        let address = containerd_shim::socket_address(&self.address, &self.namespace, &group);
        let mut failed = None;
        if group != self.id && shim_alive(&address) {
            tracing::info!(
                "delete {}: the pod's shim still runs; only unmounting the rootfs",
                self.id
            );
        } else {
            let root = pod::state_root(&self.namespace);
            let name = task::runtime::sandbox_name(&root, &group);
            let (r, n) = (root.clone(), name.clone());
            let res = tokio::task::spawn_blocking(move || task::runtime::cleanup(&r, &n))
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
            match res {
                Ok(()) => remove_dead_socket(&address),
                Err(e) => {
                    tracing::error!("delete {}: cleaning up sandbox {name}: {e}", self.id);
                    failed = Some(format!("cleaning up sandbox {name}: {e}"));
                }
            }
        }
        // The task's rootfs is unmounted whatever happened to the sandbox: it is the host's
        // mount, and nothing else would take it off.
        let rootfs = self.bundle.join("rootfs");
        if let Err(e) = rootfs::unmount_all(&rootfs) {
            tracing::error!("delete {}: {e}", self.id);
            failed.get_or_insert(e.to_string());
        }
        if let Some(e) = failed {
            return Err(Error::Other(e));
        }
        Ok(DeleteResponse {
            pid: 0,
            exit_status: hull_runtime::process::KILLED_EXIT,
            exited_at: MessageField::some(convert::timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // hull-vmm is the only child: reaped by the service's own thread, not by the crate's
    // SIGCHLD handler; nothing is reparented to the shim (no subreaper).
    let config = Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Config::default()
    };
    run::<HullShim>(RUNTIME_ID, Some(config)).await;
}
