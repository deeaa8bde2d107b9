//! Host mounts the runtime makes and must undo (container root file systems and bind mounts in
//! a sandbox's share).

use std::path::{Path, PathBuf};

/// Undoes the octal escapes `/proc/self/mountinfo` uses for space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            // Bytes, not a str slice: the three bytes after a backslash need not be characters.
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points at or below `dir` in `mountinfo` text, deepest first.
fn mounts_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|f| PathBuf::from(unescape(f)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Children before parents; a path mounted twice is unmounted twice.
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// The mount points at or below `dir` now, deepest first.
pub fn mounts_at_or_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mounts_below(&info, dir))
}

/// Unmounts (lazily, so a busy mount cannot block a cleanup) everything mounted at or below
/// `dir`, deepest first.
pub fn unmount_below(dir: &Path) -> std::io::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for p in mounts_below(&info, dir) {
        match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "umount {}: {e}",
                    p.display()
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_below_a_directory_deepest_first() {
        let info = "\
22 1 0:21 / / rw - ext4 /dev/vda rw
30 22 0:40 / /run/hull/a/shared/c1/rootfs rw - overlay o rw
31 30 0:41 / /run/hull/a/shared/c1/rootfs/etc/hosts rw - ext4 /dev/vda rw
32 22 0:42 / /run/hull/ab rw - tmpfs t rw
33 22 0:43 / /run/hull/a/with\\040space rw - tmpfs t rw
";
        let got = mounts_below(info, Path::new("/run/hull/a"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/hull/a/shared/c1/rootfs/etc/hosts"),
                PathBuf::from("/run/hull/a/shared/c1/rootfs"),
                PathBuf::from("/run/hull/a/with space"),
            ]
        );
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("trailing\\"), "trailing\\");
        assert_eq!(unescape("\\é9"), "\\é9");
    }
}
