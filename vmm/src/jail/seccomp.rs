//! A seccomp allowlist per thread kind, built with `seccompiler` (Firecracker's compiler) and
//! installed by each thread on itself (`super::enter_thread`). A system call outside the
//! allowlist raises SIGSYS; the handler writes the call's number to stderr (hull-vmm's log)
//! and ends the process with [`EXIT_SECCOMP`] (exit status 5), which the runtime reports as
//! such. `HULL_VMM_SECCOMP=log` (debugging only) logs such calls to the kernel's audit log and
//! lets them run instead: how the lists below were checked against a whole VM test run.
//!
//! The event loop opens no file (a virtio-fs activation's FUSE server is made by a worker).
//! Argument checks where a call is more than the thread needs:
//! - the event loop's `unlinkat` only in its own socket directories (by directory fd);
//! - the event loop's `socket` only `AF_UNIX` (guest-initiated vsock connections);
//! - `ioctl` only with the requests a thread kind makes once the VM runs: `KVM_RUN` (vCPUs
//!   only); `TUNSETOFFLOAD` (virtio-net activation and reset, made on the vCPU thread that
//!   wrote the device's status); on that vCPU thread too, a vhost-net device's activation and
//!   reset, in a VM with a NIC on vhost-net ([`VHOST_NET_IOCTLS`]: features, rings, kick and
//!   call eventfds, the tap as backend; not the memory table or the owner, set on the main
//!   thread once the jail is entered, before any filter); `FIONBIO` and `FIONREAD` (the
//!   API's and vsock's sockets). No
//!   other KVM request (memory slots, new vCPUs, device state), no other tap request (attaching
//!   to another interface), no terminal request. The virtio-fs workers make none (the guard
//!   answers the guest's FUSE ioctl with ENOSYS).

use std::collections::BTreeMap;

use hull_vmm_api::exit::EXIT_SECCOMP;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{JailError, ThreadKind};

/// Every thread: memory, futexes, signals, time, its own exit, epoll, and the usual reads of
/// what it already holds.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_sched_yield,
    libc::SYS_restart_syscall,
    libc::SYS_tgkill,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_getrandom,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The event loop: the API socket, vsock's Unix sockets, the tap, eventfds and timers.
const VMM: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_kill,
];

/// A vCPU: KVM_RUN and its exits (MMIO/PIO to the devices, the serial console file, which is
/// read back when it is cut to its newest half, irqfds).
const VCPU: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_pwrite64,
];

/// A virtio-fs worker: the FUSE passthrough (as virtiofsd's list, without what hull's
/// configuration never uses: file handles, DAX, sockets, unshare).
const FS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_dup,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_getdents64,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_linkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_readlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_symlinkat,
    libc::SYS_utimensat,
    libc::SYS_fallocate,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_flock,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_lgetxattr,
    libc::SYS_lsetxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    libc::SYS_fstatfs,
    libc::SYS_copy_file_range,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_capget,
    libc::SYS_umask,
];

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`, KVMIO being 0xAE (linux/kvm.h).
const KVM_RUN: u64 = 0xAE80;

/// The `ioctl` requests of the event loop (see the module documentation).
const VMM_IOCTLS: &[u64] = &[libc::TUNSETOFFLOAD, libc::FIONBIO, libc::FIONREAD];

/// The `ioctl` requests of a vCPU thread: `KVM_RUN` and what a device does when the guest
/// writes its registers.
const VCPU_IOCTLS: &[u64] = &[KVM_RUN, libc::TUNSETOFFLOAD, libc::FIONBIO, libc::FIONREAD];

/// `_IOC(dir, VHOST_VIRTIO, nr, size)` (linux/vhost.h; VHOST_VIRTIO is 0xAF).
const fn vhost_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAF << 8) | nr
}
const IOC_WRITE: u64 = 1;
/// `struct vhost_vring_state` and `struct vhost_vring_file`: two 32-bit words.
const VRING_STATE: usize = 8;
/// `struct vhost_vring_addr`: index, flags, four 64-bit addresses.
const VRING_ADDR: usize = 40;

/// What a vCPU thread asks of vhost-net when the guest activates or resets the device (only
/// in a VM with a NIC on vhost-net).
pub const VHOST_NET_IOCTLS: &[u64] = &[
    vhost_ioc(IOC_WRITE, 0x00, 8),           // VHOST_SET_FEATURES
    vhost_ioc(IOC_WRITE, 0x10, VRING_STATE), // VHOST_SET_VRING_NUM
    vhost_ioc(IOC_WRITE, 0x11, VRING_ADDR),  // VHOST_SET_VRING_ADDR
    vhost_ioc(IOC_WRITE, 0x12, VRING_STATE), // VHOST_SET_VRING_BASE
    vhost_ioc(IOC_WRITE, 0x20, VRING_STATE), // VHOST_SET_VRING_KICK
    vhost_ioc(IOC_WRITE, 0x21, VRING_STATE), // VHOST_SET_VRING_CALL
    vhost_ioc(IOC_WRITE, 0x30, VRING_STATE), // VHOST_NET_SET_BACKEND
];

/// `_IOC(dir, KVMIO, nr, size)` (asm-generic/ioctl.h).
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;

/// A template run's vCPU threads save their own state (`Vcpu::save_state`): these reads, and
/// nothing that writes KVM state. Only in a VM configured with `snapshot_to`, whose guest is
/// hull's own kernel and agent with no container yet.
pub const SNAPSHOT_VCPU_IOCTLS: &[u64] = &[
    kvm_ioc(
        IOC_READ,
        0x81,
        std::mem::size_of::<kvm_bindings::kvm_regs>(),
    ),
    kvm_ioc(
        IOC_READ,
        0x83,
        std::mem::size_of::<kvm_bindings::kvm_sregs>(),
    ),
    kvm_ioc(IOC_RW, 0x88, std::mem::size_of::<kvm_bindings::kvm_msrs>()),
    kvm_ioc(
        IOC_READ,
        0x8e,
        std::mem::size_of::<kvm_bindings::kvm_lapic_state>(),
    ),
    kvm_ioc(
        IOC_RW,
        0x91,
        std::mem::size_of::<kvm_bindings::kvm_cpuid2>(),
    ),
    kvm_ioc(
        IOC_READ,
        0x98,
        std::mem::size_of::<kvm_bindings::kvm_mp_state>(),
    ),
    kvm_ioc(
        IOC_READ,
        0x9f,
        std::mem::size_of::<kvm_bindings::kvm_vcpu_events>(),
    ),
    kvm_ioc(
        IOC_READ,
        0xa1,
        std::mem::size_of::<kvm_bindings::kvm_debugregs>(),
    ),
    kvm_ioc(0, 0xa3, 0), // KVM_GET_TSC_KHZ
    kvm_ioc(
        IOC_READ,
        0xa4,
        std::mem::size_of::<kvm_bindings::kvm_xsave>(),
    ),
    kvm_ioc(
        IOC_READ,
        0xa6,
        std::mem::size_of::<kvm_bindings::kvm_xcrs>(),
    ),
];

/// ... and the event loop the VM's: KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK.
pub const SNAPSHOT_VMM_IOCTLS: &[u64] = &[
    kvm_ioc(
        IOC_RW,
        0x62,
        std::mem::size_of::<kvm_bindings::kvm_irqchip>(),
    ),
    kvm_ioc(
        IOC_READ,
        0x9f,
        std::mem::size_of::<kvm_bindings::kvm_pit_state2>(),
    ),
    kvm_ioc(
        IOC_READ,
        0x7c,
        std::mem::size_of::<kvm_bindings::kvm_clock_data>(),
    ),
];

/// The compiled filters, one per thread kind.
pub struct Filters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    fs: BpfProgram,
}

fn action() -> SeccompAction {
    match std::env::var("HULL_VMM_SECCOMP").as_deref() {
        Ok("log") => SeccompAction::Log,
        _ => SeccompAction::Trap,
    }
}

/// "trap" or "log" (see the module documentation).
pub fn mode_name() -> &'static str {
    match action() {
        SeccompAction::Log => "log",
        _ => "trap",
    }
}

fn err(e: impl std::fmt::Display) -> JailError {
    JailError::Seccomp(e.to_string())
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, JailError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(err)
}

/// `ioctl` with one of `requests` (compared as the kernel's 32-bit `cmd`).
fn ioctl_rules(requests: &[u64]) -> Result<Vec<SeccompRule>, JailError> {
    requests
        .iter()
        .map(|&r| {
            let c = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, r)
                .map_err(err)?;
            SeccompRule::new(vec![c]).map_err(err)
        })
        .collect()
}

fn rules(lists: &[&[i64]]) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut m = BTreeMap::new();
    for list in lists {
        for &nr in *list {
            m.insert(nr, Vec::new());
        }
    }
    m
}

fn compile(map: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, JailError> {
    let filter =
        SeccompFilter::new(map, action(), SeccompAction::Allow, TargetArch::x86_64).map_err(err)?;
    filter.try_into().map_err(err)
}

impl Filters {
    /// Compiles the three filters; the event loop may `unlinkat` only in `socket_dirfds`;
    /// `snapshot`: a template run (see [`SNAPSHOT_VCPU_IOCTLS`]); `vhost`: a NIC is on
    /// vhost-net (see [`VHOST_NET_IOCTLS`]).
    pub fn new(socket_dirfds: &[i32], snapshot: bool, vhost: bool) -> Result<Filters, JailError> {
        let mut vmm = rules(&[COMMON, VMM]);
        vmm.insert(
            libc::SYS_socket,
            vec![
                SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?])
                    .map_err(err)?,
            ],
        );
        if !socket_dirfds.is_empty() {
            let mut unlink = Vec::new();
            for &fd in socket_dirfds {
                unlink.push(
                    SeccompRule::new(vec![cond(0, SeccompCmpOp::Eq, fd as u32 as u64)?])
                        .map_err(err)?,
                );
            }
            vmm.insert(libc::SYS_unlinkat, unlink);
        }
        let with = |base: &[u64], extra: &[u64]| {
            let mut v = base.to_vec();
            if snapshot {
                v.extend_from_slice(extra);
            }
            v
        };
        vmm.insert(
            libc::SYS_ioctl,
            ioctl_rules(&with(VMM_IOCTLS, SNAPSHOT_VMM_IOCTLS))?,
        );
        let mut vcpu = rules(&[COMMON, VCPU]);
        let mut vcpu_ioctls = with(VCPU_IOCTLS, SNAPSHOT_VCPU_IOCTLS);
        if vhost {
            vcpu_ioctls.extend_from_slice(VHOST_NET_IOCTLS);
        }
        vcpu.insert(libc::SYS_ioctl, ioctl_rules(&vcpu_ioctls)?);
        Ok(Filters {
            vmm: compile(vmm)?,
            vcpu: compile(vcpu)?,
            fs: compile(rules(&[COMMON, FS]))?,
        })
    }

    /// Installs `kind`'s filter on the calling thread.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), JailError> {
        let prog = match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Fs => &self.fs,
        };
        seccompiler::apply_filter(prog).map_err(err)
    }
}

/// Installs the SIGSYS handler (before any filter).
pub(super) fn install_sigsys_handler() -> Result<(), JailError> {
    // SAFETY: a zeroed sigaction is a valid starting point; every field we rely on is set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction =
        on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sigemptyset on the struct's own mask, which lives for the call.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: sigaction(2) with a fully initialised struct; the handler only makes
    // async-signal-safe calls (write, _exit).
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(JailError::sys(
            "SIGSYS handler",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Formats `n` in decimal into `buf` from `at`; returns the new end.
fn put_num(buf: &mut [u8], mut at: usize, n: i64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let neg = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg && at < buf.len() {
        buf[at] = b'-';
        at += 1;
    }
    while len > 0 && at < buf.len() {
        len -= 1;
        buf[at] = digits[len];
        at += 1;
    }
    at
}

fn put(buf: &mut [u8], at: usize, s: &[u8]) -> usize {
    let n = s.len().min(buf.len() - at);
    buf[at..at + n].copy_from_slice(&s[..n]);
    at + n
}

/// The message the SIGSYS handler writes, built without allocating.
fn message(buf: &mut [u8], syscall: i64, kind: u8) -> usize {
    let kind: &[u8] = match kind {
        1 => b"vmm",
        2 => b"vcpu",
        3 => b"fs",
        _ => b"unconfined",
    };
    let mut at = put(buf, 0, b"hull-vmm: seccomp: system call ");
    at = put_num(buf, at, syscall);
    at = put(buf, at, b" is outside the allowlist of a ");
    at = put(buf, at, kind);
    at = put(buf, at, b" thread; stopping the VM (exit status 5)\n");
    at
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // The kernel passes a valid siginfo for SA_SIGINFO handlers; for SIGSYS the `_sigsys`
    // member sits after the three leading ints and their padding: `_call_addr` at byte 16,
    // `_syscall` (int) at byte 24 (as Firecracker reads it).
    // SAFETY: `info` is valid and 24 bytes in is inside the siginfo (128 bytes).
    let at = unsafe { (info as *const u8).add(24) };
    // SAFETY: an aligned (8 + 16 bytes from a siginfo) read of an int inside the siginfo.
    let syscall = unsafe { at.cast::<i32>().read() };
    let mut buf = [0u8; 160];
    let n = message(&mut buf, i64::from(syscall), super::current_kind());
    // SAFETY: write(2) of a stack buffer: async-signal-safe and in every allowlist.
    unsafe { libc::write(2, buf.as_ptr().cast(), n) };
    // SAFETY: _exit(2): async-signal-safe (exit_group, in every allowlist).
    unsafe { libc::_exit(EXIT_SECCOMP) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_snapshot_ioctl_numbers_are_linux_s() {
        // linux/kvm.h on x86-64, as `strace -e raw=ioctl` prints them.
        for (got, want) in [
            (SNAPSHOT_VCPU_IOCTLS[0], 0x8090_ae81u64), // KVM_GET_REGS
            (SNAPSHOT_VCPU_IOCTLS[1], 0x8138_ae83),    // KVM_GET_SREGS
            (SNAPSHOT_VCPU_IOCTLS[2], 0xc008_ae88),    // KVM_GET_MSRS
            (SNAPSHOT_VCPU_IOCTLS[3], 0x8400_ae8e),    // KVM_GET_LAPIC
            (SNAPSHOT_VCPU_IOCTLS[6], 0x8040_ae9f),    // KVM_GET_VCPU_EVENTS
            (SNAPSHOT_VCPU_IOCTLS[8], 0xaea3),         // KVM_GET_TSC_KHZ
            (SNAPSHOT_VCPU_IOCTLS[9], 0x9000_aea4),    // KVM_GET_XSAVE
            (SNAPSHOT_VMM_IOCTLS[0], 0xc208_ae62),     // KVM_GET_IRQCHIP
            (SNAPSHOT_VMM_IOCTLS[1], 0x8070_ae9f),     // KVM_GET_PIT2
            (SNAPSHOT_VMM_IOCTLS[2], 0x8030_ae7c),     // KVM_GET_CLOCK
        ] {
            assert_eq!(got, want, "{got:#x} != {want:#x}");
        }
    }

    use super::*;

    #[test]
    fn the_vhost_ioctl_numbers_are_the_vhost_crate_s() {
        use vhost::vhost_kern::vhost_binding as b;
        let want: [u64; 7] = [
            b::VHOST_SET_FEATURES(),
            b::VHOST_SET_VRING_NUM(),
            b::VHOST_SET_VRING_ADDR(),
            b::VHOST_SET_VRING_BASE(),
            b::VHOST_SET_VRING_KICK(),
            b::VHOST_SET_VRING_CALL(),
            b::VHOST_NET_SET_BACKEND(),
        ];
        assert_eq!(VHOST_NET_IOCTLS, want.as_slice());
        assert_eq!(VHOST_NET_IOCTLS[0], 0x4008_af00);
        assert_eq!(VHOST_NET_IOCTLS[2], 0x4028_af11);
        assert_eq!(VHOST_NET_IOCTLS[3], 0x4008_af12);
    }

    #[test]
    fn the_filters_compile() {
        Filters::new(&[7, 9], false, false).unwrap();
        Filters::new(&[7, 9], true, true).unwrap();
    }

    #[test]
    fn the_message_names_the_call_and_the_thread() {
        let mut buf = [0u8; 160];
        let n = message(&mut buf, 103, 2);
        let s = std::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            s,
            "hull-vmm: seccomp: system call 103 is outside the allowlist of a vcpu thread; \
             stopping the VM (exit status 5)\n"
        );
    }

    /// Runs `call` in a child process that installed `kind`'s filter; its exit status and
    /// what it wrote to stderr. The child exits 0 if `call` returned.
    fn in_child(kind: ThreadKind, call: impl FnOnce()) -> (i32, String) {
        in_child_with(&Filters::new(&[], false, false).unwrap(), kind, call)
    }

    /// [`in_child`] with the given filters.
    fn in_child_with(filters: &Filters, kind: ThreadKind, call: impl FnOnce()) -> (i32, String) {
        use std::io::Read;
        let (mut r, w) = std::io::pipe().unwrap();
        // SAFETY: fork in a test; the child only calls async-signal-safe functions, the filter
        // installation (a prctl/seccomp pair on its only thread) and `call` before _exit.
        match unsafe { libc::fork() } {
            0 => {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto stderr in the child.
                unsafe { libc::dup2(w.as_raw_fd(), 2) };
                if install_sigsys_handler().is_err() || filters.apply(kind).is_err() {
                    // SAFETY: _exit in the child.
                    unsafe { libc::_exit(99) };
                }
                super::super::KIND.with(|k| k.set(kind as u8));
                call();
                // SAFETY: _exit in the child.
                unsafe { libc::_exit(0) };
            }
            pid if pid > 0 => {
                drop(w);
                let mut out = String::new();
                r.read_to_string(&mut out).unwrap();
                let mut status = 0;
                // SAFETY: waitpid on our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status), "{status:#x}");
                (libc::WEXITSTATUS(status), out)
            }
            _ => panic!("fork: {}", std::io::Error::last_os_error()),
        }
    }

    /// A child process installs the vCPU filter and makes a call outside it: it ends with the
    /// documented status and message (the whole path, in a process of its own).
    #[test]
    fn a_call_outside_the_allowlist_ends_the_process_with_status_5() {
        let (status, out) = in_child(ThreadKind::Vcpu, || {
            // SAFETY: a harmless call (syslog's buffer size) that no allowlist has.
            unsafe { libc::syscall(libc::SYS_syslog, 10, 0, 0) };
        });
        assert_eq!(status, EXIT_SECCOMP, "{out}");
        assert!(
            out.contains(&format!("system call {} ", libc::SYS_syslog))
                && out.contains("vcpu thread"),
            "{out}"
        );
    }

    /// `ioctl` is checked by request: one a thread kind makes passes, any other stops it; the
    /// virtio-fs workers make none.
    #[test]
    fn ioctl_requests_are_checked_per_thread_kind() {
        // The pipe is made before the filters (no list has pipe2).
        let (r, _w) = std::io::pipe().unwrap();
        let fd = {
            use std::os::fd::AsRawFd;
            r.as_raw_fd()
        };
        let fionread = move || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
            let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
            assert_eq!(rc, 0);
        };
        fn winsize() {
            // SAFETY: winsize is plain integers; all zeroes is a valid value.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ writes a winsize through the pointer, which outlives the call.
            unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
        }
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
            assert_eq!(
                in_child(kind, fionread),
                (0, String::new()),
                "{}",
                kind.name()
            );
            let (status, out) = in_child(kind, winsize);
            assert_eq!(status, EXIT_SECCOMP, "{}: {out}", kind.name());
            assert!(
                out.contains(&format!("system call {} ", libc::SYS_ioctl)),
                "{out}"
            );
        }
        let (status, out) = in_child(ThreadKind::Fs, fionread);
        assert_eq!(status, EXIT_SECCOMP, "fs: {out}");
    }

    /// The vhost-net requests pass on a vCPU thread of a VM with a NIC on vhost-net (made
    /// here on a pipe, which the kernel answers with ENOTTY: the filter let it through), and
    /// stop a vCPU of a VM without one and the event loop of any VM.
    #[test]
    fn vhost_requests_pass_only_on_vcpu_threads_of_a_vhost_vm() {
        let (r, _w) = std::io::pipe().unwrap();
        let fd = {
            use std::os::fd::AsRawFd;
            r.as_raw_fd()
        };
        let set_num = move || {
            let num = [0u32, 256u32];
            // SAFETY: VHOST_SET_VRING_NUM reads a vhost_vring_state (two u32) through the
            // pointer, which outlives the call; on a pipe the kernel reads nothing.
            let rc = unsafe { libc::ioctl(fd, VHOST_NET_IOCTLS[1] as _, num.as_ptr()) };
            let e = std::io::Error::last_os_error().raw_os_error();
            assert!(rc == -1 && e == Some(libc::ENOTTY), "{rc} {e:?}");
        };
        let vhost = Filters::new(&[], false, true).unwrap();
        assert_eq!(
            in_child_with(&vhost, ThreadKind::Vcpu, set_num),
            (0, String::new())
        );
        for (filters, kind) in [
            (&vhost, ThreadKind::Vmm),
            (&vhost, ThreadKind::Fs),
            (&Filters::new(&[], false, false).unwrap(), ThreadKind::Vcpu),
        ] {
            let (status, out) = in_child_with(filters, kind, set_num);
            assert_eq!(status, EXIT_SECCOMP, "{}: {out}", kind.name());
            assert!(
                out.contains(&format!("system call {} ", libc::SYS_ioctl)),
                "{out}"
            );
        }
    }
}
