//! The launcher against fake `hull-vmm` scripts: no VM needed.

use std::os::unix::fs::PermissionsExt;

use super::*;
use hull_vmm_api::RunState;

/// A scratch directory with fake hull-vmm scripts in it.
struct Tmp(tempfile::TempDir);

impl Tmp {
    fn new(name: &str) -> Tmp {
        Tmp(tempfile::Builder::new()
            .prefix(&format!("hull-rt-vmm-{name}"))
            .tempdir()
            .unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// An executable script standing in for hull-vmm.
    fn fake(&self, body: &str) -> PathBuf {
        let p = self.path().join("fake-vmm");
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

fn config(t: &Tmp) -> VmConfig {
    let mut c = VmConfig::new("/boot/vmlinux-for-test".into());
    c.api_socket = Some(t.path().join("vm/api.sock"));
    c
}

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn writes_the_config_captures_console_and_log_and_reads_the_exit_status() {
    let t = Tmp::new("exit");
    // The fake checks it got --config with our file, then behaves like a rebooting guest.
    let bin = t.fake(
        "[ \"$1\" = --config ] || exit 99\ngrep -q vmlinux-for-test \"$2\" || exit 98\n\
         printf 'guest says hi\\r\\n'\necho 'hull-vmm: guest rebooted' >&2\nexit ${CODE:-0}\n",
    );
    let dir = t.path().join("vm");
    let mut vm = VmmProcess::launch(&bin, &config(&t), &dir).unwrap();
    let e = vm.wait_timeout(LIMIT).unwrap().expect("the fake exits");
    assert_eq!(e.exit, VmmExit::Stopped, "log: {}", vm.log());
    assert_eq!(vm.console(), "guest says hi\n");
    assert_eq!(vm.log(), "hull-vmm: guest rebooted\n");
    let written: VmConfig =
        serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(written, config(&t));

    for (code, want) in [
        ("1", VmmExit::Config),
        ("2", VmmExit::GuestPanic),
        ("3", VmmExit::TripleFault),
        ("4", VmmExit::Internal),
        ("143", VmmExit::Signal(15)),
        ("77", VmmExit::Unknown(77)),
    ] {
        std::env::set_var("CODE", code);
        let mut vm = VmmProcess::launch(&bin, &config(&t), &dir).unwrap();
        let got = vm.wait_timeout(LIMIT).unwrap().unwrap().exit;
        assert_eq!(got, want, "exit {code}");
    }
    std::env::remove_var("CODE");
}

#[test]
fn a_dropped_handle_kills_and_reaps_and_a_detached_one_does_not() {
    let t = Tmp::new("drop");
    let bin = t.fake("exec sleep 1000\n");
    let vm = VmmProcess::launch(&bin, &config(&t), &t.path().join("vm")).unwrap();
    let pid = Pid::from_raw(vm.pid() as i32);
    // Its own process group.
    assert_eq!(nix::unistd::getpgid(Some(pid)).unwrap(), pid);
    drop(vm);
    assert_eq!(
        nix::sys::signal::kill(pid, None),
        Err(nix::errno::Errno::ESRCH),
        "killed and reaped"
    );

    let vm = VmmProcess::launch(&bin, &config(&t), &t.path().join("vm")).unwrap();
    let pid = Pid::from_raw(vm.detach() as i32);
    assert!(nix::sys::signal::kill(pid, None).is_ok(), "still running");
    nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(pid, None).unwrap();

    let mut vm = VmmProcess::launch(&bin, &config(&t), &t.path().join("vm")).unwrap();
    vm.signal(Signal::SIGKILL).unwrap();
    let e = vm.wait_timeout(LIMIT).unwrap().unwrap();
    assert_eq!(e.exit, VmmExit::Killed(9));
    assert!(
        vm.wait_timeout(Duration::ZERO).unwrap().is_some(),
        "stays known"
    );
}

#[test]
fn api_requests_responses_and_refusals() {
    let t = Tmp::new("api");
    // A fake API server: answers four connections, one line each, then exits.
    let server = t.path().join("fake-api.py");
    std::fs::write(
        &server,
        r#"import json, socket, sys
sock = json.load(open(sys.argv[2]))["api_socket"]
s = socket.socket(socket.AF_UNIX)
s.bind(sock)
s.listen(4)
for reply in [b'{"ok":true,"state":"paused"}\n', b'{"ok":false,"error":"nope"}\n', b"garbage\n", b"no newline"]:
    c, _ = s.accept()
    sys.stderr.write(c.makefile().readline())
    c.sendall(reply)
    c.close()
"#,
    )
    .unwrap();
    let bin = t.fake(&format!("exec python3 {} \"$@\"\n", server.display()));
    let mut vm = VmmProcess::launch(&bin, &config(&t), &t.path().join("vm")).unwrap();
    let sock = t.path().join("vm/api.sock");
    let deadline = Instant::now() + LIMIT;
    while !sock.exists() {
        assert!(vm.try_wait().unwrap().is_none(), "fake died: {}", vm.log());
        assert!(Instant::now() < deadline, "the fake never bound its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = vm.api(&ApiRequest::Pause {}).unwrap();
    assert_eq!(r.state, Some(RunState::Paused));
    let e = vm.api(&ApiRequest::Resume {}).unwrap_err();
    assert!(matches!(&e, VmmError::Refused(m) if m == "nope"), "{e}");
    let e = vm.api(&ApiRequest::Stats {}).unwrap_err();
    assert!(matches!(e, VmmError::BadResponse { .. }), "{e}");
    let e = vm
        .api(&ApiRequest::Shutdown {
            timeout_ms: Some(5),
        })
        .unwrap_err();
    assert!(e.to_string().contains("no complete line"), "{e}");
    vm.wait_timeout(LIMIT).unwrap().expect("the fake exits");
    assert_eq!(
        vm.log(),
        "{\"action\":\"pause\"}\n{\"action\":\"resume\"}\n{\"action\":\"stats\"}\n\
         {\"action\":\"shutdown\",\"timeout_ms\":5}\n"
    );
}

#[test]
fn launch_errors_name_what_is_wrong() {
    let t = Tmp::new("errors");
    let missing = t.path().join("no-such-hull-vmm");
    let e = VmmProcess::launch(&missing, &config(&t), &t.path().join("vm"))
        .err()
        .expect("a missing binary is an error");
    assert!(e.to_string().contains("no-such-hull-vmm"), "{e}");
    let file = t.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let e = VmmProcess::launch(&t.fake("exit 0\n"), &config(&t), &file.join("vm"))
        .err()
        .expect("a directory under a file is an error");
    assert!(e.to_string().contains("plain-file"), "{e}");
    let mut c = config(&t);
    c.api_socket = None;
    let vm = VmmProcess::launch(&t.fake("exit 0\n"), &c, &t.path().join("vm")).unwrap();
    assert!(matches!(
        vm.api(&ApiRequest::Stats {}),
        Err(VmmError::NoApiSocket)
    ));
}

#[test]
fn the_console_is_the_serial_file_when_the_config_names_one() {
    let t = Tmp::new("serial");
    let serial = t.path().join("guest-console");
    std::fs::write(&serial, "from the serial file\r\n").unwrap();
    let mut c = config(&t);
    c.serial = hull_vmm_api::SerialConfig::File(serial);
    // hull-vmm's stdout is not the console then: what the fake prints there is not shown.
    let mut vm =
        VmmProcess::launch(&t.fake("echo not the console\n"), &c, &t.path().join("vm")).unwrap();
    vm.wait_timeout(LIMIT).unwrap().expect("the fake exits");
    assert_eq!(vm.console(), "from the serial file\n");
}

#[test]
fn what_the_vm_leaves_on_disk_is_its_owners_alone() {
    let t = Tmp::new("private");
    let bin = t.fake("exit 0\n");
    let dir = t.path().join("vm");
    let mut vm = VmmProcess::launch(&bin, &config(&t), &dir).unwrap();
    vm.wait_timeout(LIMIT).unwrap().expect("the fake exits");
    for (f, mode) in [
        (CONFIG_FILE, 0o600),
        (LOG_FILE, 0o600),
        (CONSOLE_FILE, 0o600),
    ] {
        let m = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}: {m:o}");
    }
}
