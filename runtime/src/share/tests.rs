//! The share as root makes it (mounts in temporary directories, always undone): what the guest's
//! view lets it do and what not, binds and their removal, and removal that never deletes
//! through a mount.

use std::os::unix::fs::symlink;

use super::*;

fn mounted(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(p))
}

/// A share in a temporary directory, destroyed (and its mounts undone) on drop.
struct Fixture {
    _tmp: tempfile::TempDir,
    t: PathBuf,
    share: Share,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().to_path_buf();
        let share = Share::new(t.join("share-rw"), t.join("shared"));
        share.create().unwrap();
        Fixture {
            _tmp: tmp,
            t,
            share,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.share.destroy();
        let _ = crate::mount::unmount_below(&self.t);
    }
}

fn spec() -> Spec {
    serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap()
}

fn erofs(r: std::io::Result<impl Sized>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: the guest's view let it through"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}"),
    }
}

#[test]
fn the_view_is_read_only_but_for_the_rootfs_and_writable_binds() {
    let f = Fixture::new();
    let t = &f.t;
    let rootfs = t.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/os-release"), b"hull").unwrap();
    let data = t.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), b"keep me").unwrap();
    let ro = t.join("ro-volume");
    std::fs::create_dir(&ro).unwrap();
    let hosts = t.join("hosts");
    std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
    let bind = |index, destination: &str, source: &Path, is_dir, readonly| BindMount {
        index,
        destination: destination.into(),
        source: source.to_path_buf(),
        is_dir,
        recursive: false,
        readonly,
    };
    let binds = vec![
        bind(0, "/data", &data, true, false),
        bind(2, "/ro", &ro, true, true),
        bind(3, "/etc/hosts", &hosts, false, false),
    ];
    let name = rootfs_name("c1");
    let dir = f
        .share
        .prepare("c1", &name, &rootfs, &binds, &spec())
        .unwrap();
    assert_eq!(dir, f.share.host_dir().join("containers/c1"));
    let view = f.share.view().join("containers/c1");
    // The root file systems' device exports the view's rootfs/, where this one is.
    let view_root = f.share.rootfs_view().join(&name);
    assert_eq!(f.share.rootfs_view(), f.share.view().join("rootfs"));
    // What the host made is in the view.
    assert_eq!(
        std::fs::read(view_root.join("etc/os-release")).unwrap(),
        b"hull"
    );
    assert_eq!(std::fs::read(view.join("mounts/0/f")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(view.join("mounts/3")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(view.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["ociVersion"], "1.0.2");
    // The guest writes in its rootfs and its writable volume: on the host's disk, in place.
    std::fs::write(view_root.join("new"), b"guest").unwrap();
    assert_eq!(std::fs::read(rootfs.join("new")).unwrap(), b"guest");
    std::fs::write(view.join("mounts/0/g"), b"guest").unwrap();
    assert_eq!(std::fs::read(data.join("g")).unwrap(), b"guest");
    // A read-only volume is read-only, in the view and on the host's side.
    erofs(
        std::fs::write(view.join("mounts/2/x"), b"x"),
        "write to a ro volume",
    );
    erofs(
        std::fs::write(dir.join("mounts/2/x"), b"x"),
        "write to a ro volume (host side)",
    );
    // Nothing of the structure can be changed through the view: no link planted, nothing
    // renamed away, no file to fill the host's memory.
    let outside = t.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let root = f.share.view();
    erofs(
        symlink(&outside, root.join("planted")),
        "a link at the root",
    );
    erofs(
        symlink(&outside, root.join("containers/c2")),
        "a link for a next container",
    );
    erofs(
        std::fs::remove_file(view.join("config.json")),
        "removing config.json",
    );
    erofs(
        std::fs::write(view.join("config.json"), b"{}"),
        "rewriting config.json",
    );
    erofs(
        std::fs::rename(root.join("containers"), root.join("moved")),
        "renaming containers away",
    );
    erofs(
        std::fs::rename(view.join("mounts"), view.join("m2")),
        "renaming mounts away",
    );
    erofs(
        symlink(&outside, view.join("mounts/5")),
        "a link in mounts/",
    );
    erofs(
        std::fs::write(root.join("fill"), vec![0u8; 4096]),
        "a file at the root",
    );
    erofs(std::fs::create_dir(view.join("x")), "a directory");
    // Nor the root file systems' directory: no link for a next container's root, no root
    // renamed away.
    erofs(
        symlink(&outside, f.share.rootfs_view().join("c2@0000000000000000")),
        "a link for a next root file system",
    );
    erofs(
        std::fs::rename(&view_root, f.share.rootfs_view().join("moved")),
        "renaming a root file system away",
    );
    f.share.remove("c1").unwrap();
    assert!(!dir.exists());
    assert!(!view.exists());
    assert!(!view_root.exists());
    assert!(!mounted(&view_root));
    assert!(!mounted(&f.share.host_dir().join("rootfs").join(&name)));
    for p in ["mounts/0", "mounts/2", "mounts/3"] {
        assert!(!mounted(&dir.join(p)), "{p} is still mounted");
        assert!(!mounted(&view.join(p)), "{p} is still mounted in the view");
    }
    // The sources are untouched.
    assert_eq!(std::fs::read(data.join("f")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(rootfs.join("etc/os-release")).unwrap(),
        b"hull"
    );
    assert!(hosts.exists() && ro.exists());
    f.share.remove("c1").unwrap();
    f.share.destroy().unwrap();
    assert!(!f.share.host_dir().exists() && !f.share.view().exists());
    assert!(!mounted(f.share.view()) && !mounted(f.share.host_dir()));
}

#[test]
fn a_failed_bind_undoes_everything() {
    let f = Fixture::new();
    let rootfs = f.t.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    // The source vanished between the check and the mount.
    let binds = vec![BindMount {
        index: 1,
        destination: "/data".into(),
        source: f.t.join("gone"),
        is_dir: true,
        recursive: false,
        readonly: false,
    }];
    let name = rootfs_name("c1");
    let e = f
        .share
        .prepare("c1", &name, &rootfs, &binds, &spec())
        .unwrap_err();
    assert!(matches!(e, ShareError::MountSource { .. }), "{e}");
    assert!(e.to_string().contains("/data"), "{e}");
    assert!(!f.share.container_dir("c1").exists());
    let root = f.share.host_dir().join("rootfs").join(&name);
    assert!(!mounted(&root));
    assert!(!root.exists());
}

#[test]
fn removal_refuses_to_delete_through_a_mount_or_a_link() {
    let f = Fixture::new();
    let dir = f.share.container_dir("c1");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    // Something that looks like a rootfs with content, but is not a mount: removal must not
    // delete it recursively.
    std::fs::write(dir.join("rootfs/precious"), b"x").unwrap();
    let e = f.share.remove("c1").unwrap_err();
    assert!(e.to_string().contains("still mounted"), "{e}");
    assert!(dir.join("rootfs/precious").exists());
    std::fs::remove_file(dir.join("rootfs/precious")).unwrap();
    // Links where the host expects its directories (as a hostile writer would plant them) are
    // removed as links, never followed.
    let outside = f.t.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"x").unwrap();
    symlink(&outside, dir.join("mounts")).unwrap();
    f.share.remove("c1").unwrap();
    assert!(outside.join("precious").exists());
    assert!(!dir.exists());
    std::fs::create_dir_all(f.share.host_dir().join("containers")).unwrap();
    symlink(&outside, f.share.host_dir().join("containers/c2")).unwrap();
    f.share.remove_all().unwrap();
    assert!(outside.join("precious").exists());
    std::fs::remove_dir(f.share.host_dir().join("containers")).unwrap();
    symlink(&outside, f.share.host_dir().join("containers")).unwrap();
    let rootfs = f.t.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    assert!(
        f.share
            .prepare("c3", &rootfs_name("c3"), &rootfs, &[], &spec())
            .is_err(),
        "a link for containers/ is not followed"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    f.share.remove_all().unwrap();
    assert!(std::fs::symlink_metadata(f.share.host_dir().join("containers")).is_err());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

/// A volume bound from a shared host mount receives the mounts the host makes under it later
/// (in the host's side and the view alike); removing the container takes its binds off and
/// leaves the host's own mount where it is.
#[test]
fn removal_keeps_the_host_s_mounts_under_a_shared_volume() {
    let f = Fixture::new();
    let t = &f.t;
    let vol = t.join("vol");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    let mnt = |src: Option<&Path>, target: &Path, fstype: Option<&str>, flags: MsFlags| {
        nix::mount::mount(src, target, fstype, flags, None::<&str>).unwrap()
    };
    mnt(Some(&vol), &vol, None, MsFlags::MS_BIND);
    mnt(None, &vol, None, MsFlags::MS_SHARED);
    let rootfs = t.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let binds = vec![BindMount {
        index: 0,
        destination: "/vol".into(),
        source: vol.clone(),
        is_dir: true,
        recursive: true,
        readonly: false,
    }];
    f.share
        .prepare("c1", &rootfs_name("c1"), &rootfs, &binds, &spec())
        .unwrap();
    mnt(
        Some(Path::new("hostmount")),
        &vol.join("sub"),
        Some("tmpfs"),
        MsFlags::empty(),
    );
    std::fs::write(vol.join("sub/f"), b"host").unwrap();
    let view = f.share.view().join("containers/c1/mounts/0/sub/f");
    let seen = std::fs::read(&view);
    let removed = f.share.remove("c1");
    let kept = mounted(&vol.join("sub"));
    let _ = nix::mount::umount2(&vol.join("sub"), MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&vol, MntFlags::MNT_DETACH);
    assert_eq!(seen.unwrap(), b"host", "the host's mount reached the view");
    removed.unwrap();
    assert!(kept, "removing the container unmounted the host's mount");
    assert!(!f.share.host_dir().join("containers/c1").exists());
}

/// Root file system names: never the same twice for one id, each only its container's, and a
/// root file system left without its container directory is removed with the rest.
#[test]
fn root_file_system_names_are_never_reused_and_are_each_their_container_s() {
    let a = rootfs_name("c1");
    let b = rootfs_name("c1");
    assert_ne!(
        a, b,
        "a container made again must get a name the guest never cached"
    );
    assert!(a.starts_with("c1@") && a.len() == "c1@".len() + 16, "{a}");
    let os = |s: &str| std::ffi::OsString::from(s);
    assert!(is_rootfs_of(&os(&a), "c1"));
    assert!(!is_rootfs_of(&os(&a), "c"));
    assert!(!is_rootfs_of(&os("c1.x@0123456789abcdef"), "c1"));
    for not_a_name in [
        "c1",
        "c1@0",
        "c1@0123456789ABCDEF",
        "c1@0123456789abcdef@",
        "..@0123456789abcdef",
        "@0123456789abcdef",
    ] {
        assert_eq!(rootfs_owner(&os(not_a_name)), None, "{not_a_name}");
    }

    let f = Fixture::new();
    let rootfs = f.t.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::write(rootfs.join("precious"), b"x").unwrap();
    // Another container's name is refused.
    let other = rootfs_name("c2");
    assert!(f
        .share
        .prepare("c1", &other, &rootfs, &[], &spec())
        .is_err());
    assert!(!f.share.host_dir().join("rootfs").join(&other).exists());
    // c1 and c10 side by side: removing c1 leaves c10's root.
    let (n1, n10) = (rootfs_name("c1"), rootfs_name("c10"));
    f.share.prepare("c1", &n1, &rootfs, &[], &spec()).unwrap();
    f.share.prepare("c10", &n10, &rootfs, &[], &spec()).unwrap();
    f.share.remove("c1").unwrap();
    assert!(!f.share.rootfs_view().join(&n1).exists());
    assert!(f.share.rootfs_view().join(&n10).join("precious").exists());
    // A root whose container directory is gone goes with remove_all, unmounted, its source
    // untouched. What the runtime did not make there (a link, a directory with content) is
    // neither followed nor removed, and does not stop the rest.
    let dir = f.share.container_dir("c10");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let roots = f.share.host_dir().join("rootfs");
    let outside = f.t.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"x").unwrap();
    symlink(&outside, roots.join("c9@0123456789abcdef")).unwrap();
    std::fs::create_dir_all(roots.join("stray/sub")).unwrap();
    f.share.remove_all().unwrap();
    assert!(!roots.join(&n10).exists());
    assert!(!mounted(&f.share.rootfs_view().join(&n10)));
    assert!(rootfs.join("precious").exists());
    assert!(roots.join("stray/sub").exists());
    assert!(outside.join("precious").exists());
    assert!(std::fs::symlink_metadata(roots.join("c9@0123456789abcdef")).is_err());
    f.share.destroy().unwrap();
    assert!(outside.join("precious").exists());
    assert!(!mounted(f.share.view()) && !mounted(f.share.host_dir()));
}
