"""What the container benches (container.py, memory.py) share: an OCI bundle both runtimes run,
hull's runtime configuration, and the checks that a run left nothing behind.

The bundle is built as tests/tests/cli_vm.rs builds its bundles: a root file system of Debian's
static /bin/busybox and its applets, and runc's default spec (`hull spec` writes it) with the
process' args set and no terminal. hull and runc get the very same directory.
"""
import ctypes, json, os, shutil, subprocess

PR_SET_CHILD_SUBREAPER = 36
BUSYBOX = "/bin/busybox"


def run_main(main):
    """Runs a bench's main: a BenchError is printed as `bench: ...` and exits 1."""
    import sys
    try:
        main()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)


class BenchError(RuntimeError):
    pass


def become_subreaper():
    """Orphaned processes (hull's `--pid-file` monitor, a detached hull-vmm, a `runc run -d`
    container) come to us, as they come to containerd's shim, so that we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(e)}")


def reap_orphans():
    """Reaps every child that has exited (adopted orphans included); returns their pids."""
    pids = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return pids
        if pid == 0:
            return pids
        pids.append(pid)


def check_tools(build):
    """{name: path} of the binaries the benches run; a clear error for anything missing."""
    tools = {"hull": os.path.join(build, "bin", "hull"), "hull-vmm": os.path.join(build, "bin", "hull-vmm"),
             "vmlinux": os.path.join(build, "vmlinux"), "initrd": os.path.join(build, "hull-initrd.img")}
    for name, path in tools.items():
        if not os.path.exists(path):
            raise BenchError(f"{path} missing (make build kernel initrd, or set HULL_BUILD_DIR)")
    tools["runc"] = shutil.which("runc")
    if not tools["runc"]:
        raise BenchError("runc not found on PATH (package runc; scripts/install-deps.sh)")
    if not os.access(BUSYBOX, os.X_OK):
        raise BenchError(f"{BUSYBOX} missing (package busybox-static; scripts/install-deps.sh)")
    return tools


def write_hull_config(path, tools):
    """hull's config.toml (runtime/src/config.rs) naming the built kernel, initramfs and VMM;
    every other key (1 vCPU, 256 MiB) at its default. `HULL_CONFIG` points hull at it."""
    with open(path, "w") as f:
        f.write(f'kernel = "{tools["vmlinux"]}"\ninitrd = "{tools["initrd"]}"\nvmm = "{tools["hull-vmm"]}"\n')


def write_start_configs(work, tools):
    """Two hull configs in `work`: the default start path (`snapshot`, templates kept in
    `work/templates`) and `start = "boot"`. Returns their paths."""
    config = os.path.join(work, "hull.toml")
    write_hull_config(config, tools)
    with open(config, "a") as f:
        f.write(f'template_dir = "{work}/templates"\n')
    boot_config = os.path.join(work, "hull-boot.toml")
    shutil.copy(config, boot_config)
    with open(boot_config, "a") as f:
        f.write('start = "boot"\n')
    return config, boot_config


def busybox_bundle(hull, bundle, args):
    """An OCI bundle at `bundle` running `args`: runc's default spec, busybox root."""
    shutil.rmtree(bundle, ignore_errors=True)
    os.makedirs(bundle)
    out = subprocess.run([hull, "spec", "--bundle", bundle], capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"hull spec --bundle {bundle}: {out.stderr.strip()}")
    root = os.path.join(bundle, "rootfs")
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root"):
        os.makedirs(os.path.join(root, d))
    shutil.copy(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    with open(path, "w") as f:
        json.dump(spec, f, indent=2)


def vmm_processes():
    """(pid, command line) of every live hull-vmm (zombies are not processes that run)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and os.path.basename(argv[0].decode(errors="replace")) == "hull-vmm":
            found.append((int(d), b" ".join(argv).decode(errors="replace")))
    return found


def leftovers(root, cid):
    """What a finished container `cid` under state root `root` left behind (empty: nothing)."""
    left = []
    if os.path.exists(os.path.join(root, cid)):
        left.append(f"state dir {os.path.join(root, cid)}")
    for pid, cmd in vmm_processes():
        if root in cmd:
            left.append(f"hull-vmm pid {pid} ({cmd})")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split(" ")[4]
            if mnt.startswith(os.path.join(root, "")):
                left.append(f"mount {mnt}")
    return left

