//! A virtio-fs share as the user describes it: plain data (JSON config or the `--fs` flag).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most bytes of a share's tag (the size of the tag field of virtio-fs's config space).
pub const FS_TAG_LEN: usize = 36;

/// What is wrong with a share's description (found without touching the host).
#[derive(Debug, thiserror::Error)]
pub enum FsSpecError {
    #[error("invalid --fs `{spec}`: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("invalid virtio-fs tag `{tag}`: {reason}")]
    InvalidTag { tag: String, reason: &'static str },
    #[error("unknown cache policy `{0}` (expected never, metadata, auto or always)")]
    InvalidCache(String),
    #[error("{0}")]
    InvalidOptions(String),
}

/// How much the guest may cache (fuse-backend-rs's passthrough `CachePolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CachePolicy {
    /// No caching: every read and write goes to the host (`DIRECT_IO`), so changes made on the
    /// host are seen at once. Use for directories the host (or another guest) also changes.
    Never,
    /// Like `never` for file data, but directory entries and attributes are cached.
    Metadata,
    /// Close-to-open consistency: cached data is revalidated when a file is opened.
    #[default]
    Auto,
    /// Data is kept in the guest's page cache across opens: only for directories nobody else
    /// changes.
    Always,
}

impl CachePolicy {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::Never => "never",
            CachePolicy::Metadata => "metadata",
            CachePolicy::Auto => "auto",
            CachePolicy::Always => "always",
        }
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = FsSpecError;

    fn from_str(s: &str) -> Result<Self, FsSpecError> {
        match s {
            "never" => Ok(CachePolicy::Never),
            "metadata" => Ok(CachePolicy::Metadata),
            "auto" => Ok(CachePolicy::Auto),
            "always" => Ok(CachePolicy::Always),
            other => Err(FsSpecError::InvalidCache(other.to_string())),
        }
    }
}

impl std::fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One virtio-fs share: a host directory the guest mounts with `mount -t virtiofs TAG /path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag the guest names the share by (1 to 36 bytes).
    pub tag: String,
    /// The host directory shared with the guest; the guest can reach nothing outside it.
    pub shared_dir: PathBuf,
    /// Refuse every change (data and metadata) with EROFS.
    #[serde(default)]
    pub read_only: bool,
    /// Guest caching policy.
    #[serde(default)]
    pub cache: CachePolicy,
    /// Serve extended attributes (otherwise the guest gets ENOSYS/EOPNOTSUPP for them).
    #[serde(default)]
    pub xattr: bool,
    /// Let the guest cache writes (FUSE writeback cache). Only for directories nobody else
    /// changes; needs a writable share and a cache policy other than `never`.
    #[serde(default)]
    pub writeback: bool,
}

impl FsConfig {
    /// A read-write share with the default options.
    pub fn new(tag: impl Into<String>, shared_dir: impl Into<PathBuf>) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            shared_dir: shared_dir.into(),
            read_only: false,
            cache: CachePolicy::default(),
            xattr: false,
            writeback: false,
        }
    }

    /// Parses the `--fs` flag: `TAG=HOSTDIR[,ro|rw][,cache=never|metadata|auto|always][,xattr]
    /// [,writeback]`. The host directory may not contain a comma. The directory itself is
    /// checked by hull-vmm when it creates the device, not here.
    pub fn parse_cli(s: &str) -> Result<FsConfig, FsSpecError> {
        let bad = |reason: String| FsSpecError::InvalidSpec {
            spec: s.to_string(),
            reason,
        };
        let (tag, rest) = s
            .split_once('=')
            .ok_or_else(|| bad("expected TAG=HOSTDIR[,options]".to_string()))?;
        let mut parts = rest.split(',');
        let dir = parts.next().unwrap_or_default();
        if dir.is_empty() {
            return Err(bad("the host directory is empty".to_string()));
        }
        let mut cfg = FsConfig::new(tag, dir);
        let mut seen: Vec<&str> = Vec::new();
        for opt in parts {
            let key = opt.split_once('=').map_or(opt, |(k, _)| k);
            let key = match key {
                "ro" | "rw" => "ro/rw",
                k => k,
            };
            if seen.contains(&key) {
                return Err(bad(format!("option `{key}` given twice")));
            }
            seen.push(key);
            match opt {
                "ro" => cfg.read_only = true,
                "rw" => cfg.read_only = false,
                "xattr" => cfg.xattr = true,
                "writeback" => cfg.writeback = true,
                "" => return Err(bad("empty option (stray comma?)".to_string())),
                _ => match opt.split_once('=') {
                    Some(("cache", v)) => cfg.cache = v.parse()?,
                    _ => {
                        return Err(bad(format!(
                            "unknown option `{opt}` (expected ro, rw, cache=never|metadata|auto|\
                             always, xattr or writeback)"
                        )))
                    }
                },
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what can be checked without touching the host (the tag and option combinations).
    pub fn validate(&self) -> Result<(), FsSpecError> {
        if self.tag.is_empty() {
            return Err(FsSpecError::InvalidTag {
                tag: self.tag.clone(),
                reason: "the tag is empty",
            });
        }
        if self.tag.len() > FS_TAG_LEN {
            return Err(FsSpecError::InvalidTag {
                tag: self.tag.clone(),
                reason: "the tag is longer than 36 bytes",
            });
        }
        if self
            .tag
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
        {
            return Err(FsSpecError::InvalidTag {
                tag: self.tag.clone(),
                reason: "the tag contains whitespace, a comma or a control character",
            });
        }
        if self.shared_dir.as_os_str().is_empty() {
            return Err(FsSpecError::InvalidOptions(format!(
                "share `{}`: the host directory is empty",
                self.tag
            )));
        }
        if self.writeback && self.read_only {
            return Err(FsSpecError::InvalidOptions(format!(
                "share `{}`: writeback needs a writable share (drop `ro` or `writeback`)",
                self.tag
            )));
        }
        if self.writeback && self.cache == CachePolicy::Never {
            return Err(FsSpecError::InvalidOptions(format!(
                "share `{}`: writeback needs caching (cache=never forbids it)",
                self.tag
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        let c = FsConfig::parse_cli("rootfs=/srv/a").unwrap();
        assert_eq!(c, FsConfig::new("rootfs", "/srv/a"));
        assert!(!c.read_only && !c.xattr && !c.writeback);
        assert_eq!(c.cache, CachePolicy::Auto);

        let c = FsConfig::parse_cli("t=/x/y,ro,cache=never,xattr").unwrap();
        assert!(c.read_only && c.xattr && !c.writeback);
        assert_eq!(c.cache, CachePolicy::Never);
        assert_eq!(c.shared_dir, PathBuf::from("/x/y"));

        let c = FsConfig::parse_cli("t=rel/dir,cache=always,writeback,rw").unwrap();
        assert!(!c.read_only && c.writeback);
        assert_eq!(c.cache, CachePolicy::Always);

        let c = FsConfig::parse_cli("t=/d,cache=metadata").unwrap();
        assert_eq!(c.cache, CachePolicy::Metadata);
        // A `=` in the directory belongs to the directory.
        let c = FsConfig::parse_cli("t=/a=b").unwrap();
        assert_eq!(c.shared_dir, PathBuf::from("/a=b"));
        // 36 bytes is the limit.
        let tag = "x".repeat(36);
        assert_eq!(FsConfig::parse_cli(&format!("{tag}=/d")).unwrap().tag, tag);
    }

    fn err(s: &str) -> String {
        FsConfig::parse_cli(s)
            .expect_err(&format!("`{s}` must be refused"))
            .to_string()
    }

    #[test]
    fn refuses_bad_flags_naming_the_problem() {
        assert!(err("nodir").contains("TAG=HOSTDIR"), "{}", err("nodir"));
        assert!(err("=/d").contains("empty"));
        assert!(err("t=").contains("host directory is empty"));
        assert!(err("t=,ro").contains("host directory is empty"));
        let long = format!("{}=/d", "x".repeat(37));
        assert!(err(&long).contains("36 bytes"), "{}", err(&long));
        assert!(err("a b=/d").contains("whitespace"));
        assert!(err("t=/d,cache=sometimes").contains("sometimes"));
        assert!(err("t=/d,cache=sometimes").contains("never"));
        assert!(err("t=/d,bogus").contains("unknown option `bogus`"));
        assert!(err("t=/d,ro,ro").contains("twice"));
        assert!(err("t=/d,ro,rw").contains("twice"));
        assert!(err("t=/d,cache=auto,cache=never").contains("twice"));
        assert!(err("t=/d,").contains("empty option"));
        assert!(err("t=/d,ro,writeback").contains("writable"));
        assert!(err("t=/d,cache=never,writeback").contains("cache=never"));
        // Every message names the spec it refuses.
        assert!(err("t=/d,bogus").contains("t=/d,bogus"));
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let c = FsConfig::parse_cli("t=/d,ro,cache=metadata,xattr").unwrap();
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains("\"cache\":\"metadata\""), "{j}");
        assert_eq!(serde_json::from_str::<FsConfig>(&j).unwrap(), c);
        let min: FsConfig = serde_json::from_str(r#"{"tag":"t","shared_dir":"/d"}"#).unwrap();
        assert_eq!(min, FsConfig::new("t", "/d"));
        let e = serde_json::from_str::<FsConfig>(r#"{"tag":"t","shared_dir":"/d","rw":true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rw"), "{e}");
    }
}
