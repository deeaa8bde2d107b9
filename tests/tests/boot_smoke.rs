//! The guest kernel (`make kernel`) boots under KVM to a tiny init that reports back, with QEMU
//! `-machine microvm` as the VMM. QEMU microvm is also the reference peer for boot benchmarks.

use std::process::Command;
use std::time::Duration;

use hull_tests::{kernel, require_kvm, Initramfs, Proc, TempDir};

/// The kernel release `make kernel` built, from the config header it left beside vmlinux.
fn built_kernel_release() -> String {
    let config = std::fs::read_to_string(kernel().with_file_name("vmlinux.config"))
        .expect("build/vmlinux.config is written by make kernel");
    let header = config
        .lines()
        .find(|l| l.starts_with("# Linux/x86 "))
        .expect("kernel config header");
    header.split_whitespace().nth(2).unwrap().to_string()
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:x}{:x}", t.as_nanos(), std::process::id())
}

fn boot_microvm(vcpus: u32) -> (String, String) {
    require_kvm();
    let dir = TempDir::new("hull-smoke");
    let initrd = dir.path().join("initrd.cpio");
    Initramfs::new()
        .init_script(
            r#"
mount -t proc proc /proc
n=$(sed -n 's/.*hull.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "SMOKE nonce=$n release=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) $(dmesg | grep -o 'Hypervisor detected: KVM')"
reboot -f
"#,
        )
        .build(&initrd);
    let nonce = nonce();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on",
        "-enable-kvm",
        "-cpu",
        "host",
        "-smp",
        &vcpus.to_string(),
        "-m",
        "256",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
    ])
    .arg(kernel())
    .arg("-initrd")
    .arg(&initrd)
    .arg("-append")
    // reboot=t: the guest's reboot is a triple fault, which -no-reboot turns into QEMU's exit.
    .arg(format!(
        "console=ttyS0 reboot=t panic=-1 hull.nonce={nonce}"
    ));
    let f = Proc::spawn(&mut cmd).wait_timeout(Duration::from_secs(180));
    assert!(
        f.status.success(),
        "QEMU microvm failed: {:?}\n{}\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    let line = f
        .stdout
        .lines()
        .find(|l| l.starts_with("SMOKE "))
        .unwrap_or_else(|| panic!("the guest never reported back; console:\n{}", f.stdout))
        .trim()
        .to_string();
    (line, nonce)
}

#[test]
fn guest_kernel_boots_under_kvm_in_qemu_microvm() {
    let (line, nonce) = boot_microvm(1);
    let want = format!(
        "SMOKE nonce={nonce} release={} cpus=1 Hypervisor detected: KVM",
        built_kernel_release()
    );
    assert_eq!(line, want);
}
