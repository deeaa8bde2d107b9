//! hull's processes on the test host, found by their command lines in /proc: what a test counts
//! to show one VM and one shim per pod, and that nothing is left behind.

use std::path::Path;

/// A live (not zombie) process and its arguments.
pub struct Process {
    pub pid: i32,
    pub args: Vec<String>,
}

/// Every live (not zombie) process.
pub fn live() -> Vec<Process> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie_or_gone = stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'));
        if zombie_or_gone {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push(Process { pid, args });
    }
    out
}

fn program_is(p: &Process, name: &str) -> bool {
    p.args
        .first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == name))
}

/// hull-vmm processes whose VM lives below `dir` (an argument of theirs is a path below it).
pub fn vmm_pids(dir: &Path) -> Vec<i32> {
    live()
        .into_iter()
        .filter(|p| {
            program_is(p, "hull-vmm") && p.args.iter().any(|a| Path::new(a).starts_with(dir))
        })
        .map(|p| p.pid)
        .collect()
}

/// Running shim servers of hull (`containerd-shim-hull-v2 ... -socket ...`), with the id they
/// were started for (`-id ID`: the pod's sandbox id, or the task's own id).
pub fn shims() -> Vec<(i32, String)> {
    live()
        .into_iter()
        .filter(|p| {
            program_is(p, "containerd-shim-hull-v2") && p.args.iter().any(|a| a == "-socket")
        })
        .map(|p| {
            let id = p
                .args
                .windows(2)
                .find(|w| w[0] == "-id")
                .map(|w| w[1].clone())
                .unwrap_or_default();
            (p.pid, id)
        })
        .collect()
}

/// Every running `containerd-shim-hull-v2` process, servers and one-shot invocations (`start`,
/// `delete`) alike: pid and arguments.
pub fn shim_processes() -> Vec<(i32, Vec<String>)> {
    live()
        .into_iter()
        .filter(|p| program_is(p, "containerd-shim-hull-v2"))
        .map(|p| (p.pid, p.args.clone()))
        .collect()
}

/// Pids of the shim servers started for `id`.
pub fn shim_pids(id: &str) -> Vec<i32> {
    shims()
        .into_iter()
        .filter(|(_, i)| i == id)
        .map(|(p, _)| p)
        .collect()
}
