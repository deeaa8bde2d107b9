//! `hull exec`: runs a new process in a running container, from `--process FILE` (an OCI
//! `process` object) or from the arguments on top of the container's own process (its env,
//! cwd, user, capabilities), changed by `--tty --cwd --env --user --additional-gids --cap
//! --no-new-privs`. A monitor stands for the process (see [`crate::monitor`]): with
//! `--detach` its pid goes to `--pid-file` and exec returns; without, exec carries the stdio in
//! the foreground and exits with the process's status.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use hull_runtime::agent::protocol::ContainerStatus;
use oci_spec::runtime::Process;
use serde_json::{Map, Value};

use super::{block_on, check_id, load_spec, open_with_status, write_pid_file, Ctx};
use crate::monitor::{self, MonitorArgs};

/// Reads a process.json; errors name the field.
pub fn load_process(path: &Path) -> anyhow::Result<Process> {
    let data = std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    parse_process(&data, &path.display().to_string())
}

fn parse_process(data: &[u8], what: &str) -> anyhow::Result<Process> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            anyhow!("invalid process in {what}: {}", e.inner())
        } else {
            anyhow!("invalid process in {what}: field {field}: {}", e.inner())
        }
    })
}

/// The process the flags ask for, on top of the container's `base` process.
pub fn from_flags(e: &liboci_cli::Exec, base: Option<&Process>) -> anyhow::Result<Process> {
    if e.command.is_empty() {
        bail!("exec args cannot be empty");
    }
    let mut p = match base {
        Some(b) => serde_json::to_value(b)?,
        None => serde_json::json!({"cwd": "/"}),
    };
    let obj = p
        .as_object_mut()
        .ok_or_else(|| anyhow!("the container's process is not an object"))?;
    obj.insert("args".into(), e.command.clone().into());
    obj.insert("terminal".into(), e.tty.into());
    obj.remove("consoleSize");
    if let Some(cwd) = &e.cwd {
        obj.insert("cwd".into(), cwd.display().to_string().into());
    }
    if !e.env.is_empty() {
        let mut env: Vec<String> = obj
            .get("env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &e.env {
            env.retain(|x| x.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
            env.push(format!("{k}={v}"));
        }
        obj.insert("env".into(), env.into());
    }
    let user = obj
        .entry("user")
        .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
    let user = user
        .as_object_mut()
        .ok_or_else(|| anyhow!("the container's process.user is not an object"))?;
    if let Some((uid, gid)) = e.user {
        user.insert("uid".into(), uid.into());
        user.insert("gid".into(), gid.unwrap_or(0).into());
    }
    if !e.additional_gids.is_empty() {
        user.insert("additionalGids".into(), e.additional_gids.clone().into());
    }
    if !e.cap.is_empty() {
        let caps = obj
            .entry("capabilities")
            .or_insert_with(|| Value::Object(Map::new()));
        let caps = caps
            .as_object_mut()
            .ok_or_else(|| anyhow!("the container's process.capabilities is not an object"))?;
        for set in ["bounding", "effective", "permitted"] {
            let list = caps.entry(set).or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                for c in &e.cap {
                    let c = c.to_ascii_uppercase();
                    let c = if c.starts_with("CAP_") {
                        c
                    } else {
                        format!("CAP_{c}")
                    };
                    if !list.iter().any(|x| x.as_str() == Some(&c)) {
                        list.push(c.into());
                    }
                }
            }
        }
    }
    if e.no_new_privs {
        obj.insert("noNewPrivileges".into(), true.into());
    }
    parse_process(p.to_string().as_bytes(), "the exec flags")
}

pub fn run(ctx: &Ctx, e: &liboci_cli::Exec) -> anyhow::Result<ExitCode> {
    let id = e.container_id.as_str();
    check_id(id)?;
    let from_file = match &e.process {
        Some(p) => Some(load_process(p)?),
        None => {
            if e.command.is_empty() {
                bail!("exec args cannot be empty");
            }
            None
        }
    };
    let tty = from_file
        .as_ref()
        .map_or(e.tty, |p| p.terminal().unwrap_or(false));
    match (tty, &e.console_socket) {
        (true, None) if e.detach => {
            bail!("cannot allocate tty if hull will detach without setting console socket")
        }
        (false, Some(_)) => {
            bail!("cannot use console socket if hull will not detach or allocate tty")
        }
        _ => {}
    }
    if let Some(s) = &e.console_socket {
        if !s.exists() {
            bail!("console socket {} does not exist", s.display());
        }
    }
    let m = block_on(async {
        let (sb, c, status) = open_with_status(ctx, id).await?;
        match status {
            ContainerStatus::Stopped => bail!("cannot exec in a stopped container"),
            ContainerStatus::Paused if !e.ignore_paused => {
                bail!("cannot exec in a paused container (use --ignore-paused to override)")
            }
            _ => {}
        }
        let process = match from_file {
            Some(p) => p,
            None => {
                let spec = load_spec(c.bundle())?;
                from_flags(e, spec.process().as_ref())?
            }
        };
        let stdio = monitor::stdio_spec(tty, e.console_socket.is_some(), Some(&process));
        let (process_id, _guest_pid) = c
            .exec(&sb, &process, stdio)
            .await
            .with_context(|| format!("cannot exec in container \"{id}\""))?;
        let started = monitor::spawn(
            &ctx.globals,
            &MonitorArgs {
                sandbox: id.to_string(),
                container: c.id().to_string(),
                process: Some(process_id.0),
                process_on_fd: false,
                exec: true,
                terminal: tty,
                console_socket: e.console_socket.clone(),
                agent_socket: None,
            },
        )
        .and_then(|m| {
            if let Some(p) = &e.pid_file {
                if let Err(err) = write_pid_file(p, m.pid) {
                    let mut child = m.child;
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err);
                }
            }
            Ok(m)
        });
        if started.is_err() {
            // Nobody stands for the process: do not leave it running.
            if let Ok(a) = sb.agent() {
                let _ = a.signal(process_id, libc::SIGKILL, true).await;
            }
        }
        started
    })??;
    if e.detach {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(super::foreground::wait(m.child)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        e: liboci_cli::Exec,
    }

    fn exec(args: &[&str]) -> liboci_cli::Exec {
        let mut v = vec!["exec"];
        v.extend(args);
        T::parse_from(v).e
    }

    #[test]
    fn flags_change_the_containers_process() {
        let base: Process = serde_json::from_value(serde_json::json!({
            "args": ["sh"], "cwd": "/", "env": ["PATH=/bin", "A=1"],
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}
        }))
        .unwrap();
        let e = exec(&[
            "-t",
            "--cwd",
            "/tmp",
            "-e",
            "A=2",
            "-e",
            "B=3",
            "-u",
            "1000:100",
            "-g",
            "5",
            "--cap",
            "NET_ADMIN",
            "--no-new-privs",
            "c1",
            "ls",
            "-l",
        ]);
        let p = from_flags(&e, Some(&base)).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["ls".to_string(), "-l".into()]);
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.cwd(), Path::new("/tmp"));
        let env = p.env().clone().unwrap();
        assert!(env.contains(&"A=2".to_string()) && env.contains(&"B=3".to_string()));
        assert!(!env.contains(&"A=1".to_string()));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().gid(), 100);
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[5u32][..]));
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 2);
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(from_flags(&exec(&["c1"]), Some(&base))
            .unwrap_err()
            .to_string()
            .contains("exec args cannot be empty"));
        let e = parse_process(
            br#"{"args":["sh"],"cwd":"/","user":{"uid":"x","gid":0}}"#,
            "p.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("user.uid") && e.contains("p.json"), "{e}");
    }
}
