//! The container helper: `hull-agent --container-helper REQUEST RESULT`.
//!
//! libcontainer forks and clones (the intermediate and init processes) and expects a
//! single-threaded caller; the agent is a multi-threaded async runtime. So every call that
//! makes a process (create, exec) runs in a fresh process: the agent re-executes itself with a
//! request file, the helper calls libcontainer with `as_sibling`, so the container's processes
//! become the agent's children (its reaper collects them), writes the result file and exits.
//! Its own fds 0-2 are the container's stdio (pipes the agent holds the other ends of), or
//! /dev/null when the container has a terminal (then libcontainer sends the terminal's master
//! over the console socket the agent listens on).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The argument that makes `hull-agent` the helper.
pub const HELPER_ARG: &str = "--container-helper";

/// What the agent asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HelperRequest {
    /// Create (not start) a container from a bundle.
    Create {
        id: String,
        bundle: PathBuf,
        root: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Start a process (an OCI `process` JSON file) in a running container.
    Exec {
        id: String,
        root: PathBuf,
        process: PathBuf,
        console_socket: Option<PathBuf>,
    },
}

/// Why the program could not be run, as a shell would tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecProblem {
    NotFound,
    NotExecutable,
}

/// What the helper answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum HelperResult {
    /// The new process's pid (the container's init, or the exec'd process).
    Ok { pid: i32 },
    Err {
        message: String,
        #[serde(default)]
        exec: Option<ExecProblem>,
    },
}

/// The helper's `main`: returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let (req_path, result_path) = match args {
        [req, result] => (Path::new(req), Path::new(result)),
        _ => {
            eprintln!("usage: hull-agent {HELPER_ARG} REQUEST RESULT");
            return 2;
        }
    };
    let result = match std::fs::read(req_path)
        .map_err(|e| format!("read {}: {e}", req_path.display()))
        .and_then(|b| serde_json::from_slice::<HelperRequest>(&b).map_err(|e| e.to_string()))
    {
        Ok(req) => run(req),
        Err(message) => HelperResult::Err {
            message,
            exec: None,
        },
    };
    let code = match result {
        HelperResult::Ok { .. } => 0,
        HelperResult::Err { .. } => 1,
    };
    let bytes = serde_json::to_vec(&result).unwrap_or_default();
    if std::fs::write(result_path, bytes).is_err() {
        return 3;
    }
    code
}

fn run(req: HelperRequest) -> HelperResult {
    let r = match req {
        HelperRequest::Create {
            id,
            bundle,
            root,
            console_socket,
        } => create(id, bundle, root, console_socket),
        HelperRequest::Exec {
            id,
            root,
            process,
            console_socket,
        } => exec(id, root, process, console_socket),
    };
    match r {
        Ok(pid) => HelperResult::Ok { pid },
        Err(e) => {
            let message = chain(e.as_ref());
            let exec = if message.contains(NOT_FOUND) {
                Some(ExecProblem::NotFound)
            } else if message.contains(PERMISSION_DENIED) {
                Some(ExecProblem::NotExecutable)
            } else {
                None
            };
            HelperResult::Err { message, exec }
        }
    }
}

/// The error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// The container's stdio: the helper's own fds 0-2 (duplicated, so libcontainer may close
/// its copies).
fn stdio() -> Result<[OwnedFd; 3], std::io::Error> {
    use std::os::fd::AsFd;
    Ok([
        std::io::stdin().as_fd().try_clone_to_owned()?,
        std::io::stdout().as_fd().try_clone_to_owned()?,
        std::io::stderr().as_fd().try_clone_to_owned()?,
    ])
}

fn builder(
    id: String,
    root: PathBuf,
    console_socket: Option<PathBuf>,
) -> Result<ContainerBuilder, Box<dyn std::error::Error>> {
    let mut b = ContainerBuilder::new(id, SyscallType::default())
        .with_root_path(root)?
        .with_executor(HullExecutor);
    if console_socket.is_some() {
        b = b.with_console_socket(console_socket);
    } else {
        let [i, o, e] = stdio()?;
        b = b.with_stdin(i).with_stdout(o).with_stderr(e);
    }
    Ok(b.validate_id()?)
}

fn create(
    id: String,
    bundle: PathBuf,
    root: PathBuf,
    console_socket: Option<PathBuf>,
) -> Result<i32, Box<dyn std::error::Error>> {
    let container = builder(id, root, console_socket)?
        .as_init(bundle)
        .with_systemd(false)
        .as_sibling(true)
        .with_detach(true)
        // The guest's root is the initramfs (rootfs), which pivot_root cannot leave: move the
        // container's root over / and chroot instead (runc --no-pivot).
        .with_no_pivot(true)
        .build()?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| "libcontainer created the container but reported no init pid".into())
}

fn exec(
    id: String,
    root: PathBuf,
    process: PathBuf,
    console_socket: Option<PathBuf>,
) -> Result<i32, Box<dyn std::error::Error>> {
    let pid = builder(id, root, console_socket)?
        .as_tenant()
        .with_process(Some(process))
        .as_sibling(true)
        .with_detach(true)
        .build()?;
    Ok(pid.as_raw())
}

/// runc's words for a program that is not there and one that cannot be run.
const NOT_FOUND: &str = "executable file not found in $PATH";
const PERMISSION_DENIED: &str = ": permission denied";

/// libcontainer's default executor, with runc's checks and messages: the program is looked
/// up in the container's `PATH` (or runc's default when it has none), and a missing program
/// or one that is not an executable file is reported as runc reports it (`exec: "x":
/// executable file not found in $PATH`, `exec: "x": permission denied`), which the agent
/// turns into error kinds the host maps to 127 and 126.
#[derive(Clone)]
struct HullExecutor;

impl Executor for HullExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let invalid = |m: String| Err(ExecutorValidationError::ArgValidationError(m));
        let Some(process) = spec.process() else {
            return invalid("the spec has no process".into());
        };
        let Some(program) = process.args().as_ref().and_then(|a| a.first()) else {
            return invalid("process.args is empty: name the program to run".into());
        };
        let path_var = process
            .env()
            .as_ref()
            .and_then(|env| env.iter().find_map(|e| e.strip_prefix("PATH=")))
            .unwrap_or(crate::process::spawn::DEFAULT_PATH);
        match find_program(program, path_var) {
            Lookup::Found => Ok(()),
            Lookup::NotFound => invalid(format!("exec: {program:?}: {NOT_FOUND}")),
            Lookup::NotExecutable => invalid(format!("exec: {program:?}{PERMISSION_DENIED}")),
        }
    }
}

enum Lookup {
    Found,
    NotFound,
    NotExecutable,
}

/// Looks `program` up as execvp will (in the container's root, which is `/` by now).
fn find_program(program: &str, path_var: &str) -> Lookup {
    use std::os::unix::fs::PermissionsExt;
    let executable = |m: &std::fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    if program.contains('/') {
        return match std::fs::metadata(program) {
            Ok(m) if executable(&m) => Lookup::Found,
            Ok(_) => Lookup::NotExecutable,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Lookup::NotExecutable,
            Err(_) => Lookup::NotFound,
        };
    }
    let mut seen_unexecutable = false;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        match std::fs::metadata(Path::new(dir).join(program)) {
            Ok(m) if executable(&m) => return Lookup::Found,
            Ok(m) if m.is_file() => seen_unexecutable = true,
            _ => {}
        }
    }
    // execvp reports EACCES when it found the name but could not run it anywhere.
    if seen_unexecutable {
        Lookup::NotExecutable
    } else {
        Lookup::NotFound
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn programs_are_looked_up_as_execvp_does() {
        let dir = std::env::temp_dir().join(format!("hull-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let exe = dir.join("bin/prog");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.join("bin/data");
        std::fs::write(&plain, "x").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", dir.join("bin").display());

        assert!(matches!(find_program("prog", &path), Lookup::Found));
        assert!(matches!(
            find_program(exe.to_str().unwrap(), ""),
            Lookup::Found
        ));
        assert!(matches!(find_program("nothere", &path), Lookup::NotFound));
        assert!(matches!(
            find_program("/no/such/file", &path),
            Lookup::NotFound
        ));
        assert!(matches!(find_program("data", &path), Lookup::NotExecutable));
        assert!(matches!(
            find_program(plain.to_str().unwrap(), &path),
            Lookup::NotExecutable
        ));
        // A directory is not a program (runc: "permission denied").
        assert!(matches!(
            find_program(dir.to_str().unwrap(), &path),
            Lookup::NotExecutable
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn results_round_trip() {
        for r in [
            HelperResult::Ok { pid: 42 },
            HelperResult::Err {
                message: format!("exec: \"x\": {NOT_FOUND}"),
                exec: Some(ExecProblem::NotFound),
            },
        ] {
            let back: HelperResult =
                serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }
}
