//! Launching and driving one `hull-vmm` process.
//!
//! [`VmmProcess::launch`] writes the VM's configuration (`vm.json`) into a directory of its
//! own, starts hull-vmm in its own process group (so a terminal's Ctrl-C or the caller's
//! process group signals do not reach it), with its stdout (the guest console, when the
//! configuration sends it to stdout) in `console.log` and its stderr (its log and the line that
//! says why it stopped) in `vmm.log`, and sockets wherever the configuration puts them
//! (normally the same directory). [`VmmProcess::api`] talks to its API socket;
//! [`VmmProcess::wait_timeout`] tells why it exited, from the exit statuses hull-vmm documents
//! (`hull_vmm_api::exit`).
//!
//! This module links nothing of the VMM: the configuration and messages are plain data from
//! `hull-vmm-api`.

mod process;

pub use hull_vmm_api as api;
pub use process::{
    api_request, api_request_within, private_file, Launch, VmmError, VmmExited, VmmProcess,
    CONFIG_FILE, CONSOLE_FILE, LOG_FILE,
};
