//! OCI hooks, run on the host as the runtime spec says: path, args (`args[0]` is argv0), env
//! (exactly the hook's), the container's state JSON on stdin, killed after `timeout` seconds.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::{Hook, Hooks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ContainerError;

/// Bytes of a failed hook's stderr kept for the error message.
const MAX_STDERR: usize = 4096;
/// How long the stderr of an exited hook is still read (a child it left may hold it open).
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// The hook lists of the runtime spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub const ALL: [HookKind; 6] = [
        HookKind::Prestart,
        HookKind::CreateRuntime,
        HookKind::CreateContainer,
        HookKind::StartContainer,
        HookKind::Poststart,
        HookKind::Poststop,
    ];

    /// The name in config.json.
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// This kind's hooks in `hooks`.
    pub fn hooks(self, hooks: Option<&Hooks>) -> &[Hook] {
        let Some(h) = hooks else { return &[] };
        #[allow(deprecated)] // prestart is deprecated in the spec, and still run (as runc does)
        let list = match self {
            HookKind::Prestart => h.prestart(),
            HookKind::CreateRuntime => h.create_runtime(),
            HookKind::CreateContainer => h.create_container(),
            HookKind::StartContainer => h.start_container(),
            HookKind::Poststart => h.poststart(),
            HookKind::Poststop => h.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// Runs the hooks of `kinds` in order, stopping at the first failure (prestart, createRuntime).
pub async fn run_all(
    hooks: Option<&Hooks>,
    kinds: &[HookKind],
    state: &oci_spec::runtime::State,
) -> Result<(), ContainerError> {
    let stdin = serde_json::to_vec(state).unwrap_or_default();
    for &kind in kinds {
        for hook in kind.hooks(hooks) {
            run(kind, hook, &stdin).await?;
        }
    }
    Ok(())
}

/// Runs every hook of `kind`; a failure is only logged (poststart, poststop: as runc).
pub async fn run_warn(hooks: Option<&Hooks>, kind: HookKind, state: &oci_spec::runtime::State) {
    let stdin = serde_json::to_vec(state).unwrap_or_default();
    for hook in kind.hooks(hooks) {
        if let Err(e) = run(kind, hook, &stdin).await {
            tracing::warn!("{e}");
        }
    }
}

/// Logs that hooks of `kind` are skipped: they would run in the container's namespaces, which
/// are in the guest.
pub fn skip(hooks: Option<&Hooks>, kind: HookKind, id: &str) {
    let n = kind.hooks(hooks).len();
    if n > 0 {
        tracing::warn!(
            "container {id}: skipping {n} {} hook(s): they run in the container's namespaces, \
             which are in the VM",
            kind.name()
        );
    }
}

/// Runs one hook with `stdin` (the state JSON) on its standard input.
pub async fn run(kind: HookKind, hook: &Hook, stdin: &[u8]) -> Result<(), ContainerError> {
    let fail = |reason: String| ContainerError::Hook {
        which: kind.name(),
        path: hook.path().clone(),
        reason,
    };
    let mut cmd = tokio::process::Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            cmd.arg0(argv0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or_default() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        cmd.env(k, v);
    }
    // Its own process group, so that a timeout kills what it started too.
    cmd.process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let pid = child.id();
    let feed = {
        let input = child.stdin.take();
        let data = stdin.to_vec();
        async move {
            if let Some(mut w) = input {
                // A hook that does not read its stdin is fine (broken pipe).
                let _ = w.write_all(&data).await;
            }
        }
    };
    let mut stderr = child.stderr.take();
    let collect = tokio::spawn(async move {
        let mut kept = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = MAX_STDERR.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        kept
    });
    let limit = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .map(Duration::from_secs);
    let waited = async {
        let (status, ()) = tokio::join!(child.wait(), feed);
        status
    };
    let status = match limit {
        None => waited.await,
        Some(limit) => match tokio::time::timeout(limit, waited).await {
            Ok(s) => s,
            Err(_) => {
                kill_group(pid);
                let _ = child.wait().await;
                collect.abort();
                return Err(fail(format!(
                    "did not finish within its timeout of {} s and was killed",
                    limit.as_secs()
                )));
            }
        },
    }
    .map_err(|e| fail(format!("waiting for it: {e}")))?;
    if status.success() {
        collect.abort();
        return Ok(());
    }
    let err = match tokio::time::timeout(STDERR_GRACE, collect).await {
        Ok(Ok(v)) => String::from_utf8_lossy(&v).trim().to_string(),
        _ => String::new(),
    };
    let mut reason = format!("failed ({status})");
    if !err.is_empty() {
        reason.push_str(": ");
        reason.push_str(&err);
    }
    Err(fail(reason))
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let pg = nix::unistd::Pid::from_raw(pid);
    if let Err(e) = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL) {
        tracing::debug!("killing hook process group {pid}: {e}");
    }
}

/// The state a hook gets on stdin.
pub fn state(
    id: &str,
    status: oci_spec::runtime::ContainerState,
    pid: Option<i32>,
    bundle: PathBuf,
    annotations: &std::collections::BTreeMap<String, String>,
) -> oci_spec::runtime::State {
    let mut s = oci_spec::runtime::State::default();
    s.set_version(oci_spec::runtime::VERSION.to_string());
    s.set_id(id.to_string());
    s.set_status(status);
    s.set_pid(pid);
    s.set_bundle(bundle);
    s.set_annotations(Some(annotations.clone().into_iter().collect()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ContainerState;
    use serde_json::{json, Value};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// A hook script that appends its arguments (a script cannot see its argv0), one env var
    /// and stdin to `log`, then runs `tail`.
    fn script(dir: &Path, name: &str, log: &Path, tail: &str) -> PathBuf {
        let p = dir.join(name);
        let body = format!(
            "#!/bin/sh\nprintf '%s|' \"$@\" >> {log}\nprintf 'X=%s|' \"$X\" >> {log}\n\
             cat >> {log}\necho >> {log}\n{tail}\n",
            log = log.display()
        );
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn hook(path: &Path, args: &[&str], timeout: Option<i64>) -> Value {
        json!({"path": path, "args": args, "env": ["X=y", "PATH=/usr/bin:/bin"], "timeout": timeout})
    }

    fn st(status: ContainerState) -> oci_spec::runtime::State {
        let ann = [("k".to_string(), "v".to_string())].into();
        state("c1", status, Some(7), "/bundle".into(), &ann)
    }

    #[tokio::test]
    async fn hooks_run_in_order_with_argv_env_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let ok = script(dir.path(), "ok", &log, "exit 0");
        let hooks: Hooks = serde_json::from_value(json!({
            "prestart": [hook(&ok, &["hook", "first", "a b"], None)],
            "createRuntime": [
                hook(&ok, &["hook", "second"], Some(5)),
                hook(&ok, &["hook", "third"], None),
            ],
            "poststart": [hook(&ok, &["hook", "never"], None)],
        }))
        .unwrap();
        run_all(
            Some(&hooks),
            &[HookKind::Prestart, HookKind::CreateRuntime],
            &st(ContainerState::Created),
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let state = r#"{"ociVersion":"1.1.0","id":"c1","status":"created","pid":7,"bundle":"/bundle","annotations":{"k":"v"}}"#;
        assert_eq!(lines[0], format!("first|a b|X=y|{state}"));
        assert_eq!(lines[1], format!("second|X=y|{state}"));
        assert_eq!(lines[2], format!("third|X=y|{state}"));
        // No args and no env.
        let bare: Hook = serde_json::from_value(json!({"path": ok})).unwrap();
        std::fs::remove_file(&log).unwrap();
        run(HookKind::Poststop, &bare, b"{}").await.unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "|X=|{}\n");
    }

    #[tokio::test]
    async fn args_0_is_argv0() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // A binary (not a script, whose interpreter gets the script's path) shows its argv.
        let cmd = format!("tr '\\0' ' ' < /proc/$$/cmdline > {}", log.display());
        let h: Hook =
            serde_json::from_value(json!({"path": "/bin/sh", "args": ["hull-argv0", "-c", cmd]}))
                .unwrap();
        run(HookKind::Prestart, &h, b"{}").await.unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("hull-argv0 -c "), "{text}");
    }

    #[tokio::test]
    async fn a_failing_hook_stops_the_list_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let ok = script(dir.path(), "ok", &log, "exit 0");
        let bad = script(dir.path(), "bad", &log, "echo no network >&2; exit 3");
        let hooks: Hooks = serde_json::from_value(json!({
            "prestart": [hook(&bad, &["hook", "bad"], None)],
            "createRuntime": [hook(&ok, &["hook", "after"], None)],
        }))
        .unwrap();
        let e = run_all(
            Some(&hooks),
            &[HookKind::Prestart, HookKind::CreateRuntime],
            &st(ContainerState::Created),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                ContainerError::Hook {
                    which: "prestart",
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("exit status: 3") && msg.contains("no network"),
            "{msg}"
        );
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("after"), "{text}");
        // Warn-only kinds run every hook despite failures.
        let hooks: Hooks = serde_json::from_value(json!({
            "poststop": [
                hook(&bad, &["hook", "bad2"], None),
                hook(&ok, &["hook", "after2"], None),
            ],
        }))
        .unwrap();
        run_warn(
            Some(&hooks),
            HookKind::Poststop,
            &st(ContainerState::Stopped),
        )
        .await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("bad2|") && text.contains("after2|"), "{text}");
        // A hook that cannot be run at all.
        let missing: Hook =
            serde_json::from_value(json!({"path": dir.path().join("nope")})).unwrap();
        let e = run(HookKind::Poststart, &missing, b"{}").await.unwrap_err();
        assert!(e.to_string().contains("cannot run it"), "{e}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // It leaves a child behind that holds stderr; the group is killed.
        let slow = script(dir.path(), "slow", &log, "sleep 600 & sleep 600");
        let h: Hook = serde_json::from_value(hook(&slow, &["hook"], Some(1))).unwrap();
        let e = run(HookKind::CreateRuntime, &h, b"{}").await.unwrap_err();
        assert!(
            e.to_string().contains("timeout of 1 s and was killed"),
            "{e}"
        );
    }
}
