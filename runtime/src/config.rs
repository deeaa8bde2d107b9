//! hull's runtime configuration: `/etc/hull/config.toml` (or the file `HULL_CONFIG` names).
//!
//! The file is optional and every key has a built-in default, so a host where `make install`
//! put the binaries, kernel and initramfs in their standard places needs none:
//!
//! ```toml
//! kernel = "/usr/local/share/hull/vmlinux"          # the guest kernel
//! initrd = "/usr/local/share/hull/hull-initrd.img"  # the guest initramfs (hull-agent)
//! vmm = "/usr/local/bin/hull-vmm"                   # the VMM binary
//! vcpus = 1                                         # default vCPUs of a sandbox
//! memory_mib = 256                                  # default guest memory of a sandbox
//! log_level = "warn"                                # hull-vmm's log level (HULL_LOG)
//! jail = true                                       # hull-vmm confines itself (default)
//! start = "snapshot"                                # restore from a template, or "boot"
//! template_dir = "/var/lib/hull/templates"          # where templates are kept
//! net_backend = "auto"                              # virtio-net: "auto", "vhost", "userspace"
//! ```
//!
//! `start`: how a sandbox's VM starts. `"snapshot"` (the default) restores it from a template
//! (a VM booted once to its agent and snapshotted, made on first use, see `crate::template`);
//! `"boot"` boots the kernel every time. A template that cannot be made or used gives a log
//! line and a boot, never a failed sandbox.
//!
//! `jail` is `true` (the default: every part on), `false` (nothing confined: for debugging a
//! VMM problem only), or a table that turns parts off or bounds the open files (see
//! `hull_vmm_api::config::JailConfig` and docs/security.md):
//!
//! ```toml
//! [jail]
//! namespaces = true      # own mount/IPC/UTS namespaces, pivoted into an empty root
//! capabilities = true    # all dropped but the virtio-fs workers' (docs/security.md)
//! seccomp = true         # an allowlist per thread kind
//! max_open_files = 1048576
//! ```
//! (It is not under the `vmm` key, which is the binary's path.) `hull check` prints what is in
//! force.
//!
//! `net_backend`: what moves a sandbox's frames. `"auto"` (the default) is the host kernel's
//! vhost-net where `/dev/vhost-net` can be opened, hull-vmm's own device otherwise (hull-vmm
//! logs why); `"vhost"` fails a sandbox whose host has no vhost-net; `"userspace"` is always
//! hull-vmm's own device. Templates are always made on hull-vmm's own device (a vhost-net
//! device's queues cannot be saved) and restored onto the chosen one.
//!
//! An unknown key is an error naming the key and the file.

use std::path::{Path, PathBuf};

use hull_vmm_api::config::JailConfig;
use hull_vmm_api::NetBackend;
use serde::Deserialize;

/// Where the configuration is read from when `HULL_CONFIG` is not set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";
/// Where `make install` puts the guest kernel and initramfs.
pub const DEFAULT_SHARE_DIR: &str = "/usr/local/share/hull";
/// Where `make install` puts the binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key} must be {expected}, got {got}")]
    Value {
        path: PathBuf,
        key: &'static str,
        expected: &'static str,
        got: String,
    },
}

/// The runtime's configuration (see the module docs for the file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs with hull-agent as /init.
    pub initrd: PathBuf,
    /// The hull-vmm binary.
    pub vmm: PathBuf,
    /// Default vCPUs of a sandbox.
    pub vcpus: u32,
    /// Default guest memory of a sandbox, MiB.
    pub memory_mib: u64,
    /// hull-vmm's log level (a tracing filter such as `warn` or `hull_vmm=debug`).
    pub log_level: String,
    /// How hull-vmm confines itself (see the module docs).
    pub jail: JailSetting,
    /// How a sandbox's VM starts (see the module docs).
    pub start: StartPath,
    /// Where templates are kept (root's, on disk: a template's memory file is mapped by every
    /// sandbox restored from it, so it is in the page cache once, not in a tmpfs as well).
    pub template_dir: PathBuf,
    /// What moves a sandbox's frames (see the module docs).
    pub net_backend: NetBackend,
}

/// Where templates are kept by default.
pub const DEFAULT_TEMPLATE_DIR: &str = "/var/lib/hull/templates";

/// How a sandbox's VM starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPath {
    /// Restored from a template snapshot (made on first use).
    #[default]
    Snapshot,
    /// A cold boot of the kernel.
    Boot,
}

/// `jail = true|false`, or a `[jail]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JailSetting {
    All(bool),
    Parts(JailConfig),
}

impl<'de> Deserialize<'de> for JailSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JailSetting, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::Boolean(b) => Ok(JailSetting::All(b)),
            t @ toml::Value::Table(_) => t
                .try_into::<JailConfig>()
                .map(JailSetting::Parts)
                .map_err(|e| D::Error::custom(format!("[jail]: {}", e.message()))),
            other => Err(D::Error::custom(format!(
                "jail must be true, false or a [jail] table, got a {}",
                other.type_str()
            ))),
        }
    }
}

impl Default for JailSetting {
    fn default() -> JailSetting {
        JailSetting::All(true)
    }
}

impl JailSetting {
    /// What hull-vmm is configured with.
    pub fn config(&self) -> JailConfig {
        match self {
            JailSetting::All(true) => JailConfig::default(),
            JailSetting::All(false) => JailConfig::off(),
            JailSetting::Parts(c) => c.clone(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            kernel: Path::new(DEFAULT_SHARE_DIR).join("vmlinux"),
            initrd: Path::new(DEFAULT_SHARE_DIR).join("hull-initrd.img"),
            vmm: Path::new(DEFAULT_BIN_DIR).join("hull-vmm"),
            vcpus: 1,
            memory_mib: 256,
            log_level: "warn".into(),
            jail: JailSetting::default(),
            start: StartPath::default(),
            template_dir: PathBuf::from(DEFAULT_TEMPLATE_DIR),
            net_backend: NetBackend::default(),
        }
    }
}

impl RuntimeConfig {
    /// The configuration in effect: `HULL_CONFIG`'s file, else `/etc/hull/config.toml`; a
    /// missing default file means the defaults, a missing `HULL_CONFIG` file is an error.
    pub fn load() -> Result<RuntimeConfig, ConfigError> {
        match std::env::var_os("HULL_CONFIG") {
            Some(p) => RuntimeConfig::from_file(Path::new(&p)),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                if p.exists() {
                    RuntimeConfig::from_file(p)
                } else {
                    Ok(RuntimeConfig::default())
                }
            }
        }
    }

    /// Reads and checks one file.
    pub fn from_file(path: &Path) -> Result<RuntimeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        RuntimeConfig::from_toml(&text, path)
    }

    /// Parses and checks `text` (`path` names it in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<RuntimeConfig, ConfigError> {
        let c: RuntimeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let bad = |key, expected, got: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            expected,
            got,
        };
        if !(1..=32).contains(&c.vcpus) {
            return Err(bad("vcpus", "between 1 and 32", c.vcpus.to_string()));
        }
        if !(64..=65536).contains(&c.memory_mib) {
            return Err(bad(
                "memory_mib",
                "between 64 and 65536",
                c.memory_mib.to_string(),
            ));
        }
        let jail = c.jail.config();
        if !(1024..=(1 << 30)).contains(&jail.max_open_files) {
            return Err(bad(
                "jail.max_open_files",
                "between 1024 and 1073741824",
                jail.max_open_files.to_string(),
            ));
        }
        for (key, p) in [
            ("kernel", &c.kernel),
            ("initrd", &c.initrd),
            ("vmm", &c.vmm),
            ("template_dir", &c.template_dir),
        ] {
            if !p.is_absolute() {
                return Err(bad(key, "an absolute path", p.display().to_string()));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuntimeConfig, ConfigError> {
        RuntimeConfig::from_toml(text, Path::new("/etc/hull/config.toml"))
    }

    #[test]
    fn every_key_has_a_default() {
        let c = parse("").unwrap();
        assert_eq!(c, RuntimeConfig::default());
        assert_eq!(c.kernel, Path::new("/usr/local/share/hull/vmlinux"));
        assert_eq!(c.vmm, Path::new("/usr/local/bin/hull-vmm"));
        let c = parse("vcpus = 2\nmemory_mib = 512\nkernel = \"/k\"\n").unwrap();
        assert_eq!((c.vcpus, c.memory_mib), (2, 512));
        assert_eq!(c.kernel, Path::new("/k"));
        assert_eq!(c.initrd, RuntimeConfig::default().initrd);
        assert_eq!(c.start, StartPath::Snapshot);
        assert_eq!(parse("start = \"boot\"\n").unwrap().start, StartPath::Boot);
        assert_eq!(c.net_backend, NetBackend::Auto);
        assert_eq!(
            parse("net_backend = \"userspace\"\n").unwrap().net_backend,
            NetBackend::Userspace
        );
        let e = parse("net_backend = \"dpdk\"\n").unwrap_err().to_string();
        assert!(e.contains("dpdk"), "{e}");
        let e = parse("start = \"warm\"\n").unwrap_err().to_string();
        assert!(e.contains("warm"), "{e}");
        let e = parse("template_dir = \"t\"\n").unwrap_err().to_string();
        assert!(e.contains("template_dir must be an absolute path"), "{e}");
    }

    #[test]
    fn the_jail_is_on_unless_turned_off() {
        assert_eq!(parse("").unwrap().jail.config(), JailConfig::default());
        assert!(!parse("jail = false").unwrap().jail.config().any());
        let c = parse("[jail]\nseccomp = false\nmax_open_files = 4096\n")
            .unwrap()
            .jail
            .config();
        assert!(c.namespaces && c.capabilities && !c.seccomp);
        assert_eq!(c.max_open_files, 4096);
        let e = parse("[jail]\nmax_open_files = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jail.max_open_files"), "{e}");
        let e = parse("[jail]\nsecomp = false\n").unwrap_err().to_string();
        assert!(e.contains("secomp"), "{e}");
        let e = parse("jail = 1\n").unwrap_err().to_string();
        assert!(
            e.contains("jail must be true, false or a [jail] table"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_name_the_key_and_the_file() {
        let e = parse("vcpu = 2\n").unwrap_err().to_string();
        assert!(
            e.contains("vcpu") && e.contains("/etc/hull/config.toml"),
            "{e}"
        );
        let e = parse("vcpus = \"two\"\n").unwrap_err().to_string();
        assert!(e.contains("/etc/hull/config.toml"), "{e}");
        let e = parse("vcpus = 0\n").unwrap_err().to_string();
        assert!(e.contains("vcpus must be between 1 and 32"), "{e}");
        let e = parse("memory_mib = 1\n").unwrap_err().to_string();
        assert!(e.contains("memory_mib"), "{e}");
        let e = parse("kernel = \"relative/vmlinux\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel must be an absolute path"), "{e}");
        let e = RuntimeConfig::from_file(Path::new("/nonexistent/hull.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/hull.toml"), "{e}");
    }
}
