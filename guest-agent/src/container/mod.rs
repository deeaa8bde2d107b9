//! OCI containers inside the sandbox VM: the next step after plain processes (`crate::process`).
//! Empty for now; nothing here pretends to work yet.
//!
//! What it will own: creating, starting, exec-ing into and killing OCI containers through
//! youki's libcontainer, from a bundle whose root file system the host has shared and the agent
//! has mounted (`mount` calls); the table of containers by id and each one's state (created,
//! running, stopped) and cgroup under `/sys/fs/cgroup`. The service layer (`crate::service`)
//! will map the container requests onto it, as it maps process requests onto `crate::process`.
//!
//! What it must not do:
//! - wait for children itself: `waitpid(-1)` belongs to the reaper (`Processes::reap`), so a
//!   container's init and exec'd processes must be entered in the process table before they can
//!   exit, the way `Processes::spawn` does, so `wait`, `signal` and stream connections work on
//!   them unchanged;
//! - fork or clone on an async worker, or hold the process-table lock across anything slow:
//!   libcontainer's setup runs on a blocking thread;
//! - trust the host's OCI spec beyond what it checks: paths stay inside the bundle, ids are
//!   validated, and errors name the field, like `spawn` and `mount` do;
//! - know about connections or frames (that is `crate::server`'s job).
