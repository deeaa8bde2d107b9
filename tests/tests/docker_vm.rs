//! `docker --runtime hull`: docker 20.10 (Debian's docker.io) on a containerd of the test's
//! own, with hull registered as a runc-compatible runtime. docker drives `hull` through
//! containerd-shim-runc-v2, exactly as it drives runc. A second runtime, `hull-userspace`, is
//! the same hull run by a wrapper script with a config of its own (`net_backend =
//! "userspace"`), for bulk transfers on docker's bridge on each virtio-net backend.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hull_tests::daemons::{image, Containerd, Dockerd};
use hull_tests::net::{
    assert_net_backend, check_transfers, host_links, http_get, nsfs_mounts, write_config_wrapper,
    write_userspace_config,
};
use hull_tests::procs::{live, vmm_pids};
use hull_tests::terminal::interactive_shell;
use hull_tests::vm::mounts_below;
use hull_tests::{bin, require_kvm, TempDir};
use nix::sys::signal::Signal;

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

/// No process whose command line contains `what` runs any more.
fn none_running(what: &str) {
    let ps = text(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        !ps.lines().any(|l| l.contains(what)),
        "a {what} still runs:\n{ps}"
    );
}

/// No hull-vmm runs any more (every container's VM is gone).
fn no_vmm_left() {
    none_running("hull-vmm");
}

/// docker's human-readable size (`764KiB`, `52.3MiB`, `1.2GiB`) in MiB.
fn mib(s: &str) -> f64 {
    let units = [
        ("KiB", 1.0 / 1024.0),
        ("MiB", 1.0),
        ("GiB", 1024.0),
        ("B", 1.0 / 1048576.0),
    ];
    for (u, f) in units {
        if let Some(n) = s.strip_suffix(u) {
            return n.parse::<f64>().unwrap_or_else(|_| panic!("a size: {s:?}")) * f;
        }
    }
    panic!("a size: {s:?}")
}

/// Longest the test waits for a state (the emulated host is slow).
const LIMIT: Duration = Duration::from_secs(300);

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kill(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// The docker runtimes that are hull: `hull` (the test's config: virtio-net on the host's
/// vhost-net, which `net_backend = "auto"` picks here) and `hull-userspace` (the same plus
/// `net_backend = "userspace"`: hull-vmm's own device), each with whether its VMs' NICs are on
/// vhost-net.
const HULL_RUNTIMES: [(&str, bool); 2] = [("hull", true), ("hull-userspace", false)];

/// The runtime roots below docker's exec root (`<exec-root>/runtime-NAME/moby`, where hull's
/// sandbox directories are: docker 20.10 gave each runtime its own, later ones give every
/// runc-compatible runtime `runtime-runc`) hold no container any more, and no mount is left
/// below them.
fn no_state_left(exec_root: &Path) {
    let roots: Vec<_> = std::fs::read_dir(exec_root)
        .unwrap_or_else(|e| panic!("docker's exec root {}: {e}", exec_root.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("runtime-"))
        .map(|e| e.path().join("moby"))
        .collect();
    for root in roots {
        let left: Vec<_> = match std::fs::read_dir(&root) {
            Ok(d) => d.flatten().map(|e| e.file_name()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("{}: {e}", root.display()),
        };
        assert!(
            left.is_empty(),
            "hull state left in {}: {left:?}",
            root.display()
        );
    }
    let mounts: Vec<_> = mounts_below(exec_root)
        .into_iter()
        .filter(|m| m.contains("/runtime-"))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

/// docker's container options, as with runc, in one container: volumes both ways and
/// read-only, --read-only, --user, --cap-drop, -e, -w, --hostname.
fn options(drun: &dyn Fn(&[&str]) -> Output, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let host = dir.join("vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(host.join("from-host"), "host data\n").unwrap();
    let vol = format!("{}:/data", host.display());
    let vol_ro = format!("{}:/ro:ro", host.display());
    let script = "cat /data/from-host; echo guest data > /data/from-guest; \
                  touch /ro/x 2>&1 | grep -q 'Read-only file system' && echo ro-refused; \
                  touch /x 2>&1 | grep -q 'Read-only file system' && echo root-ro; \
                  id -u; id -g; grep CapEff /proc/self/status; echo $HULL_X; pwd; hostname";
    let out = drun(&[
        "--rm",
        "-v",
        &vol,
        "-v",
        &vol_ro,
        "--read-only",
        "--user",
        "1000:1000",
        "--cap-drop",
        "ALL",
        "-e",
        "HULL_X=42",
        "-w",
        "/tmp",
        "--hostname",
        "hullbox",
        "hull-test/busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "host data\nro-refused\nroot-ro\n1000\n1000\nCapEff:\t0000000000000000\n42\n/tmp\nhullbox\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("from-guest")).unwrap(),
        "guest data\n"
    );
    assert!(!host.join("x").exists(), "written through a :ro volume");
}

/// docker's bridge network, as with runc: the guest has the address, MAC, default route and
/// DNS docker gave the container; `-p 18080:80` reaches a server in the guest from the host;
/// the guest reaches the bridge and another container; removing the containers leaves no veth,
/// no namespace mount and no VM.
fn bridge_network(dockerd: &Dockerd, dir: &Path) {
    let docker = || dockerd.docker();
    let before = (host_links(), nsfs_mounts());
    let server = image(dir, "server");
    let mut c = docker();
    c.arg("load").arg("-i").arg(&server);
    ok(c, "docker load (server)");
    let mut c = docker();
    c.args([
        "run",
        "-d",
        "--runtime",
        "hull",
        "--name",
        "web",
        "-p",
        "18080:80",
        "hull-test/server",
    ]);
    ok(c, "docker run -p 18080:80");
    let mut c = docker();
    c.args([
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.IPPrefixLen}} \
         {{.NetworkSettings.Gateway}} {{.NetworkSettings.MacAddress}}",
        "web",
    ]);
    let settings = ok(c, "docker inspect web");
    let f: Vec<&str> = settings.split_whitespace().collect();
    let [ip, prefix, gateway, mac] = f[..] else {
        panic!("docker's network settings of web: {settings:?}");
    };
    let exec = |args: &[&str]| {
        let mut c = docker();
        c.arg("exec").arg("web").args(args);
        ok(c, &format!("docker exec web {args:?}"))
    };
    // The guest, not the host: its own kernel, and docker's address on its eth0.
    assert_ne!(exec(&["uname", "-r"]).trim(), host_release());
    let addr = exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.contains(&format!("inet {ip}/{prefix} ")),
        "docker gave web {ip}/{prefix}; its eth0 has: {addr}"
    );
    assert_eq!(exec(&["cat", "/sys/class/net/eth0/address"]).trim(), mac);
    let routes = exec(&["ip", "route"]);
    assert!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "routes in the guest: {routes}"
    );
    // DNS: what runc's container on the same network gets.
    let mut c = docker();
    c.args([
        "run",
        "--rm",
        "hull-test/busybox",
        "cat",
        "/etc/resolv.conf",
    ]);
    let runc_dns = ok(c, "docker run (runc) cat /etc/resolv.conf");
    assert_eq!(exec(&["cat", "/etc/resolv.conf"]), runc_dns, "resolv.conf");
    // -p: the host reaches httpd in the guest through docker-proxy.
    let start = Instant::now();
    let mut got = http_get("127.0.0.1", 18080);
    while !got.as_ref().is_ok_and(|b| b.contains("hello from hull")) {
        assert!(
            start.elapsed() < LIMIT,
            "the published port 18080 never answered: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        got = http_get("127.0.0.1", 18080);
    }
    // The guest reaches the bridge, and another hull container reaches web at its address.
    exec(&["ping", "-c", "1", "-W", "10", gateway]);
    let mut c = docker();
    c.args([
        "run",
        "--rm",
        "--runtime",
        "hull",
        "hull-test/busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{ip}/"),
    ]);
    assert_eq!(
        ok(c, "wget web from another container").trim(),
        "hello from hull"
    );
    let mut c = docker();
    c.args(["rm", "-f", "web"]);
    ok(c, "docker rm -f web");
    wait_until("web's veth and namespaces gone", || {
        (host_links(), nsfs_mounts()) == before
    });
}

/// The hull-vmm of docker container `id`: a hull-vmm with an argument (its config file) below
/// docker's exec root `exec_root` in a directory named by the container's id (hull's sandbox
/// directory `<--root>/<id>`).
fn container_vmm(exec_root: &Path, id: &str) -> Vec<i32> {
    live()
        .into_iter()
        .filter(|p| {
            p.args.first().is_some_and(|a| a.ends_with("hull-vmm"))
                && p.args.iter().any(|a| {
                    let a = Path::new(a);
                    a.starts_with(exec_root) && a.components().any(|c| c.as_os_str() == id)
                })
        })
        .map(|p| p.pid)
        .collect()
}

/// Bulk transfers on docker's bridge on each virtio-net backend: for `hull` (vhost-net) and
/// `hull-userspace` (hull-vmm's own device), one container on the default bridge whose VM is
/// shown to be on that backend (the kernel's `vhost-<pid>` worker of its hull-vmm runs, or does
/// not), then 16 MiB from the host (a server of the test's on the bridge's gateway address) to
/// the container and 16 MiB back, each SHA-256-checked by both ends, from the container's
/// address. Removing the containers leaves no VM, veth, namespace mount or state.
fn bridge_transfers_on_each_backend(dockerd: &Dockerd) {
    let docker = || dockerd.docker();
    let before = (host_links(), nsfs_mounts());
    for (runtime, vhost) in HULL_RUNTIMES {
        let name = format!("xfer-{runtime}");
        let what = format!("docker --runtime {runtime} container {name}");
        let mut c = docker();
        c.args([
            "run",
            "-d",
            "--runtime",
            runtime,
            "--name",
            &name,
            "hull-test/busybox",
            "sleep",
            "1000",
        ]);
        let id = ok(c, &format!("docker run -d --runtime {runtime}"))
            .trim()
            .to_string();
        assert_eq!(id.len(), 64, "{what}: a container id: {id:?}");
        let mut c = docker();
        c.args([
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.Gateway}}",
            &name,
        ]);
        let settings = ok(c, &format!("docker inspect {name}"));
        let [ip, gateway] = settings.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("{what}: docker's network settings: {settings:?}");
        };
        let vmm = container_vmm(&dockerd.exec_root, &id);
        assert_eq!(
            vmm.len(),
            1,
            "{what}: one hull-vmm with its files in a directory {id} below {}; hull-vmm \
             processes: {:?}",
            dockerd.exec_root.display(),
            live()
                .into_iter()
                .filter(|p| p.args.first().is_some_and(|a| a.ends_with("hull-vmm")))
                .map(|p| (p.pid, p.args))
                .collect::<Vec<_>>()
        );
        eprintln!(
            "{what}: hull-vmm {} {:?}",
            vmm[0],
            std::fs::read_to_string(format!("/proc/{}/cmdline", vmm[0])).unwrap_or_default()
        );
        assert_net_backend(vmm[0], vhost, &what);
        check_transfers(gateway, ip, &what, &|script| {
            let mut c = docker();
            c.args(["exec", &name, "sh", "-c", script]);
            ok(c, &format!("{what}: sh -c {script:?}"))
        });
        // Still the same VM on the same backend after the transfers.
        assert_eq!(
            container_vmm(&dockerd.exec_root, &id),
            vmm,
            "{what}: its hull-vmm"
        );
        assert_net_backend(vmm[0], vhost, &what);
        let mut c = docker();
        c.args(["rm", "-f", &name]);
        ok(c, &format!("docker rm -f {name}"));
        wait_until(&format!("{what}'s VM gone"), || {
            vmm_pids(&dockerd.exec_root).is_empty()
        });
    }
    no_state_left(&dockerd.exec_root);
    wait_until("the transfer containers' veths and namespaces gone", || {
        (host_links(), nsfs_mounts()) == before
    });
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
    // `hull-userspace`: hull with the test's config plus `net_backend = "userspace"`, as
    // tests/bench/lib-docker.sh registers it (docker names a runtime by one binary: a wrapper
    // that sets HULL_CONFIG over what containerd's environment has).
    let userspace_config = dir.path().join("hull-userspace.toml");
    write_userspace_config(&config, &userspace_config);
    let hull_userspace = dir.path().join("hull-userspace");
    write_config_wrapper(&hull_userspace, &userspace_config, &hull);
    let dockerd = Dockerd::start(
        &dir.path().join("dkd"),
        &containerd,
        &[("hull", &hull), ("hull-userspace", &hull_userspace)],
    );
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
        if code == 127 {
            assert!(
                text(&out.stderr).contains("executable file not found"),
                "docker shows hull's error: {}",
                text(&out.stderr)
            );
        }
    }
    // --device: the node is made in the guest with the host node's numbers, which name the
    // guest kernel's device (its FUSE is built in). docker reads the numbers from the host's
    // node, which the emulated host's devtmpfs has only once fuse.ko is loaded.
    if !Path::new("/dev/fuse").exists() {
        let st = Command::new("mknod")
            .args(["-m", "0666", "/dev/fuse", "c", "10", "229"])
            .status()
            .unwrap();
        assert!(st.success(), "mknod /dev/fuse");
    }
    let out = drun(&[
        "--rm",
        "--device",
        "/dev/fuse",
        "hull-test/busybox",
        "sh",
        "-c",
        "stat -c '%F %t:%T' /dev/fuse && [ -c /dev/fuse ] && (exec 3<>/dev/fuse) && echo opened",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "character special file a:e5\nopened\n");
    // --privileged: docker lists every host device in linux.devices; the guest makes them all.
    let out = drun(&["--rm", "--privileged", "hull-test/busybox", "true"]);
    assert!(out.status.success(), "--privileged: {}", text(&out.stderr));

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
    // docker's default seccomp profile and capabilities hold for exec as for the container's
    // init (its PID 1, seen from the exec'd process).
    let fields = "^(Seccomp|NoNewPrivs|CapPrm|CapEff|CapBnd):";
    let out = exec(&["s1", "grep", "-E", fields, "/proc/self/status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exec_view = text(&out.stdout);
    let out = exec(&["s1", "grep", "-E", fields, "/proc/1/status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let init_view = text(&out.stdout);
    assert!(
        init_view.contains("Seccomp:\t2\n"),
        "docker's default profile: {init_view}"
    );
    assert_eq!(
        exec_view, init_view,
        "docker exec is confined as the container"
    );
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

    // -m 64m: the limit the workload meets inside the guest: an allocation of 100 MiB is
    // killed there; the host goes on.
    let out = drun(&[
        "--rm",
        "-m",
        "64m",
        "hull-test/busybox",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max; echo start; x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived",
    ]);
    assert!(
        text(&out.stdout).starts_with("67108864\nstart\n")
            && !text(&out.stdout).contains("survived"),
        "the allocation was not stopped: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Options: volumes both ways and read-only, --read-only, --user, --cap-drop, -e, -w,
    // --hostname.
    options(&drun, dir.path());

    // docker's bridge network and -p.
    bridge_network(&dockerd, dir.path());
    // 16 MiB each way on the bridge, on vhost-net and on hull-vmm's own device.
    bridge_transfers_on_each_backend(&dockerd);

    // A container that handles signals: logs, kill -s USR1, stats, update, exec -it, stop (143).
    let script = "trap 'echo got-term; exit 143' TERM; trap 'echo got-usr1' USR1; echo started; \
                  while :; do sleep 1 & wait $!; done";
    let out = drun(&[
        "-d",
        "--name",
        "s3",
        "-m",
        "64m",
        "hull-test/busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logs = || {
        let mut c = docker();
        c.args(["logs", "s3"]);
        ok(c, "docker logs")
    };
    wait_until("s3's log says started", || logs().contains("started"));
    let mut c = docker();
    c.args(["kill", "-s", "USR1", "s3"]);
    ok(c, "docker kill -s USR1");
    wait_until("s3 got SIGUSR1", || logs().contains("got-usr1"));
    let mut c = docker();
    c.args([
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}|{{.PIDs}}",
        "s3",
    ]);
    let stats = ok(c, "docker stats");
    let (mem, pids) = stats.trim().split_once('|').expect("MemUsage|PIDs");
    // The host's figures for the container are its whole VM's (hull-vmm starts in the cgroup
    // docker asked for): at least the guest memory a booted guest has touched. A VM restored
    // from a template is charged for what it made its own (hull-vmm's memory, the guest pages
    // it wrote); the template's pages it only reads are page cache, charged to the cgroup that
    // first read them (docs/performance.md "Start paths").
    let usage = mem.split_once(" / ").expect("usage / limit").0;
    let floor = match hull_tests::vm::test_start() {
        hull_runtime::config::StartPath::Boot => 16.0,
        hull_runtime::config::StartPath::Snapshot => 4.0,
    };
    assert!(
        mib(usage) >= floor,
        "docker stats shows {usage} for a whole VM: {stats}"
    );
    assert!(pids.parse::<u32>().is_ok_and(|n| n >= 2), "PIDs in {stats}");
    let mut c = docker();
    c.args(["update", "--memory", "96m", "--memory-swap", "96m", "s3"]);
    ok(c, "docker update");
    let out = exec(&["s3", "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(
        text(&out.stdout).trim(),
        (96u64 << 20).to_string(),
        "after docker update"
    );
    let sock = format!("unix://{}", dockerd.socket.display());
    interactive_shell(
        dir.path(),
        &["docker", "-H", &sock, "exec", "-it", "s3", "sh"],
        LIMIT,
    );
    let mut c = docker();
    c.args(["stop", "-t", "30", "s3"]);
    ok(c, "docker stop");
    let mut c = docker();
    c.args(["inspect", "-f", "{{.State.ExitCode}}", "s3"]);
    assert_eq!(ok(c, "inspect").trim(), "143", "s3 handled SIGTERM");
    assert!(logs().contains("got-term"));
    let mut c = docker();
    c.args(["rm", "s3"]);
    ok(c, "docker rm");

    // docker run -it: a shell on a real terminal.
    interactive_shell(
        dir.path(),
        &[
            "docker",
            "-H",
            &sock,
            "run",
            "-it",
            "--rm",
            "--runtime",
            "hull",
            "hull-test/busybox",
            "sh",
        ],
        LIMIT,
    );

    // Faults: the VMM killed: docker sees the container exit 137, and rm cleans up.
    let out = drun(&["-d", "--name", "f1", "hull-test/busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vmm = vmm_pids(&dockerd.exec_root);
    assert_eq!(vmm.len(), 1, "f1's VM");
    kill(vmm[0], Signal::SIGKILL);
    let mut c = docker();
    c.args(["wait", "f1"]);
    assert_eq!(
        ok(c, "docker wait").trim(),
        "137",
        "f1 after its VMM was killed"
    );
    let mut c = docker();
    c.args(["rm", "f1"]);
    ok(c, "docker rm");
    // A VM that hangs (its VMM stopped): rm -f still ends, and leaves no VM.
    let out = drun(&["-d", "--name", "f2", "hull-test/busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vmm = vmm_pids(&dockerd.exec_root);
    assert_eq!(vmm.len(), 1, "f2's VM");
    kill(vmm[0], Signal::SIGSTOP);
    let mut c = docker();
    c.args(["rm", "-f", "f2"]);
    ok(c, "docker rm -f of a hung VM");
    wait_until("f2's VM gone", || vmm_pids(&dockerd.exec_root).is_empty());
    no_state_left(&dockerd.exec_root);

    // rm -f of a running container.
    let out = drun(&["-d", "--name", "s2", "hull-test/busybox", "sleep", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut c = docker();
    c.args(["rm", "-f", "s2"]);
    ok(c, "docker rm -f");
    no_vmm_left();
    no_state_left(&dockerd.exec_root);

    // `docker run --rm` in a row (on the bridge network) leave no VM, no monitor, no mount,
    // no state directory, no namespace (with its taps) and no veth: `HULL_DOCKER_RUNS` of them
    // (default 5 in `make test`; `make soak` runs 50).
    let runs: usize = std::env::var("HULL_DOCKER_RUNS")
        .ok()
        .map(|v| v.parse().expect("HULL_DOCKER_RUNS is a number"))
        .unwrap_or(5);
    let before = (host_links(), nsfs_mounts());
    for i in 0..runs {
        let start = Instant::now();
        let out = drun(&["--rm", "hull-test/busybox", "true"]);
        assert!(out.status.success(), "run {i}: {}", text(&out.stderr));
        eprintln!("docker run --rm #{i}: {:?}", start.elapsed());
    }
    no_vmm_left();
    no_state_left(&dockerd.exec_root);
    none_running("hull __monitor");
    wait_until("the containers' veths and namespaces gone", || {
        (host_links(), nsfs_mounts()) == before
    });
    drop(dockerd);
    drop(containerd);
}
