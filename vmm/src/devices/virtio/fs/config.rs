//! A virtio-fs share as the user describes it is plain data in `hull_vmm_api::fs`
//! ([`FsConfig`], [`CachePolicy`], the `--fs` flag); this maps it onto fuse-backend-rs.

pub use hull_vmm_api::fs::{CachePolicy, FsConfig};

/// fuse-backend-rs's passthrough `CachePolicy` for a share's policy.
pub(super) fn backend_cache_policy(p: CachePolicy) -> fuse_backend_rs::passthrough::CachePolicy {
    use fuse_backend_rs::passthrough::CachePolicy as B;
    match p {
        CachePolicy::Never => B::Never,
        CachePolicy::Metadata => B::Metadata,
        CachePolicy::Auto => B::Auto,
        CachePolicy::Always => B::Always,
    }
}
