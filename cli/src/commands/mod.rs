//! One module per command, and what they share: the state root, loading a container, the
//! pid file, waiting for a monitor in the foreground.

pub mod check;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod foreground;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod spec;
pub mod start;
pub mod state;
pub mod template;
pub mod unsupported;
pub mod update;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use hull_runtime::agent::protocol::ContainerStatus;
use hull_runtime::container::Container;
use hull_runtime::sandbox::{validate_id, Sandbox, SandboxError, STATE_FILE};
use liboci_cli::GlobalOpts;

use crate::monitor::Globals;

/// What every command knows: the state root and the global flags a monitor inherits.
pub struct Ctx {
    pub root: PathBuf,
    pub globals: Globals,
}

impl Ctx {
    pub fn new(g: &GlobalOpts) -> Ctx {
        let root = crate::root_of(g);
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        Ctx {
            globals: Globals {
                root: root.clone(),
                log: g.log.as_ref().map(abs),
                log_format: g.log_format.clone(),
                debug: g.debug,
            },
            root,
        }
    }

    /// The sandbox directory of container `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Whether container `id` exists (its sandbox has a state file).
    pub fn exists(&self, id: &str) -> bool {
        self.dir(id).join(STATE_FILE).exists()
    }
}

/// Runs `f` on a fresh single-threaded runtime.
pub fn block_on<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

/// runc's words for a container id that names nothing.
pub fn not_found(id: &str) -> anyhow::Error {
    anyhow!("container \"{id}\" does not exist")
}

/// Checks an id as runc does.
pub fn check_id(id: &str) -> anyhow::Result<()> {
    validate_id(id).map_err(|e| match e {
        SandboxError::InvalidId { id, reason } => anyhow!("invalid container id {id:?}: {reason}"),
        e => anyhow!("{e}"),
    })
}

/// Attaches to container `id`: its sandbox (locked while the handle lives) and the container.
pub async fn open(ctx: &Ctx, id: &str) -> anyhow::Result<(Sandbox, Container)> {
    check_id(id)?;
    if !ctx.exists(id) {
        return Err(not_found(id));
    }
    let sb = Sandbox::load(&ctx.root, id)
        .await
        .with_context(|| format!("container \"{id}\""))?;
    let c = Container::load(&sb, id).with_context(|| format!("container \"{id}\""))?;
    Ok((sb, c))
}

/// [`open`], and the container's status as its VM reports it (the check every command that
/// acts on a running, paused or created container makes first).
pub async fn open_with_status(
    ctx: &Ctx,
    id: &str,
) -> anyhow::Result<(Sandbox, Container, ContainerStatus)> {
    let (sb, c) = open(ctx, id).await?;
    let info = c
        .info(&sb)
        .await
        .with_context(|| format!("container \"{id}\""))?;
    Ok((sb, c, info.status))
}

/// Writes `pid` to `path` as runc does: into a temporary file beside it, renamed into place.
pub fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("invalid pid file {}", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        write!(f, "{pid}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write the pid file {}: {e}", path.display())
    })
}

/// The bundle's `config.json`, with errors that name the file and the field.
pub fn load_spec(bundle: &Path) -> anyhow::Result<oci_spec::runtime::Spec> {
    if !bundle.is_dir() {
        bail!(
            "bundle {} does not exist or is not a directory",
            bundle.display()
        );
    }
    let path = bundle.join("config.json");
    let data = std::fs::read(&path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_slice(&data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            anyhow!("invalid {}: {}", path.display(), e.inner())
        } else {
            anyhow!("invalid {}: field {field}: {}", path.display(), e.inner())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pid");
        write_pid_file(&p, 1234).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "1234");
        write_pid_file(&p, 5).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "5");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e = write_pid_file(&d.path().join("no/such/dir/pid"), 1).unwrap_err();
        assert!(format!("{e}").contains("no/such/dir/pid"), "{e}");
    }

    #[test]
    fn spec_errors_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        let e = load_spec(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::write(
            d.path().join("config.json"),
            r#"{"ociVersion":"1.2.0","process":{"args":"sh","cwd":"/"}}"#,
        )
        .unwrap();
        let e = load_spec(d.path()).unwrap_err().to_string();
        assert!(e.contains("process.args"), "{e}");
    }
}
