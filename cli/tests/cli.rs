//! The `hull` binary's command line, run as docker's runc shim would run it (no VM needed).

use std::path::Path;
use std::process::{Command, Output};

const HULL: &str = env!("CARGO_BIN_EXE_hull");

fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("hull-cli-{name}"))
        .tempdir()
        .unwrap()
}

fn hull(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(HULL)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn spec_writes_a_default_config_and_never_overwrites_one() {
    let t = tmp("spec");
    let out = hull(&["spec"], t.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec = oci_spec::runtime::Spec::load(t.path().join("config.json")).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    let args = spec.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(args, vec!["sh".to_string()]);
    let before = std::fs::read(t.path().join("config.json")).unwrap();
    let out = hull(&["spec"], t.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("exists. Remove it first"));
    assert_eq!(std::fs::read(t.path().join("config.json")).unwrap(), before);
    // --bundle elsewhere, and a bundle that does not exist.
    std::fs::create_dir(t.path().join("b")).unwrap();
    assert!(hull(&["spec", "--bundle", "b"], t.path(), &[])
        .status
        .success());
    assert!(t.path().join("b/config.json").exists());
    let out = hull(&["spec", "-b", "missing"], t.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        text(&out.stderr)
    );
    // Rootless: user namespace mappings for the caller.
    std::fs::create_dir(t.path().join("r")).unwrap();
    assert!(
        hull(&["spec", "--rootless", "--bundle", "r"], t.path(), &[])
            .status
            .success()
    );
    let r = oci_spec::runtime::Spec::load(t.path().join("r/config.json")).unwrap();
    assert!(r.linux().as_ref().unwrap().uid_mappings().is_some());
}

#[test]
fn check_reports_each_item_with_its_fix() {
    let t = tmp("check");
    let file = |n: &str| {
        let p = t.path().join(n);
        std::fs::write(&p, b"x").unwrap();
        p
    };
    let (k, i, v) = (file("vmlinux"), file("initrd.img"), file("hull-vmm"));
    let conf = t.path().join("config.toml");
    std::fs::write(
        &conf,
        format!(
            "kernel = \"{}\"\ninitrd = \"{}\"\nvmm = \"{}\"\n",
            k.display(),
            i.display(),
            v.display()
        ),
    )
    .unwrap();
    // `hull check` with this test's config file.
    let check = || {
        hull(
            &["check"],
            t.path(),
            &[("HULL_CONFIG", conf.to_str().unwrap())],
        )
    };
    let out = check();
    let o = text(&out.stdout);
    assert!(
        o.contains(&format!("ok   guest kernel: {}", k.display())),
        "{o}"
    );
    assert!(
        o.contains(&format!("ok   guest initramfs: {}", i.display())),
        "{o}"
    );
    assert!(
        o.contains(&format!("ok   hull-vmm: {}", v.display())),
        "{o}"
    );
    // The network backend: the host's vhost-net if /dev/vhost-net opens, else a warning.
    let vhost = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-net")
        .is_ok();
    assert!(
        o.contains(if vhost {
            "ok   virtio-net: the host kernel's vhost-net (/dev/vhost-net)"
        } else {
            "warn virtio-net: hull-vmm's own device (slower): /dev/vhost-net:"
        }),
        "{o}"
    );
    // The KVM line tells this host as it is.
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert!(o.contains("FAIL KVM: /dev/kvm is backed by PVM"), "{o}");
        assert!(
            o.contains("fix: use a host with hardware virtualisation"),
            "{o}"
        );
        assert_eq!(out.status.code(), Some(1));
    } else if !Path::new("/dev/kvm").exists() {
        assert!(o.contains("FAIL KVM: /dev/kvm does not exist"), "{o}");
    } else {
        assert!(o.contains("ok   KVM: /dev/kvm (kvm_"), "{o}");
    }
    // A missing file is named with its fix; a bad config names the key and the file.
    std::fs::remove_file(&v).unwrap();
    let o = text(&check().stdout);
    assert!(
        o.contains("FAIL hull-vmm:") && o.contains("run `make install`"),
        "{o}"
    );
    std::fs::write(&conf, "vcpu = 2\n").unwrap();
    let out = check();
    let o = text(&out.stdout);
    assert!(
        o.contains("FAIL configuration") && o.contains("vcpu"),
        "{o}"
    );
    assert_eq!(out.status.code(), Some(1));
}

/// The command lines of the `hull __monitor` processes started with `--root root`.
fn monitors_of(root: &Path) -> Vec<String> {
    let root = root.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let argv = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = argv
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let of_root = argv.windows(2).any(|w| w[0] == "--root" && w[1] == root);
            (of_root && argv.iter().any(|a| a == "__monitor"))
                .then(|| format!("{pid}: {}", argv.join(" ")))
        })
        .collect()
}

/// The entries under a directory (a temp --root must stay empty after a failed command).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `hull --root ROOT args...` in `dir`.
fn hull_root(root: &Path, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut a = vec!["--root", root.to_str().unwrap()];
    a.extend(args);
    hull(&a, dir, env)
}

/// A bundle with a config.json (`config`) and an empty rootfs.
fn bundle(dir: &Path, config: &str) -> std::path::PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    std::fs::write(b.join("config.json"), config).unwrap();
    b
}

/// A runtime configuration whose guest kernel does not exist: `create` fails at the VM.
fn no_kernel(dir: &Path) -> std::path::PathBuf {
    let conf = dir.join("config.toml");
    std::fs::write(
        &conf,
        format!("kernel = \"{}\"\n", dir.join("no-such-vmlinux").display()),
    )
    .unwrap();
    conf
}

fn fails_with(out: &Output, what: &str, args: &[&str]) {
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
    assert!(e.starts_with("hull: "), "{args:?}: {e}");
    assert!(e.contains(what), "{args:?}: wanted {what:?} in: {e}");
}

#[test]
fn commands_on_a_container_that_does_not_exist_fail_and_leave_nothing() {
    let t = tmp("nonexistent");
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope"],
        &["kill", "--all", "nope", "KILL"],
        &["delete", "nope"],
        &["exec", "nope", "sh"],
        &["exec", "--process", "/dev/null", "nope"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["ps", "nope"],
        &["ps", "--format", "json", "nope"],
        &["events", "--stats", "nope"],
        &["events", "nope"],
        &["update", "--memory", "1000000", "nope"],
    ] {
        if args[1] == "--process" {
            // An empty process.json is bad input before the container is looked up.
            let out = hull_root(&root, args, t.path(), &[]);
            fails_with(&out, "/dev/null", args);
            continue;
        }
        let out = hull_root(&root, args, t.path(), &[]);
        fails_with(&out, "container \"nope\" does not exist", args);
        assert!(text(&out.stdout).is_empty(), "{args:?}");
    }
    assert_eq!(entries(&root), Vec::<String>::new());
    // delete --force of nothing is fine, as with runc; so is a root that does not exist.
    for r in [&root, &t.path().join("missing-root")] {
        let out = hull_root(r, &["delete", "--force", "nope"], t.path(), &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(!t.path().join("missing-root").exists());
    // Ids are checked before anything else.
    let out = hull_root(&root, &["state", "../etc"], t.path(), &[]);
    fails_with(&out, "invalid container id \"../etc\"", &["state"]);
    assert_eq!(entries(&root), Vec::<String>::new());
}

#[test]
fn create_rejects_bad_input_and_leaves_nothing_behind() {
    let t = tmp("create");
    let root = t.path().join("root");
    let conf = no_kernel(t.path());
    let env = [("HULL_CONFIG", conf.to_str().unwrap())];
    // A bundle that does not exist.
    let args = ["create", "--bundle", "missing", "--pid-file", "p", "c1"];
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "bundle", &args);
    assert!(text(&out.stderr).contains("missing"));
    // config.json is not valid: the error names the file and the field.
    let b = bundle(
        t.path(),
        r#"{"ociVersion":"1.2.0","process":{"args":"sh","cwd":"/"},"root":{"path":"rootfs"}}"#,
    );
    let bs = b.to_str().unwrap();
    let args = ["create", "--bundle", bs, "c1"];
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "process.args", &args);
    assert!(text(&out.stderr).contains("config.json"));
    std::fs::write(b.join("config.json"), "{not json").unwrap();
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "config.json", &args);
    // A terminal needs a console socket (create detaches); a console socket needs a terminal.
    let spec = |terminal: bool| {
        format!(
            r#"{{"ociVersion":"1.2.0","process":{{"terminal":{terminal},"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}}}}"#
        )
    };
    std::fs::write(b.join("config.json"), spec(true)).unwrap();
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "cannot allocate tty", &args);
    std::fs::write(b.join("config.json"), spec(false)).unwrap();
    let sock = t.path().join("console.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let cargs = [
        "create",
        "--bundle",
        bs,
        "--console-socket",
        sock.to_str().unwrap(),
        "c1",
    ];
    let out = hull_root(&root, &cargs, t.path(), &env);
    fails_with(&out, "cannot use console socket", &cargs);
    assert_eq!(entries(&root), Vec::<String>::new());
    // A root file system that is not there.
    std::fs::rename(b.join("rootfs"), b.join("elsewhere")).unwrap();
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "root.path", &args);
    assert!(text(&out.stderr).contains("rootfs"));
    std::fs::rename(b.join("elsewhere"), b.join("rootfs")).unwrap();
    // A good bundle, but the VM cannot start: its sandbox is removed again, and so is the
    // monitor create started before the VM (it never got a process).
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "no-such-vmlinux", &args);
    assert_eq!(entries(&root), Vec::<String>::new());
    assert_eq!(monitors_of(&root), Vec::<String>::new());
    assert!(!t.path().join("p").exists());
    // `run` checks as create does.
    let rargs = ["run", "--bundle", bs, "c1"];
    let out = hull_root(&root, &rargs, t.path(), &env);
    fails_with(&out, "no-such-vmlinux", &rargs);
    assert_eq!(entries(&root), Vec::<String>::new());
    // An id in use: its directory is left as it was.
    std::fs::create_dir_all(root.join("c1")).unwrap();
    std::fs::write(root.join("c1/marker"), b"x").unwrap();
    let out = hull_root(&root, &args, t.path(), &env);
    fails_with(&out, "container with id \"c1\" already exists", &args);
    assert_eq!(entries(&root), vec!["c1".to_string()]);
    assert_eq!(entries(&root.join("c1")), vec!["marker".to_string()]);
    // ...and delete --force removes such a leftover.
    let out = hull_root(&root, &["delete", "--force", "c1"], t.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(entries(&root), Vec::<String>::new());
}

#[test]
fn flags_are_checked_before_the_container_is_looked_up() {
    let t = tmp("flags");
    let root = t.path().join("root");
    let r = |args: &[&str]| hull_root(&root, args, t.path(), &[]);
    fails_with(
        &r(&["kill", "c1", "FOO"]),
        "unknown signal \"FOO\"",
        &["kill"],
    );
    fails_with(&r(&["kill", "c1", "SIGFOO"]), "unknown signal", &["kill"]);
    fails_with(
        &r(&["kill", "c1", "99"]),
        "invalid signal number 99",
        &["kill"],
    );
    fails_with(&r(&["exec", "c1"]), "exec args cannot be empty", &["exec"]);
    fails_with(
        &r(&["exec", "--tty", "--detach", "c1", "sh"]),
        "cannot allocate tty",
        &["exec"],
    );
    let p = t.path().join("process.json");
    std::fs::write(
        &p,
        r#"{"args":["sh"],"cwd":"/","user":{"uid":"root","gid":0}}"#,
    )
    .unwrap();
    fails_with(
        &r(&["exec", "--process", p.to_str().unwrap(), "c1"]),
        "user.uid",
        &["exec"],
    );
    fails_with(&r(&["update", "c1"]), "nothing to update", &["update"]);
    let res = t.path().join("r.json");
    std::fs::write(&res, r#"{"memory":{"limit":"lots"}}"#).unwrap();
    fails_with(
        &r(&["update", "-r", res.to_str().unwrap(), "c1"]),
        "memory.limit",
        &["update"],
    );
    fails_with(&r(&["ps", "--format", "yaml", "c1"]), "yaml", &["ps"]);
    fails_with(&r(&["list", "--format", "yaml"]), "yaml", &["list"]);
    fails_with(
        &r(&["events", "--interval", "0", "c1"]),
        "interval",
        &["events"],
    );
    fails_with(
        &r(&["--log-format", "xml", "state", "c1"]),
        "invalid log format",
        &["--log-format"],
    );
    assert!(!root.exists());
    // The monitor is hull's own: started by hand it says so.
    let out = r(&[
        "__monitor",
        "--sandbox",
        "c1",
        "--container",
        "c1",
        "--process",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!text(&hull(&["--help"], t.path(), &[]).stdout).contains("__monitor"));
}

#[test]
fn list_features_and_help() {
    let t = tmp("list");
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = hull_root(&root, &["list"], t.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert_eq!(
        o.split_whitespace().collect::<Vec<_>>(),
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
        "{o}"
    );
    let out = hull_root(&root, &["list", "--format", "json"], t.path(), &[]);
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = hull_root(&root, &["list", "-q"], t.path(), &[]);
    assert!(out.status.success() && out.stdout.is_empty());
    // A directory that is not a sandbox is not listed.
    std::fs::create_dir(root.join("junk")).unwrap();
    let out = hull_root(&root, &["list", "-q"], t.path(), &[]);
    assert!(out.stdout.is_empty());

    let out = hull(&["features"], t.path(), &[]);
    assert!(out.status.success());
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert!(f["ociVersionMax"].as_str().unwrap().starts_with("1."));
    assert!(f["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "poststart"));
    assert!(f["mountOptions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "rbind"));
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "pid"));
    assert!(f["linux"]["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "CAP_SYS_ADMIN"));
    assert_eq!(f["linux"]["cgroup"]["v2"], true);
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);

    // One line per command.
    let help = text(&hull(&["--help"], t.path(), &[]).stdout);
    for c in [
        "create",
        "start",
        "state",
        "kill",
        "delete",
        "run",
        "exec",
        "ps",
        "list",
        "pause",
        "resume",
        "update",
        "events",
        "features",
        "spec",
        "check",
        "checkpoint",
        "restore",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{c} "))),
            "{c}: {help}"
        );
    }
}

#[test]
fn errors_go_to_the_log_file_as_runc_json_lines() {
    let t = tmp("log");
    let log = t.path().join("log.json");
    let out = hull(
        &[
            "--root",
            t.path().join("root").to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "state",
            "nope",
        ],
        t.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("container \"nope\" does not exist"));
    let data = std::fs::read_to_string(&log).unwrap();
    let last = data.lines().last().expect("a log line");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["level"], "error");
    assert_eq!(v["msg"], "container \"nope\" does not exist");
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    // Text format: the message is in the file too.
    let log2 = t.path().join("log.txt");
    let out = hull(
        &["--log", log2.to_str().unwrap(), "kill", "nope", "BAD"],
        t.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::read_to_string(&log2)
        .unwrap()
        .contains("unknown signal"));
}

#[test]
fn unsupported_commands_and_usage_errors() {
    let t = tmp("usage");
    for args in [
        &["checkpoint", "c1"][..],
        &["restore", "--image-path", "x", "c1"],
    ] {
        let out = hull(args, t.path(), &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(text(&out.stderr).contains("not supported yet"));
    }
    // Flags are runc's: an unknown one is a usage error, and a missing id too.
    let out = hull(&["create", "--bogus", "c1"], t.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = hull(&["create"], t.path(), &[]);
    assert!(text(&out.stderr).contains("CONTAINER_ID"));
    let out = hull(&["--version"], t.path(), &[]);
    assert!(text(&out.stdout).contains("spec: 1.2.0"));
}

/// The monitor (`hull __monitor`) against a host-mode agent (`hull-agent --listen unix:PATH`,
/// the binary named by HULL_AGENT): it carries stdio, exits with the process's code, forwards
/// signals and reports 128 + N. No VM needed, but a built hull-agent is: the one next to the
/// `hull` under test (`make unit-test` builds the whole workspace), or `HULL_AGENT`.
#[test]
fn monitor_carries_stdio_and_status_of_a_host_mode_agent_process() {
    use hull_runtime::agent::protocol::SpawnRequest;
    use hull_runtime::agent::{AgentClient, Endpoint};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;

    let agent_bin = std::env::var_os("HULL_AGENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(HULL).with_file_name("hull-agent"));
    assert!(
        agent_bin.exists(),
        "{} is missing: build the workspace (`make unit-test` does), or set HULL_AGENT",
        agent_bin.display()
    );
    let t = tmp("monitor");
    let sock = t.path().join("agent.sock");
    let mut agent = Command::new(agent_bin)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(AgentClient::connect_retry(
            Endpoint::unix(&sock),
            std::time::Duration::from_secs(30),
        ))
        .unwrap();
    let spawn = |script: &str| {
        rt.block_on(client.spawn(SpawnRequest::new(["/bin/sh", "-c", script])))
            .unwrap()
            .process
    };
    // Starts a monitor for `process` as hull does: fd 3 is the readiness pipe.
    let monitor = |process: u64| {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let wfd = w.as_raw_fd();
        let mut cmd = Command::new(HULL);
        cmd.args(["--root", t.path().to_str().unwrap(), "__monitor"])
            .args(["--sandbox", "s", "--container", "c", "--exec"])
            .args(["--process", &process.to_string()])
            .arg("--agent-socket")
            .arg(&sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let to_fd3 = move || {
            // SAFETY: dup2 is async-signal-safe and works on plain integers.
            if unsafe { libc::dup2(wfd, 3) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure only calls dup2 (async-signal-safe) between fork and exec.
        unsafe { cmd.pre_exec(to_fd3) };
        let child = cmd.spawn().unwrap();
        drop(w);
        let mut ready = Vec::new();
        std::fs::File::from(r).read_to_end(&mut ready).unwrap();
        assert_eq!(ready, [0], "{}", text(&ready));
        child
    };

    // Pipes: stdin in (end of file closes it), stdout and stderr out, the exit code.
    let p = spawn("cat; echo err >&2; exit 3");
    let mut m = monitor(p.0);
    m.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = m.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "hello\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));

    // A signal to the monitor reaches the process.
    let p = spawn("trap 'echo term; exit 42' TERM; echo up; while :; do sleep 0.1; done");
    let mut m = monitor(p.0);
    let mut up = [0u8; 3];
    m.stdout.as_mut().unwrap().read_exact(&mut up).unwrap();
    assert_eq!(&up, b"up\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = m.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "term\n");
    assert_eq!(out.status.code(), Some(42));

    // Killed by a signal: 128 + N.
    let p = spawn("echo up; exec sleep 100");
    let mut m = monitor(p.0);
    m.stdout.as_mut().unwrap().read_exact(&mut up).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(m.wait().unwrap().code(), Some(130));

    // The process ends, but the monitor's own reader (the caller of `hull exec`) stops reading:
    // the rest of the output is copied for a bounded time, then the status is reported all
    // the same (the monitor never hangs on its caller).
    let p = spawn("head -c 100000 /dev/zero; exit 4");
    let mut m = monitor(p.0);
    let stuck = m.stdout.take();
    assert_eq!(m.wait().unwrap().code(), Some(4));
    drop(stuck);
    let _ = agent.kill();
    let _ = agent.wait();
}
