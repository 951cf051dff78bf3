//! Test hosts for nsmd's black-box tests: network namespaces on a private bridge, each with its
//! own `/run` (so each can run its own rpcbind), `/var/lib/nfs`, hosts file and hostname.
//!
//! ```no_run
//! use std::time::Duration;
//! use nsm_testhost::{Lab, require};
//!
//! # fn main() -> Result<(), nsm_testhost::Error> {
//! if !require("my_test", &["rpcbind", "rpcinfo"]) {
//!     return Ok(());
//! }
//! let lab = Lab::new("my_test")?;
//! let a = lab.host("a", &["198.51.100.10/24", "2001:db8::10/64"])?;
//! let b = lab.host("b", &["198.51.100.11/24", "2001:db8::11/64"])?;
//! let _rpcbind_b = b.start_rpcbind()?;
//! let out = a.run_ok(&["/usr/sbin/rpcinfo", "-p", "b"], Duration::from_secs(5))?;
//! assert!(out.contains("portmapper"));
//! # Ok(())
//! # }
//! ```
//!
//! Everything is removed on drop, also while a test panics. What a killed test process left
//! behind is removed by the next process that uses the harness ([`cleanup_stale`]).
//!
//! Things to know:
//! - Only `/run`, `/var/lib/nfs`, `/etc/hosts` and `/etc/nsswitch.conf` are private to a
//!   host; the rest of the file system (`/tmp`, `/etc`, ...) is the machine's. The private
//!   directories are plain directories outside ([`Host::run_dir`], [`Host::nfs_dir`]).
//!   [`Host::mount_private`] gives a host its own copy of any other directory (a cluster
//!   node's `/var/lib/pacemaker`, `/etc/corosync`, `/dev/shm`).
//! - There is no pid namespace: pids are the machine's, and `Proc::pid` is the command's
//!   own pid (`nsenter` execs it).
//! - A daemon that forks away from a `Proc` or a `Host::run` command keeps running until its
//!   host is dropped; the host then SIGKILLs everything in its namespaces.
//! - After moving an address between hosts, call [`Host::flush_neigh`] on the hosts that
//!   talked to it, or their packets keep going to the old owner's MAC address.

#![warn(missing_docs)]

/// Prints `nsm-testhost: <message>` straight to the stderr handle, which libtest does not
/// capture: a leak or a cleanup failure must be seen even when the test passes.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::exec::note_line(&format!($($arg)*))
    };
}

mod error;
mod exec;
mod host;
mod lab;
mod prereq;
mod process;

pub use error::Error;
pub use exec::{Signal, tool_path};
pub use host::{Host, RpcRegistration};
pub use lab::{BASE_DIR, Lab, cleanup_stale};
pub use prereq::{HARNESS_TOOLS, REQUIRE_ENV, prerequisites, require};
pub use process::Proc;
