//! Bad input to the `hull-vmm` binary fails before any VM exists, with exit status 1 and one
//! line naming the problem. These run on the plain host: none of them reaches KVM.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("hull-vmm-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn file(&self, name: &str, contents: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file that passes the kernel header check (an x86-64 ELF header, nothing else).
fn fake_kernel(d: &Dir) -> String {
    let mut v = vec![0u8; 64];
    v[0..4].copy_from_slice(b"\x7fELF");
    v[4] = 2;
    v[5] = 1;
    v[18] = 62;
    d.file("vmlinux", &v)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(args)
        .env("HULL_LOG", "off")
        .output()
        .unwrap()
}

fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr:?}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_or_bad_kernel() {
    let d = Dir::new("kernel");
    fails_with(&[], "no kernel: pass --kernel or --config");
    let nope = d.path("nope");
    fails_with(&["--kernel", &nope], &format!("kernel {nope}: "));
    fails_with(&["--kernel", &d.path("nope")], "No such file or directory");
    fails_with(
        &["--kernel", d.0.to_str().unwrap()],
        "is not a regular file",
    );
    let txt = d.file("readme.txt", b"definitely not a kernel\n");
    fails_with(&["--kernel", &txt], "is not a kernel image");
}

#[test]
fn absurd_numbers() {
    let d = Dir::new("numbers");
    let k = fake_kernel(&d);
    fails_with(
        &["--kernel", &k, "--vcpus", "0"],
        "vcpus must be between 1 and 32, got 0",
    );
    fails_with(&["--kernel", &k, "--vcpus", "1000"], "got 1000");
    fails_with(&["--kernel", &k, "--vcpus=-1"], "invalid value '-1'");
    fails_with(
        &["--kernel", &k, "--memory-mib", "1"],
        "memory_mib must be between 64 and 65536, got 1",
    );
    fails_with(
        &["--kernel", &k, "--memory-mib", "99999999"],
        "got 99999999",
    );
    fails_with(
        &[
            "--kernel",
            &k,
            "--vsock-uds",
            &d.path("v.sock"),
            "--vsock-cid",
            "2",
        ],
        "guest_cid",
    );
    fails_with(
        &["--kernel", &k, "--vsock-cid", "5"],
        "--vsock-cid needs --vsock-uds",
    );
    fails_with(&["--kernel", &k, "--serial", ""], "serial must be");
}

#[test]
fn initrd_problems() {
    let d = Dir::new("initrd");
    let k = fake_kernel(&d);
    fails_with(&["--kernel", &k, "--initrd", &d.path("none.img")], "initrd");
    let empty = d.file("empty.img", b"");
    fails_with(&["--kernel", &k, "--initrd", &empty], "is empty");
}

#[test]
fn sockets_in_use_or_unusable() {
    let d = Dir::new("sockets");
    let k = fake_kernel(&d);
    let live = d.path("live.sock");
    let _l = UnixListener::bind(&live).unwrap();
    fails_with(&["--kernel", &k, "--api-sock", &live], "already in use");
    fails_with(&["--kernel", &k, "--vsock-uds", &live], "already in use");
    let stale = d.file("stale.sock", b"");
    fails_with(&["--kernel", &k, "--api-sock", &stale], "already exists");
    fails_with(
        &["--kernel", &k, "--api-sock", &d.path("no/dir.sock")],
        "does not exist",
    );
    // Nothing was created or removed.
    assert!(std::path::Path::new(&live).exists());
    assert!(std::path::Path::new(&stale).exists());
}

#[test]
fn config_file_problems() {
    let d = Dir::new("config");
    let k = fake_kernel(&d);
    fails_with(
        &["--config", &d.path("missing.json")],
        "cannot read config file",
    );
    let bad = d.file("bad.json", br#"{"kernel": "/k", "vcpu": 2}"#);
    fails_with(&["--config", &bad], "unknown field `vcpu`");
    let not_json = d.file("x.json", b"kernel=/k");
    fails_with(&["--config", &not_json], "config file");
    // Flags override the file: the file's bad vcpus is replaced, the flag's bad one reported.
    let ok = d.file(
        "ok.json",
        format!(r#"{{"kernel": "{k}", "vcpus": 0}}"#).as_bytes(),
    );
    fails_with(&["--config", &ok], "vcpus must be between 1 and 32, got 0");
    fails_with(&["--config", &ok, "--vcpus", "33"], "got 33");
}
