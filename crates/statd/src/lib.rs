//! The NSM service (program 100024, version 1) as an [`nsm_rpc::Service`].
//!
//! Today it answers SM_NULL. Every other procedure's arguments are decoded with their `.x`
//! type first, so malformed arguments get GARBAGE_ARGS as the protocol requires, and then
//! answered PROC_UNAVAIL: SM_STAT, SM_MON, SM_UNMON, SM_UNMON_ALL, SM_SIMU_CRASH and SM_NOTIFY
//! are not served yet, and nsmd does not pretend they are.
#![warn(missing_docs)]

use bytes::Bytes;
use nsm_rpc::{Outcome, Request, Service};
use nsm_xdr::nsm::{
    Mon, MonId, MyId, SM_MON, SM_NOTIFY, SM_NULL, SM_PROG, SM_SIMU_CRASH, SM_STAT, SM_UNMON,
    SM_UNMON_ALL, SM_VERS, SmName, StatChge,
};
use nsm_xdr::{XdrError, from_bytes};
use tracing::debug;

/// The NSM program of one nsmd process.
#[derive(Debug, Default)]
pub struct NsmService {}

impl NsmService {
    /// A service with nothing monitored.
    pub fn new() -> Self {
        Self {}
    }
}

/// Decodes the arguments of `proc_` with its `.x` type; `None` for an unknown procedure.
pub fn check_args(proc_: u32, args: &[u8]) -> Option<Result<(), XdrError>> {
    Some(match proc_ {
        SM_NULL | SM_SIMU_CRASH => from_bytes::<()>(args),
        SM_STAT => from_bytes::<SmName<'_>>(args).map(drop),
        SM_MON => from_bytes::<Mon<'_>>(args).map(drop),
        SM_UNMON => from_bytes::<MonId<'_>>(args).map(drop),
        SM_UNMON_ALL => from_bytes::<MyId<'_>>(args).map(drop),
        SM_NOTIFY => from_bytes::<StatChge<'_>>(args).map(drop),
        _ => return None,
    })
}

impl Service for NsmService {
    fn versions(&self, prog: u32) -> Option<(u32, u32)> {
        (prog == SM_PROG).then_some((SM_VERS, SM_VERS))
    }

    async fn call(&self, req: Request) -> Outcome {
        match check_args(req.proc_, &req.args) {
            None => Outcome::ProcUnavail,
            Some(Err(e)) => {
                debug!(error = %e, "garbage arguments");
                Outcome::GarbageArgs
            }
            Some(Ok(())) if req.proc_ == SM_NULL => Outcome::Success(Bytes::new()),
            Some(Ok(())) => {
                debug!("procedure not served yet");
                Outcome::ProcUnavail
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn argument_checks() {
        assert_eq!(check_args(SM_NULL, &[]), Some(Ok(())));
        assert!(matches!(
            check_args(SM_NULL, &[0, 0, 0, 0]),
            Some(Err(XdrError::TrailingBytes { count: 4 }))
        ));
        assert!(matches!(
            check_args(SM_STAT, &[0, 0, 0, 9, b'a']),
            Some(Err(XdrError::Truncated { .. }))
        ));
        assert_eq!(
            check_args(SM_STAT, &[0, 0, 0, 1, b'a', 0, 0, 0]),
            Some(Ok(()))
        );
        assert_eq!(check_args(7, &[]), None);
    }
}
