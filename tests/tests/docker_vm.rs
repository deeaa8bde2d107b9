//! `docker --runtime hull`: docker 20.10 (Debian's docker.io) on a containerd of the test's
//! own, with hull registered as a runc-compatible runtime. docker drives `hull` through
//! containerd-shim-runc-v2, exactly as it drives runc.

use std::process::{Command, Output};

use hull_tests::daemons::{image, Containerd, Dockerd};
use hull_tests::{bin, require_kvm, TempDir};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn ok(c: Command, what: &str) -> String {
    let out = run(c);
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn host_release() -> String {
    text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string()
}

/// No hull-vmm runs any more (every container's VM is gone).
fn no_vmm_left() {
    let ps = text(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        !ps.lines().any(|l| l.contains("hull-vmm")),
        "a hull-vmm still runs:\n{ps}"
    );
}

#[test]
fn docker_runs_containers_in_microvms() {
    require_kvm();
    let dir = TempDir::new("hull-docker");
    let config = dir.path().join("hull.toml");
    hull_tests::vm::write_runtime_config(&config);
    let containerd = Containerd::start(
        &dir.path().join("ctd"),
        &[("HULL_CONFIG", config.as_os_str())],
        "",
    );
    let hull = bin("hull");
    let dockerd = Dockerd::start(&dir.path().join("dkd"), &containerd, &[("hull", &hull)]);
    let docker = || dockerd.docker();
    let busybox = image(dir.path(), "busybox");
    ok(
        {
            let mut c = docker();
            c.arg("load").arg("-i").arg(&busybox);
            c
        },
        "docker load",
    );
    let drun = |args: &[&str]| {
        let mut c = docker();
        c.args(["run", "--runtime", "hull"]).args(args);
        run(c)
    };

    // The guest kernel, and exit codes as with runc.
    let out = drun(&["--rm", "hull-test/busybox", "uname", "-r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let release = text(&out.stdout).trim().to_string();
    assert!(!release.is_empty());
    assert_ne!(release, host_release(), "ran on the host's kernel");
    for (args, code) in [
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["nosuchprogram"], 127),
        // (init ignores its own SIGKILL inside its pid namespace, with runc too)
        (vec!["sh", "-c", "sleep 100 & kill -9 $!; wait $!"], 137),
    ] {
        let mut a = vec!["--rm", "hull-test/busybox"];
        a.extend(args.iter().copied());
        let out = drun(&a);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = drun(&["--rm", "hull-test/busybox", "nosuchprogram"]);
    assert!(
        text(&out.stderr).contains("executable file not found"),
        "docker shows hull's error: {}",
        text(&out.stderr)
    );

    // -t: a terminal through --console-socket.
    let out = drun(&["--rm", "-t", "hull-test/busybox", "tty"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );

    // -m 64m: the limit the workload meets inside the guest.
    let out = drun(&[
        "--rm",
        "-m",
        "64m",
        "hull-test/busybox",
        "cat",
        "/sys/fs/cgroup/memory.max",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "67108864");

    // A long-running container: exec, pause/unpause, stats, stop, rm.
    let out = drun(&["-d", "--name", "s1", "hull-test/busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exec = |args: &[&str]| {
        let mut c = docker();
        c.arg("exec").args(args);
        run(c)
    };
    let out = exec(&["s1", "sh", "-c", "echo hi; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    let out = exec(&["s1", "sh", "-c", "ps -o pid,comm | grep -c sleep"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "1",
        "exec sees the container's processes"
    );
    for verb in ["pause", "unpause"] {
        let mut c = docker();
        c.args([verb, "s1"]);
        ok(c, verb);
    }
    let mut c = docker();
    c.args(["inspect", "-f", "{{.State.Status}}", "s1"]);
    assert_eq!(ok(c, "inspect").trim(), "running");
    let mut c = docker();
    c.args(["stop", "-t", "2", "s1"]);
    ok(c, "docker stop");
    let mut c = docker();
    c.args(["inspect", "-f", "{{.State.ExitCode}}", "s1"]);
    assert_eq!(
        ok(c, "inspect").trim(),
        "137",
        "sleep as pid 1 ignores SIGTERM: killed"
    );
    let mut c = docker();
    c.args(["rm", "s1"]);
    ok(c, "docker rm");

    // rm -f of a running container.
    let out = drun(&["-d", "--name", "s2", "hull-test/busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut c = docker();
    c.args(["rm", "-f", "s2"]);
    ok(c, "docker rm -f");
    no_vmm_left();
    drop(dockerd);
    drop(containerd);
}
