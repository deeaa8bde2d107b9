//! Conversions between hull's types and containerd's: times, task states, rootfs mounts, the
//! guest's cgroup figures as cgroup v2 `Metrics`, OCI JSON in protobuf `Any`s, and the task
//! model's errors as ttrpc statuses.

use std::time::SystemTime;

use containerd_shim::protos::api;
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc;
use hull_agent_protocol::ContainerStats;

use crate::rootfs::RootMount;
use crate::task::{ErrorKind, Status, TaskError};

/// The type URL containerd (typeurl) knows cgroup v2 metrics by.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// containerd's state of a process.
pub fn task_status(s: Status) -> api::Status {
    match s {
        Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Paused => api::Status::PAUSED,
        Status::Stopped => api::Status::STOPPED,
    }
}

/// containerd's rootfs mounts (CreateTaskRequest) as the shim mounts them.
pub fn rootfs_mounts(req: &[api::Mount]) -> Vec<RootMount> {
    req.iter()
        .map(|m| RootMount {
            fstype: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// The rootfs mounts back as containerd's (for TaskCreate).
pub fn api_mounts(mounts: &[RootMount]) -> Vec<api::Mount> {
    mounts
        .iter()
        .map(|m| api::Mount {
            type_: m.fstype.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
            ..Default::default()
        })
        .collect()
}

/// The guest's cgroup v2 figures of a container as containerd's `Metrics`.
pub fn metrics(s: &ContainerStats) -> Metrics {
    let m = &s.memory;
    let memory = MemoryStat {
        anon: m.anon,
        file: m.file,
        kernel_stack: m.kernel_stack,
        slab: m.slab,
        sock: m.sock,
        shmem: m.shmem,
        file_mapped: m.file_mapped,
        file_dirty: m.file_dirty,
        file_writeback: m.file_writeback,
        inactive_anon: m.inactive_anon,
        active_anon: m.active_anon,
        inactive_file: m.inactive_file,
        active_file: m.active_file,
        unevictable: m.unevictable,
        pgfault: m.pgfault,
        pgmajfault: m.pgmajfault,
        usage: m.usage,
        // cgroup v2's "max" (no limit) is u64::MAX in containerd's metrics.
        usage_limit: m.limit.unwrap_or(u64::MAX),
        swap_usage: m.swap_usage,
        swap_limit: m.swap_limit.unwrap_or(u64::MAX),
        max_usage: m.max_usage,
        ..Default::default()
    };
    let cpu = CPUStat {
        usage_usec: s.cpu.usage_usec,
        user_usec: s.cpu.user_usec,
        system_usec: s.cpu.system_usec,
        nr_periods: s.cpu.nr_periods,
        nr_throttled: s.cpu.nr_throttled,
        throttled_usec: s.cpu.throttled_usec,
        ..Default::default()
    };
    let pids = PidsStat {
        current: s.pids.current,
        limit: s.pids.limit.unwrap_or(0),
        ..Default::default()
    };
    let io = IOStat {
        usage: s
            .io
            .iter()
            .map(|d| IOEntry {
                major: d.major,
                minor: d.minor,
                rbytes: d.rbytes,
                wbytes: d.wbytes,
                rios: d.rios,
                wios: d.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let events = MemoryEvents {
        oom: m.oom,
        oom_kill: m.oom_kill,
        ..Default::default()
    };
    Metrics {
        pids: MessageField::some(pids),
        cpu: MessageField::some(cpu),
        memory: MessageField::some(memory),
        io: MessageField::some(io),
        memory_events: MessageField::some(events),
        ..Default::default()
    }
}

/// `metrics` packed for StatsResponse.
pub fn metrics_any(s: &ContainerStats) -> Result<Any, ttrpc::Error> {
    let value = metrics(s)
        .write_to_bytes()
        .map_err(|e| status(ttrpc::Code::INTERNAL, format!("encoding metrics: {e}")))?;
    Ok(Any {
        type_url: METRICS_V2_TYPE_URL.to_string(),
        value,
        ..Default::default()
    })
}

/// An OCI runtime-spec object (Process, LinuxResources) from the JSON containerd packs in an
/// `Any`; `what` names it in errors.
pub fn from_any<T: serde::de::DeserializeOwned>(
    any: Option<&Any>,
    what: &str,
) -> Result<T, ttrpc::Error> {
    let Some(any) = any else {
        return Err(invalid(format!("{what} is missing")));
    };
    serde_json::from_slice(&any.value).map_err(|e| {
        invalid(format!(
            "{what} ({}): invalid JSON: {e}",
            if any.type_url.is_empty() {
                "no type"
            } else {
                &any.type_url
            }
        ))
    })
}

pub fn status(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

pub fn invalid(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::INVALID_ARGUMENT, msg)
}

pub fn not_found(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, msg)
}

pub fn precondition(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::FAILED_PRECONDITION, msg)
}

pub fn internal(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::UNKNOWN, msg)
}

pub fn already_exists(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::ALREADY_EXISTS, msg)
}

pub fn unimplemented(msg: impl Into<String>) -> ttrpc::Error {
    status(ttrpc::Code::UNIMPLEMENTED, msg)
}

/// The ttrpc status for a task model error (containerd turns the code back into its errdefs).
pub fn task_error(e: &TaskError) -> ttrpc::Error {
    let msg = e.message().to_string();
    match e.kind() {
        ErrorKind::NotFound => not_found(msg),
        ErrorKind::AlreadyExists => already_exists(msg),
        ErrorKind::FailedPrecondition => precondition(msg),
        ErrorKind::InvalidArgument => invalid(msg),
        ErrorKind::Unimplemented => unimplemented(msg),
        ErrorKind::Internal => internal(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_agent_protocol::{CgroupCpu, CgroupIoDevice, CgroupMemory, CgroupPids};

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        let ts = timestamp(t);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 5));
    }

    #[test]
    fn metrics_conversion() {
        let s = ContainerStats {
            memory: CgroupMemory {
                usage: 4096,
                limit: Some(1 << 20),
                anon: 1000,
                file: 2000,
                oom_kill: 1,
                swap_limit: None,
                ..Default::default()
            },
            cpu: CgroupCpu {
                usage_usec: 7,
                user_usec: 5,
                system_usec: 2,
                ..Default::default()
            },
            pids: CgroupPids {
                current: 3,
                limit: Some(100),
            },
            io: vec![CgroupIoDevice {
                major: 254,
                minor: 0,
                rbytes: 10,
                wbytes: 20,
                rios: 1,
                wios: 2,
            }],
        };
        let any = metrics_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        let mem = m.memory.as_ref().unwrap();
        assert_eq!((mem.usage, mem.usage_limit), (4096, 1 << 20));
        assert_eq!((mem.anon, mem.file, mem.swap_limit), (1000, 2000, u64::MAX));
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (7, 5, 2)
        );
        assert_eq!((m.pids.current, m.pids.limit), (3, 100));
        assert_eq!(m.io.usage.len(), 1);
        assert_eq!((m.io.usage[0].major, m.io.usage[0].wbytes), (254, 20));
    }

    #[test]
    fn oci_json_from_any() {
        let any = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: br#"{"args":["sh","-c","echo hi"],"cwd":"/","env":["PATH=/bin"],"terminal":false,"user":{"uid":0,"gid":0}}"#.to_vec(),
            ..Default::default()
        };
        let p: oci_spec::runtime::Process = from_any(Some(&any), "exec spec").unwrap();
        assert_eq!(
            p.args().as_deref(),
            Some(&["sh".to_string(), "-c".into(), "echo hi".into()][..])
        );
        let bad = Any {
            value: b"{".to_vec(),
            ..Default::default()
        };
        let e = from_any::<oci_spec::runtime::Process>(Some(&bad), "exec spec").unwrap_err();
        assert!(format!("{e:?}").contains("exec spec"), "{e:?}");
        let e = from_any::<oci_spec::runtime::Process>(None, "exec spec").unwrap_err();
        assert!(format!("{e:?}").contains("missing"), "{e:?}");
        let r: oci_spec::runtime::LinuxResources = from_any(
            Some(&Any {
                value: br#"{"pids":{"limit":20},"memory":{"limit":67108864}}"#.to_vec(),
                ..Default::default()
            }),
            "resources",
        )
        .unwrap();
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(20));
    }

    #[test]
    fn error_codes() {
        let cases = [
            (TaskError::NotFound("x".into()), ttrpc::Code::NOT_FOUND),
            (
                TaskError::AlreadyExists("x".into()),
                ttrpc::Code::ALREADY_EXISTS,
            ),
            (
                TaskError::FailedPrecondition("x".into()),
                ttrpc::Code::FAILED_PRECONDITION,
            ),
            (
                TaskError::InvalidArgument("x".into()),
                ttrpc::Code::INVALID_ARGUMENT,
            ),
            (
                TaskError::Unimplemented("x".into()),
                ttrpc::Code::UNIMPLEMENTED,
            ),
            (TaskError::Internal("x".into()), ttrpc::Code::UNKNOWN),
        ];
        for (e, code) in cases {
            match task_error(&e) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code, "{e:?}");
                    assert_eq!(s.message(), "x");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rootfs_mounts_from_the_request_and_back() {
        let m = api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "lowerdir=/a".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
            ..Default::default()
        };
        let mounts = rootfs_mounts(std::slice::from_ref(&m));
        assert_eq!(
            mounts,
            vec![RootMount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "lowerdir=/a".into(),
                    "upperdir=/u".into(),
                    "workdir=/w".into()
                ],
            }]
        );
        assert_eq!(api_mounts(&mounts), vec![m]);
    }
}
