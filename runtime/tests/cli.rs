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

#[test]
fn container_commands_check_runc_flags_then_say_they_are_not_implemented() {
    let t = tmp("notyet");
    for args in [
        &["create", "--bundle", ".", "--pid-file", "p", "c1"][..],
        &["--root", "/tmp/r", "--log-format", "json", "start", "c1"],
        &["run", "-d", "c1"],
        &["kill", "--all", "c1", "KILL"],
        &["delete", "--force", "c1"],
        &["state", "c1"],
        &["exec", "--tty", "c1", "sh"],
        &["list"],
    ] {
        let out = hull(args, t.path(), &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = text(&out.stderr);
        assert!(e.contains("not implemented yet"), "{args:?}: {e}");
    }
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
