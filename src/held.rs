//! Where nsmd records the service instances this node holds: `instances/` beside its control
//! socket (`/run/nsmd/instances/NAME.active`, on the /run tmpfs, so a reboot forgets it as the
//! kernel forgets its locks; see `nsm_statd::ServicesConfig::run_dir`). `nsmctl state` reads
//! it when nsmd does not answer; `nsmctl release --offline` removes a file there.

use std::path::{Path, PathBuf};

/// The run directory of the nsmd whose control socket is `control_socket`.
pub fn run_dir(control_socket: &Path) -> PathBuf {
    control_socket
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("instances")
}
