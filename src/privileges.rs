//! Dropping root, as nfs-utils' `nsm_drop_privileges` does (`support/nsm/file.c`): become the
//! owner of the state directory's `sm/` (not of the directory itself: CVE-2019-3689), keep
//! only CAP_NET_BIND_SERVICE (for the privileged source port of lockd callbacks), and empty
//! the capability bounding set. When `sm/` is owned by root, nsmd stays root and says how to
//! choose another user.
//!
//! Must run before any thread is started: capability sets are per thread, and the runtime's
//! threads inherit what the main thread has when they are created.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, getuid, setgroups, setresgid, setresuid};
use tracing::{info, warn};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not root to begin with: nothing to drop.
    NotRoot,
    /// `sm/` belongs to root: still root.
    StayedRoot,
    /// Now running as this user and group, with CAP_NET_BIND_SERVICE only.
    To(u32, u32),
}

/// Drops to the owner of `state_dir/sm`.
pub fn drop_to_owner_of_sm(state_dir: &Path) -> Result<Dropped> {
    if !getuid().is_root() {
        return Ok(Dropped::NotRoot);
    }
    let sm = state_dir.join("sm");
    let meta = std::fs::symlink_metadata(&sm).with_context(|| {
        format!(
            "cannot inspect {} to choose the user to run as",
            sm.display()
        )
    })?;
    let (uid, gid) = (meta.uid(), meta.gid());
    if uid == 0 {
        warn!(
            "running as root: {} is owned by root; `chown statd {}` (and sm.bak) to run as another user",
            sm.display(),
            sm.display()
        );
        return Ok(Dropped::StayedRoot);
    }
    let keep: CapsHashSet = [Capability::CAP_NET_BIND_SERVICE].into_iter().collect();
    // Empty the bounding set first, while CAP_SETPCAP is still held (as nfs-utils does): no
    // program nsmd runs (the HA callout) can gain a capability back.
    for c in caps::all() {
        caps::drop(None, CapSet::Bounding, c)
            .with_context(|| format!("cannot drop {c} from the capability bounding set"))?;
    }
    nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
    setgroups(&[]).context("cannot clear the supplementary groups")?;
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    setresgid(g, g, g).with_context(|| format!("cannot switch to group {gid}"))?;
    setresuid(u, u, u).with_context(|| format!("cannot switch to user {uid}"))?;
    caps::set(None, CapSet::Permitted, &keep).context("cannot keep CAP_NET_BIND_SERVICE")?;
    caps::set(None, CapSet::Effective, &keep).context("cannot keep CAP_NET_BIND_SERVICE")?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())
        .context("cannot clear inheritable capabilities")?;
    nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS)")?;
    info!(
        uid,
        gid,
        "dropped privileges to the owner of {}; kept CAP_NET_BIND_SERVICE",
        sm.display()
    );
    Ok(Dropped::To(uid, gid))
}

/// Whether [`drop_to_owner_of_sm`] will give up root for this state directory.
pub fn will_drop(state_dir: &Path) -> bool {
    getuid().is_root()
        && std::fs::symlink_metadata(state_dir.join("sm")).is_ok_and(|m| m.uid() != 0)
}

/// Whether the state directory itself belongs to the user nsmd drops to (the owner of `sm/`),
/// as in RHEL's layout (`/var/lib/nfs/statd` owned by rpcuser) rather than Debian's (the
/// directory is root's). nsmd then writes `state` itself, as that user, like nfs-utils
/// (sm-notify bumps it after dropping privileges there, so the file is that user's): root
/// (the capability-less helper) could not create a file in that directory, and should not
/// write where the unprivileged user decides what the names are. Only the kernel's
/// root-owned `nsm_local_state` still goes through the helper.
pub fn owns_state_dir_after_drop(state_dir: &Path) -> bool {
    getuid().is_root()
        && match (
            std::fs::metadata(state_dir),
            std::fs::symlink_metadata(state_dir.join("sm")),
        ) {
            (Ok(base), Ok(sm)) => sm.uid() != 0 && base.uid() == sm.uid(),
            _ => false,
        }
}

/// The environment variable that turns an nsmd process into the state helper.
pub const HELPER_ENV: &str = "NSMD_STATE_HELPER";
const HELPER_KERNEL_ENV: &str = "NSMD_STATE_HELPER_KERNEL";
const HELPER_INSTANCES_ENV: &str = "NSMD_STATE_HELPER_INSTANCES";
const HELPER_PROC_ENV: &str = "NSMD_STATE_HELPER_PROC";

/// A root helper process that does the few things nsmd needs root for after it dropped
/// privileges: bumping the state number in the node's root-owned `state` file, writing the
/// kernel's root-owned `nsm_local_state`, and for service instances
/// ([`nsm_statd::ServicePrivileges`]): bumping a service's root-owned `state`, creating its
/// root-owned ownership file and writing the next epoch to it (nsmd opens it for reading and
/// holds the lock), and writing a service's configured addresses and exports to the
/// kernel's root-owned `unlock_ip` and `unlock_filesystem`. It is nsmd itself, re-executed before the drop with every
/// capability removed (uid 0 alone may write root's own files), and it answers one line per
/// request ([`HelperRequest`], [`HelperReply`]: JSON) on a socket pair until nsmd exits.
///
/// nsmd names a service instance, never a path: the helper reads the instance files itself
/// (from the directory root gave nsmd) and writes only in a state directory that root owns
/// and that nothing above it lets another user replace.
///
/// When the node's state directory belongs to nsmd's user ([`owns_state_dir_after_drop`],
/// decided when the helper starts), nsmd bumps the node's `state` itself and asks the
/// helper only to tell the kernel; the helper then refuses to bump there.
#[derive(Debug)]
pub struct StateHelper {
    conn: std::sync::Mutex<(std::io::BufReader<UnixStream>, UnixStream)>,
    _child: std::process::Child,
    /// The node's state directory, bumped by nsmd itself (no kernel file: the helper
    /// writes that).
    direct: Option<nsm_statd::DirectAuthority>,
}

use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

impl StateHelper {
    /// Starts the helper for `state_dir` and the kernel file `nsm_local_state`, and for the
    /// service instances configured in `instances` (`--instances`), whose kernel files are
    /// under `proc_root`.
    pub fn spawn(
        state_dir: &Path,
        nsm_local_state: &Path,
        instances: Option<&Path>,
        proc_root: &Path,
    ) -> Result<Self> {
        let (ours, theirs) = UnixStream::pair().context("socketpair for the state helper")?;
        let exe = std::env::current_exe().context("cannot find nsmd's own executable")?;
        let mut cmd = Command::new(&exe);
        if let Some(dir) = instances {
            cmd.env(HELPER_INSTANCES_ENV, dir);
        }
        let child = cmd
            .env(HELPER_ENV, state_dir)
            .env(HELPER_KERNEL_ENV, nsm_local_state)
            .env(HELPER_PROC_ENV, proc_root)
            .stdin(Stdio::from(OwnedFd::from(theirs.try_clone()?)))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .with_context(|| format!("cannot start the state helper {}", exe.display()))?;
        let reader = std::io::BufReader::new(ours.try_clone()?);
        let direct = if owns_state_dir_after_drop(state_dir) {
            info!(
                "{} belongs to the owner of its sm/: nsmd writes its state file itself",
                state_dir.display()
            );
            Some(nsm_statd::DirectAuthority {
                dir: std::sync::Arc::new(nsm_store::StateDir::open(state_dir).with_context(
                    || format!("cannot use the state directory {}", state_dir.display()),
                )?),
                nsm_local_state: None,
            })
        } else {
            None
        };
        Ok(Self {
            conn: std::sync::Mutex::new((reader, ours)),
            _child: child,
            direct,
        })
    }

    /// Asks the helper; its refusal (or its absence) as [`nsm_statd::Error::Helper`].
    fn ask(&self, request: &HelperRequest) -> std::result::Result<HelperReply, nsm_statd::Error> {
        let gone = |e: std::io::Error| nsm_statd::Error::Helper {
            message: format!("state helper gone: {e}"),
        };
        let mut c = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        writeln!(c.1, "{}", request.line()).map_err(gone)?;
        let mut reply = String::new();
        c.0.by_ref()
            .take(MAX_HELPER_LINE as u64)
            .read_line(&mut reply)
            .map_err(gone)?;
        match serde_json::from_str::<HelperReply>(&reply) {
            Ok(HelperReply::Refused(message)) => Err(nsm_statd::Error::Helper { message }),
            Ok(r) => Ok(r),
            Err(_) => Err(nsm_statd::Error::Helper {
                message: format!("state helper exited or said {reply:?}"),
            }),
        }
    }

    fn state(&self, request: &HelperRequest) -> std::result::Result<i32, nsm_statd::Error> {
        match self.ask(request)? {
            HelperReply::State(n) => Ok(n),
            other => Err(unexpected(request, &other)),
        }
    }

    fn done(&self, request: &HelperRequest) -> std::result::Result<(), nsm_statd::Error> {
        match self.ask(request)? {
            HelperReply::Done => Ok(()),
            other => Err(unexpected(request, &other)),
        }
    }
}

fn unexpected(request: &HelperRequest, reply: &HelperReply) -> nsm_statd::Error {
    nsm_statd::Error::Helper {
        message: format!("the state helper answered {reply:?} to {request:?}"),
    }
}

impl nsm_statd::ServicePrivileges for StateHelper {
    fn create_owner(&self, name: &str) -> std::result::Result<(), nsm_statd::Error> {
        self.done(&HelperRequest::CreateOwner {
            name: name.to_owned(),
        })
    }

    fn next_epoch(&self, name: &str, owner: &str) -> std::result::Result<u64, nsm_statd::Error> {
        // One word in the ownership file's line (`epoch N owner NODE pid PID`).
        let owner: String = owner
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        let request = HelperRequest::NextEpoch {
            name: name.to_owned(),
            owner,
        };
        match self.ask(&request)? {
            HelperReply::Epoch(e) => Ok(e),
            other => Err(unexpected(&request, &other)),
        }
    }

    fn bump(&self, name: &str) -> std::result::Result<i32, nsm_statd::Error> {
        self.state(&HelperRequest::BumpInstance {
            name: name.to_owned(),
        })
    }

    fn unlock(
        &self,
        name: &str,
        file: &str,
        text: &str,
    ) -> std::result::Result<(), nsm_statd::Error> {
        let file = match file {
            "unlock_ip" => KernelFile::UnlockIp,
            "unlock_filesystem" => KernelFile::UnlockFilesystem,
            _ => {
                return Err(nsm_statd::Error::Helper {
                    message: format!("{file:?} is not a kernel file the helper writes"),
                });
            }
        };
        self.done(&HelperRequest::Unlock {
            name: name.to_owned(),
            file,
            text: text.to_owned(),
        })
    }
}

impl nsm_statd::StateAuthority for StateHelper {
    fn bump(&self) -> std::result::Result<i32, nsm_statd::Error> {
        match &self.direct {
            Some(d) => {
                let state = d.bump()?;
                self.publish(state)?;
                Ok(state)
            }
            None => self.state(&HelperRequest::Bump),
        }
    }

    fn publish(&self, state: i32) -> std::result::Result<(), nsm_statd::Error> {
        self.done(&HelperRequest::Publish { state })
    }
}

/// The longest line nsmd and its root helper exchange (with its newline): an export path
/// (up to PATH_MAX, 4096 bytes, escaped) and room around it. The helper refuses a longer
/// request without keeping it.
pub const MAX_HELPER_LINE: usize = 16 * 1024;

/// What nsmd, unprivileged, asks its root helper: one JSON object per line
/// (`{"bump-instance":{"name":"svc1"}}`, `"bump"`). The helper is nsmd's own executable,
/// started by it: both sides are always of the same version. It trusts nothing in a
/// request: it names an instance, never a path, and every field is checked
/// (`HelperRequest::check`, then the instance files the helper reads itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum HelperRequest {
    /// Bump the node's state (its directory is root's) and tell the kernel.
    Bump,
    /// Tell the kernel the node's state (`nsm_local_state`).
    Publish {
        /// The state number.
        state: i32,
    },
    /// Bump service instance `name`'s state by two, durably.
    BumpInstance {
        /// The instance.
        name: String,
    },
    /// Create instance `name`'s (empty) ownership file when it is missing.
    CreateOwner {
        /// The instance.
        name: String,
    },
    /// Write the next epoch to instance `name`'s ownership file, with `owner` (this node)
    /// and nsmd's pid; nsmd holds the lock.
    NextEpoch {
        /// The instance.
        name: String,
        /// This node's name: one word.
        owner: String,
    },
    /// Write `text`, one of instance `name`'s configured addresses or exports, to the
    /// kernel's `file`.
    Unlock {
        /// The instance.
        name: String,
        /// Which kernel file.
        file: KernelFile,
        /// The address or export.
        text: String,
    },
}

/// The kernel files the helper writes for a release (`<proc_root>/fs/nfsd/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelFile {
    /// `unlock_ip`: the NLM locks held through an address.
    UnlockIp,
    /// `unlock_filesystem`: the NLM locks on an export.
    UnlockFilesystem,
}

impl KernelFile {
    /// The file's name under `fs/nfsd`.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnlockIp => "unlock_ip",
            Self::UnlockFilesystem => "unlock_filesystem",
        }
    }
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum HelperReply {
    /// The state number written (`bump`, `bump-instance`).
    State(i32),
    /// The epoch written (`next-epoch`).
    Epoch(u64),
    /// Done (`publish`, `create-owner`, `unlock`).
    Done,
    /// Not done: why, for nsmd's log and nsmctl.
    Refused(String),
}

impl HelperRequest {
    /// The request's line (without the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The instance the request names, if any.
    fn instance(&self) -> Option<&str> {
        match self {
            Self::Bump | Self::Publish { .. } => None,
            Self::BumpInstance { name }
            | Self::CreateOwner { name }
            | Self::NextEpoch { name, .. }
            | Self::Unlock { name, .. } => Some(name),
        }
    }

    /// Refuses fields no honest nsmd sends: an instance name that could not be a file
    /// name in the instances directory, an owner that is not one printable word.
    fn check(&self) -> std::result::Result<(), String> {
        if let Some(name) = self.instance()
            && (name.is_empty()
                || name.len() > 255
                || name == "."
                || name == ".."
                || name == "node"
                || name
                    .chars()
                    .any(|c| c == '/' || c.is_whitespace() || c.is_control()))
        {
            return Err(format!("{name:?} cannot be an instance name"));
        }
        if let Self::NextEpoch { owner, .. } = self
            && (owner.is_empty()
                || owner.len() > 255
                || owner.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "{owner:?} cannot be an owner (one word of at most 255 bytes)"
            ));
        }
        if let Self::Unlock { text, .. } = self
            && (text.is_empty() || text.contains(['\n', '\0']))
        {
            return Err(format!(
                "{text:?} cannot be written to the kernel file (one word, no line break)"
            ));
        }
        Ok(())
    }
}

impl HelperReply {
    /// The reply's line (without the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads one request line of at most [`MAX_HELPER_LINE`] bytes from `input`: `None` at end
/// of input, `Some(Err)` with the reply when it is not a request (too long: the rest of it
/// is read and dropped, so the next line is read whole).
fn read_request(input: &mut impl BufRead) -> Option<std::result::Result<HelperRequest, String>> {
    let mut line = Vec::new();
    match Read::take(&mut *input, MAX_HELPER_LINE as u64).read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    if line.last() != Some(&b'\n') {
        if line.len() < MAX_HELPER_LINE {
            // End of input within the line: nsmd is gone.
            return None;
        }
        // Skip to the end of the line, a buffer at a time.
        loop {
            let (skip, end) = match input.fill_buf() {
                Ok([]) | Err(_) => return None,
                Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => (i + 1, true),
                    None => (buf.len(), false),
                },
            };
            input.consume(skip);
            if end {
                break;
            }
        }
        return Some(Err(format!(
            "request longer than {MAX_HELPER_LINE} bytes refused"
        )));
    }
    Some(
        serde_json::from_slice::<HelperRequest>(&line)
            .map_err(|e| format!("not a request: {e}"))
            .and_then(|r| r.check().map(|()| r)),
    )
}

/// Answers the requests on `input` with `handle`, one reply line each on `out`, until end of
/// input or a write fails.
fn serve(
    input: &mut impl BufRead,
    out: &mut impl Write,
    mut handle: impl FnMut(HelperRequest) -> std::result::Result<HelperReply, String>,
) {
    while let Some(request) = read_request(input) {
        let reply = request
            .and_then(&mut handle)
            .unwrap_or_else(HelperReply::Refused);
        if writeln!(out, "{}", reply.line())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
    }
}

/// The helper's main loop (nsmd started with [`HELPER_ENV`] set): one request per line on
/// stdin, one answer per line on stdout, until end of input.
pub fn helper_main() -> std::process::ExitCode {
    use nsm_statd::StateAuthority;
    let (Some(dir), Some(kernel)) = (
        std::env::var_os(HELPER_ENV),
        std::env::var_os(HELPER_KERNEL_ENV),
    ) else {
        return std::process::ExitCode::FAILURE;
    };
    // Nothing but uid 0: enough for root's own files, nothing else.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        let _ = caps::clear(None, set);
    }
    let authority = match nsm_store::StateDir::open(Path::new(&dir)) {
        Ok(d) => nsm_statd::DirectAuthority {
            dir: std::sync::Arc::new(d),
            nsm_local_state: Some(kernel.into()),
        },
        Err(e) => {
            eprintln!("nsmd state helper: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let instances = std::env::var_os(HELPER_INSTANCES_ENV).map(std::path::PathBuf::from);
    let mut services = Services {
        specs: instances
            .as_deref()
            .map(|d| nsmd_instances(d).unwrap_or_default())
            .unwrap_or_default(),
        proc_root: std::env::var_os(HELPER_PROC_ENV)
            .map_or_else(|| "/proc".into(), std::path::PathBuf::from),
    };
    let handle = |request: HelperRequest| {
        // The instance files as they are now (nsmd re-reads them on SIGHUP); a file that
        // does not parse keeps what was read before.
        if request.instance().is_some()
            && let Some(d) = &instances
            && let Some(specs) = nsmd_instances(d)
        {
            services.specs = specs;
        }
        match request {
            HelperRequest::Bump => root_owned(Path::new(&dir))
                .and_then(|()| authority.bump().map_err(|e| e.to_string()))
                .map(HelperReply::State),
            HelperRequest::Publish { state } => authority
                .publish(state)
                .map(|()| HelperReply::Done)
                .map_err(|e| e.to_string()),
            HelperRequest::BumpInstance { name } => services.bump(&name).map(HelperReply::State),
            HelperRequest::CreateOwner { name } => {
                services.open_owner(&name).map(|_| HelperReply::Done)
            }
            HelperRequest::NextEpoch { name, owner } => {
                services.next_epoch(&name, &owner).map(HelperReply::Epoch)
            }
            HelperRequest::Unlock { name, file, text } => services
                .unlock(&name, file, &text)
                .map(|()| HelperReply::Done),
        }
    };
    serve(
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        handle,
    );
    std::process::ExitCode::SUCCESS
}

/// Ok when `dir` belongs to root: the helper writes the node's `state` only there (in a
/// directory of nsmd's user, nsmd writes it itself).
fn root_owned(dir: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.uid() == 0 => Ok(()),
        Ok(m) => Err(format!(
            "{} belongs to uid {}, not root: nsmd writes its state itself",
            dir.display(),
            m.uid()
        )),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// The service instances, as the helper (root) read them from the instance files.
struct Services {
    specs: Vec<nsm_statd::ServiceSpec>,
    proc_root: std::path::PathBuf,
}

fn nsmd_instances(dir: &Path) -> Option<Vec<nsm_statd::ServiceSpec>> {
    match crate::config::instances::load_dir(dir) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("nsmd state helper: {e}");
            None
        }
    }
}

impl Services {
    fn find(&self, name: &str) -> std::result::Result<&nsm_statd::ServiceSpec, String> {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no instance named {name:?}"))
    }

    /// The instance's state directory, resolved, once it is safe for root to write in.
    fn dir(&self, name: &str) -> std::result::Result<std::path::PathBuf, String> {
        trusted_dir(&self.find(name)?.state_dir)
    }

    fn bump(&self, name: &str) -> std::result::Result<i32, String> {
        let dir = self.dir(name)?;
        let d = nsm_store::StateDir::open(&dir).map_err(|e| e.to_string())?;
        d.state(true).map_err(|e| e.to_string())
    }

    /// The next epoch in the instance's ownership file (nsmd holds its lock).
    fn next_epoch(&self, name: &str, owner: &str) -> std::result::Result<u64, String> {
        let dir = self.dir(name)?;
        let mut file = self.open_owner(name)?;
        nsm_statd::ownership::write_next_epoch(
            &dir,
            &mut file,
            owner,
            std::os::unix::process::parent_id(),
        )
        .map_err(|e| e.to_string())
    }

    fn open_owner(&self, name: &str) -> std::result::Result<std::fs::File, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir(name)?.join(nsm_statd::ownership::OWNER_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.metadata() {
            Ok(m) if m.is_file() => Ok(file),
            _ => Err(format!("{} is not a regular file", path.display())),
        }
    }

    /// Writes `text` to `<proc_root>/fs/nfsd/<file>` when it is one of the instance's
    /// configured addresses (`unlock_ip`) or exports (`unlock_filesystem`). The kernel takes
    /// one newline-terminated word (`write_unlock_ip`, `write_unlock_fs` in
    /// `fs/nfsd/nfsctl.c`) and answers EINVAL to anything else, so the newline is added here.
    fn unlock(&self, name: &str, file: KernelFile, text: &str) -> std::result::Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let spec = self.find(name)?;
        let allowed = match file {
            KernelFile::UnlockIp => {
                spec.unlock_ip && spec.addresses.iter().any(|a| a.to_string() == text)
            }
            KernelFile::UnlockFilesystem => spec.exports.iter().any(|e| e.as_os_str() == text),
        };
        let file = file.name();
        if !allowed {
            return Err(format!(
                "{text:?} is not in instance {name}'s [release] {file}"
            ));
        }
        let path = self.proc_root.join("fs/nfsd").join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// `dir`, resolved, when root may write in it on behalf of the unprivileged daemon: the
/// directory belongs to root and only root can write it, and so does every directory above
/// it (sticky ones like `/tmp` excepted), so the daemon can neither plant a link in it nor
/// replace it. Otherwise an error that says what to change.
fn trusted_dir(dir: &Path) -> std::result::Result<std::path::PathBuf, String> {
    let real = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (i, d) in real.ancestors().enumerate() {
        let m = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let sticky = i > 0 && m.mode() & 0o1000 != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} belongs to uid {} with mode {:o}: a service's state directory, and every \
                 directory above it, must belong to root and be writable by root only \
                 (`chown root: {}; chmod 755 {}`), with sm/ and sm.bak/ owned by nsmd's user",
                d.display(),
                m.uid(),
                m.mode() & 0o7777,
                d.display(),
                d.display()
            ));
        }
    }
    Ok(real)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn services(proc_root: &Path, state_dir: &Path) -> Services {
        let text = format!(
            "hostname = \"svc.example.test\"\naddresses = [\"127.0.0.9\"]\nstate_dir = \"{}\"\n\
             [release]\nexports = [\"/export/a\"]\n",
            state_dir.display()
        );
        Services {
            specs: vec![
                crate::config::instances::parse(Path::new("svc.toml"), "svc", &text).unwrap(),
            ],
            proc_root: proc_root.to_owned(),
        }
    }

    #[test]
    fn helper_lines_byte_for_byte_and_back() {
        let vectors = [
            (HelperRequest::Bump, r#""bump""#),
            (
                HelperRequest::Publish { state: 7 },
                r#"{"publish":{"state":7}}"#,
            ),
            (
                HelperRequest::BumpInstance { name: "svc".into() },
                r#"{"bump-instance":{"name":"svc"}}"#,
            ),
            (
                HelperRequest::CreateOwner { name: "svc".into() },
                r#"{"create-owner":{"name":"svc"}}"#,
            ),
            (
                HelperRequest::NextEpoch {
                    name: "svc".into(),
                    owner: "n1".into(),
                },
                r#"{"next-epoch":{"name":"svc","owner":"n1"}}"#,
            ),
            (
                HelperRequest::Unlock {
                    name: "svc".into(),
                    file: KernelFile::UnlockFilesystem,
                    text: "/export/a b".into(),
                },
                r#"{"unlock":{"name":"svc","file":"unlock_filesystem","text":"/export/a b"}}"#,
            ),
        ];
        for (r, line) in vectors {
            assert_eq!(r.line(), line);
            let mut input = std::io::Cursor::new(format!("{line}\n"));
            assert_eq!(read_request(&mut input), Some(Ok(r)));
        }
        for (r, line) in [
            (HelperReply::State(5), r#"{"state":5}"#),
            (HelperReply::Epoch(1 << 40), r#"{"epoch":1099511627776}"#),
            (HelperReply::Done, r#""done""#),
            (
                HelperReply::Refused("no \"x\"".into()),
                r#"{"refused":"no \"x\""}"#,
            ),
        ] {
            assert_eq!(r.line(), line);
            assert_eq!(serde_json::from_str::<HelperReply>(line).unwrap(), r);
        }
    }

    /// The unprivileged daemon may be compromised: what it sends the root helper that is
    /// not a well-formed request is refused with a reply, before anything is done, and the
    /// helper goes on answering.
    #[test]
    fn the_helper_refuses_hostile_lines_and_goes_on() {
        let long = format!(
            "{{\"bump-instance\":{{\"name\":\"{}\"}}}}",
            "a".repeat(3 * MAX_HELPER_LINE)
        );
        let hostile: [(&str, &str); 13] = [
            ("bump-instance svc", "not a request"),
            ("{\"bump-instance\":", "not a request"),
            (
                r#"{"chmod":{"path":"/etc/shadow"}}"#,
                "unknown variant `chmod`",
            ),
            (
                r#"{"bump-instance":{"name":"svc","path":"/etc"}}"#,
                "unknown field `path`",
            ),
            (&long, "longer than 16384 bytes"),
            (
                r#"{"bump-instance":{"name":"../../etc"}}"#,
                "cannot be an instance name",
            ),
            (
                r#"{"create-owner":{"name":"a/b"}}"#,
                "cannot be an instance name",
            ),
            (
                r#"{"bump-instance":{"name":""}}"#,
                "cannot be an instance name",
            ),
            (
                r#"{"bump-instance":{"name":"node"}}"#,
                "cannot be an instance name",
            ),
            (
                r#"{"next-epoch":{"name":"svc","owner":"n1\nepoch 99"}}"#,
                "cannot be an owner",
            ),
            (
                r#"{"unlock":{"name":"svc","file":"../../etc/passwd","text":"x"}}"#,
                "unknown variant `../../etc/passwd`",
            ),
            (r#"{"publish":{"state":"3; rm"}}"#, "not a request"),
            (
                r#"{"unlock":{"name":"svc","file":"unlock_ip","text":"10.0.0.1\n10.0.0.2"}}"#,
                "no line break",
            ),
        ];
        let mut input = String::new();
        for (line, _) in &hostile {
            input.push_str(line);
            input.push('\n');
        }
        // Answered after all of them: nothing above threw the helper off its lines.
        input.push_str("{\"bump-instance\":{\"name\":\"svc\"}}\n");
        let mut out = Vec::new();
        let mut handled = Vec::new();
        serve(&mut std::io::Cursor::new(input), &mut out, |r| {
            handled.push(r);
            Ok(HelperReply::State(5))
        });
        assert_eq!(
            handled,
            [HelperRequest::BumpInstance { name: "svc".into() }],
            "only the well-formed request reached the handler"
        );
        let out = String::from_utf8(out).unwrap();
        let replies: Vec<HelperReply> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), hostile.len() + 1, "{out}");
        for ((line, says), reply) in hostile.iter().zip(&replies) {
            match reply {
                HelperReply::Refused(why) => assert!(why.contains(says), "{line}: {why}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert_eq!(replies.last(), Some(&HelperReply::State(5)));
    }

    #[test]
    fn the_helper_writes_only_the_configured_addresses_and_exports() {
        let d = tempfile::tempdir().unwrap();
        let nfsd = d.path().join("fs/nfsd");
        std::fs::create_dir_all(&nfsd).unwrap();
        std::fs::write(nfsd.join("unlock_ip"), "").unwrap();
        std::fs::write(nfsd.join("unlock_filesystem"), "").unwrap();
        let s = services(d.path(), &d.path().join("svc"));
        let (ip, fs) = (KernelFile::UnlockIp, KernelFile::UnlockFilesystem);
        assert!(s.unlock("svc", ip, "127.0.0.8").is_err());
        assert!(s.unlock("other", ip, "127.0.0.9").is_err());
        assert!(s.unlock("svc", fs, "127.0.0.9").is_err());
        assert!(s.unlock("svc", fs, "/export/b").is_err());
        assert!(s.bump("other").is_err());
        s.unlock("svc", ip, "127.0.0.9").unwrap();
        s.unlock("svc", fs, "/export/a").unwrap();
        assert_eq!(
            std::fs::read_to_string(nfsd.join("unlock_ip")).unwrap(),
            "127.0.0.9\n"
        );
        assert_eq!(
            std::fs::read_to_string(nfsd.join("unlock_filesystem")).unwrap(),
            "/export/a\n"
        );
        // Never created: only kernel files that exist are written.
        std::fs::remove_file(nfsd.join("unlock_ip")).unwrap();
        assert!(s.unlock("svc", ip, "127.0.0.9").is_err());
        assert!(!nfsd.join("unlock_ip").exists());
    }

    #[test]
    fn the_helper_writes_only_in_directories_only_root_can_change() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("svc");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let s = services(d.path(), &dir);
        let e = s.bump("svc").unwrap_err();
        assert!(e.contains("must belong to root"), "{e}");
        assert!(s.open_owner("svc").is_err());
        assert!(!dir.join("state").exists() && !dir.join(".nsmd-owner").exists());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if getuid().is_root() && trusted_dir(d.path()).is_ok() {
            assert_eq!(s.bump("svc").unwrap(), 3);
            assert_eq!(s.next_epoch("svc", "me").unwrap(), 1);
            assert_eq!(s.next_epoch("svc", "me").unwrap(), 2);
        }
    }
}
