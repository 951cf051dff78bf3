//! What can go wrong in the service layer: one enum for the callers (nsmd's control socket,
//! nsmctl), each variant saying what failed, on which instance, file or address, and what
//! the operator does about it. [`Error::kind`] is the machine-readable word nsmctl's `--json`
//! shows beside the message.

use std::path::PathBuf;
use std::time::Duration;

use nsm_store::StoreError;

use crate::ownership::OwnershipError;

/// An error of a service instance's takeover, release, notification or state bump.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No instance of that name is configured (no `NAME.toml` in the instances directory).
    #[error("no instance named {name:?}")]
    NoSuchInstance {
        /// The name asked for.
        name: String,
    },
    /// A takeover of an instance already active here (nsmctl answers "already active"
    /// before asking; this is the race of two takeovers).
    #[error("instance {name} is already active on this node")]
    AlreadyActive {
        /// The instance.
        name: String,
    },
    /// The instance is not active on this node (peers, notify, release).
    #[error("instance {name} is not active on this node")]
    NotActive {
        /// The instance.
        name: String,
    },
    /// Another node took the instance over: this node sends nothing for it until released.
    #[error(
        "instance {name} is fenced: another node took it over, so this node sends nothing for \
         it; release it here (nsmctl release {name})"
    )]
    Fenced {
        /// The instance.
        name: String,
    },
    /// The instance's ownership file: locked by another holder, fenced by a newer epoch,
    /// unreadable, or released.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// The state directory (records, `state`, `sm/` to `sm.bak/`).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The instance could not be opened on its state directory.
    #[error(transparent)]
    Instance(#[from] crate::instance::InstanceError),
    /// The state directory is not laid out so that nsmd, as the user it runs as, can use it.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A file nsmd writes itself could not be opened or written.
    #[error("cannot write {path}: {source}", path = .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file nsmd opens could not be opened.
    #[error("{path}: {source}", path = .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The root helper refused or failed (its message says what and where), or is gone.
    #[error("{message}")]
    Helper {
        /// What the helper said, or why it could not be asked.
        message: String,
    },
    /// A takeover found kernel locks held here since before nsmd restarted and could not
    /// release them: the takeover is not done.
    #[error("instance {name} not taken over: its old kernel locks stay: {failed}")]
    OldLocksKept {
        /// The instance.
        name: String,
        /// Each kernel file and text that could not be written.
        failed: String,
    },
    /// A release could not write the kernel's lock release (`unlock_ip`,
    /// `unlock_filesystem`). When `held`, the instance stays held here, silent, with its
    /// ownership, so no other node takes it over without `--force`.
    #[error(
        "instance {name} not released: {failed}{}",
        if *.held {
            "; it stays held here, unanswered, with its ownership: fix the cause and release it again"
        } else {
            ""
        }
    )]
    KernelRelease {
        /// The instance.
        name: String,
        /// Each kernel file and text that could not be written.
        failed: String,
        /// Whether the instance stays held (it was active).
        held: bool,
    },
    /// The instance's takeover command failed: the takeover is abandoned.
    #[error("instance {name}: {failure}")]
    TakeoverCommand {
        /// The instance.
        name: String,
        /// What happened to the command.
        failure: CommandFailure,
    },
    /// The readiness gate did not open in time: the takeover is undone, nothing notified.
    #[error(
        "instance {name} not taken over: the readiness gate did not open ({why}). Nothing was \
         notified: the peers stay in sm.bak/, state {state} stays. Start the lock manager (or \
         correct [readiness] in the instance file) and take it over again"
    )]
    NotReady {
        /// The instance.
        name: String,
        /// What was still missing when the gate's time ran out.
        why: String,
        /// The state number, bumped and kept.
        state: i32,
    },
    /// A service address of an instance to resume is no longer on any interface here.
    #[error("service address {address} is no longer on this node")]
    AddressGone {
        /// The address.
        address: std::net::IpAddr,
    },
    /// The notifier could not bind its source addresses or send.
    #[error(transparent)]
    Notify(#[from] nsm_notify::NotifyError),
    /// The announcement of a new state failed or stopped (another node took the instance
    /// over while it notified: [`nsm_notify::AnnounceError::Fenced`]).
    #[error(transparent)]
    Announce(#[from] nsm_notify::AnnounceError),
    /// nsmd stopped before it was registered with rpcbind: nothing was notified.
    #[error("nsmd stopped before it was registered with rpcbind: the peers stay in sm.bak/")]
    Unregistered,
    /// A background task of the operation panicked or was cancelled (a bug: the log says
    /// more).
    #[error("internal error: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// The machine-readable kind of the error, as nsmctl `--json` shows it (`"kind"`):
    /// one lowercase word or words joined by `-`, stable across releases.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoSuchInstance { .. } => "no-such-instance",
            Self::AlreadyActive { .. } => "already-active",
            Self::NotActive { .. } => "not-active",
            Self::Fenced { .. } | Self::Announce(nsm_notify::AnnounceError::Fenced(_)) => "fenced",
            Self::Announce(nsm_notify::AnnounceError::GateClosed) => "unregistered",
            Self::Announce(
                nsm_notify::AnnounceError::Retire { .. } | nsm_notify::AnnounceError::Load { .. },
            ) => "store",
            Self::Announce(_) => "notify",
            Self::Ownership(OwnershipError::Fenced { .. }) => "fenced",
            Self::Ownership(OwnershipError::Busy { .. }) => "busy",
            Self::Ownership(_) => "ownership",
            Self::Store(_) | Self::Instance(_) => "store",
            Self::Layout(_) => "layout",
            Self::Write { .. } | Self::Open { .. } => "io",
            Self::Helper { .. } => "helper",
            Self::OldLocksKept { .. } | Self::KernelRelease { .. } => "kernel-release",
            Self::TakeoverCommand { .. } => "takeover-command",
            Self::NotReady { .. } => "readiness",
            Self::AddressGone { .. } => "address-gone",
            Self::Notify(_) => "notify",
            Self::Unregistered => "unregistered",
            Self::Task(_) => "internal",
        }
    }
}

/// Why a service's state directory cannot be used by nsmd as the user it runs as; each
/// message says the commands that fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The state directory does not exist or cannot be read.
    #[error(
        "{dir}: {source} (create it on the service's shared storage: owned by root, mode 0755, \
         with sm/ and sm.bak/ owned by {user}, as which nsmd runs)",
        dir = .dir.display()
    )]
    Missing {
        /// The state directory.
        dir: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
        /// The user nsmd runs as.
        user: String,
    },
    /// nsmd runs without root (no helper) and cannot write the directory.
    #[error(
        "{dir} is not writable by {user}, as which nsmd runs (started without root)",
        dir = .dir.display()
    )]
    NotWritable {
        /// The state directory.
        dir: PathBuf,
        /// The user nsmd runs as.
        user: String,
    },
    /// The directory belongs to neither root nor nsmd's user.
    #[error(
        "{dir} belongs to uid {uid} and nsmd runs as {user}: make it root's (`chown root: {dir}`, \
         mode 0755) with sm/ and sm.bak/ owned by {user}, as nfs-utils lays out /var/lib/nfs",
        dir = .dir.display()
    )]
    WrongOwner {
        /// The state directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
        /// The user nsmd runs as.
        user: String,
    },
    /// `sm/` or `sm.bak/` is missing or not writable by nsmd's user.
    #[error(
        "{path} must be a directory nsmd ({user}) can write: `mkdir -p {sm} {bak}; chown {user} {sm} {bak}`",
        path = .path.display(),
        sm = .dir.join("sm").display(),
        bak = .dir.join("sm.bak").display()
    )]
    Subdirectory {
        /// `sm/` or `sm.bak/`.
        path: PathBuf,
        /// The state directory.
        dir: PathBuf,
        /// The user nsmd runs as.
        user: String,
    },
}

/// What happened to an instance's takeover command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandFailure {
    /// It could not be started.
    #[error("cannot run the takeover command `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// Waiting for it failed.
    #[error("the takeover command `{command}` failed: {source}")]
    Wait {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// It did not finish in time and was killed.
    #[error(
        "the takeover command `{command}` did not finish within {timeout:?} (killed); the \
         takeover is abandoned: fix the command or raise [takeover] timeout_seconds"
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// It exited with a failure.
    #[error(
        "the takeover command `{command}` failed ({status}): {stderr}; the takeover is \
         abandoned (ownership released, nothing notified)"
    )]
    Exit {
        /// The command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The messages nsmctl shows, word for word as they were when they were strings: the
    /// Pacemaker agent's exit reasons and the operators' runbooks quote them.
    #[test]
    fn messages_say_what_failed_where_and_what_to_do() {
        let name = "svc1".to_owned();
        let cases: Vec<(Error, &str, &str)> = vec![
            (
                Error::NoSuchInstance { name: name.clone() },
                "no instance named \"svc1\"",
                "no-such-instance",
            ),
            (
                Error::Fenced { name: name.clone() },
                "instance svc1 is fenced: another node took it over, so this node sends nothing \
                 for it; release it here (nsmctl release svc1)",
                "fenced",
            ),
            (
                Error::KernelRelease {
                    name: name.clone(),
                    failed: "cannot write \"10.0.0.1\" to /proc/fs/nfsd/unlock_ip: EINVAL".into(),
                    held: true,
                },
                "instance svc1 not released: cannot write \"10.0.0.1\" to \
                 /proc/fs/nfsd/unlock_ip: EINVAL; it stays held here, unanswered, with its \
                 ownership: fix the cause and release it again",
                "kernel-release",
            ),
            (
                Error::KernelRelease {
                    name: name.clone(),
                    failed: "x".into(),
                    held: false,
                },
                "instance svc1 not released: x",
                "kernel-release",
            ),
            (
                Error::NotReady {
                    name: name.clone(),
                    why: "not ready after 2s: program 100021 is not registered at 10.0.0.1:111"
                        .into(),
                    state: 7,
                },
                "instance svc1 not taken over: the readiness gate did not open (not ready after \
                 2s: program 100021 is not registered at 10.0.0.1:111). Nothing was notified: \
                 the peers stay in sm.bak/, state 7 stays. Start the lock manager (or correct \
                 [readiness] in the instance file) and take it over again",
                "readiness",
            ),
            (
                LayoutError::Subdirectory {
                    path: "/srv/a/sm".into(),
                    dir: "/srv/a".into(),
                    user: "statd".into(),
                }
                .into(),
                "/srv/a/sm must be a directory nsmd (statd) can write: `mkdir -p /srv/a/sm \
                 /srv/a/sm.bak; chown statd /srv/a/sm /srv/a/sm.bak`",
                "layout",
            ),
            (
                Error::TakeoverCommand {
                    name: name.clone(),
                    failure: CommandFailure::Timeout {
                        command: "grace 10.0.0.1".into(),
                        timeout: Duration::from_secs(5),
                    },
                },
                "instance svc1: the takeover command `grace 10.0.0.1` did not finish within 5s \
                 (killed); the takeover is abandoned: fix the command or raise [takeover] \
                 timeout_seconds",
                "takeover-command",
            ),
            (
                OwnershipError::Fenced {
                    path: "/srv/a/.nsmd-owner".into(),
                    held: 3,
                    found: 4,
                }
                .into(),
                "fenced: /srv/a/.nsmd-owner has epoch 4, this node owns epoch 3",
                "fenced",
            ),
            (
                OwnershipError::Busy {
                    path: "/srv/a/.nsmd-owner".into(),
                    holder: "epoch 4 owner n2 pid 4242".into(),
                }
                .into(),
                "held by another owner (epoch 4 owner n2 pid 4242): /srv/a/.nsmd-owner is \
                 locked; is the instance active on another node? release it there first",
                "busy",
            ),
        ];
        for (e, message, kind) in cases {
            assert_eq!(e.to_string(), message);
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
