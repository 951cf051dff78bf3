//! The NSM service (program 100024, version 1) of nsmd as an [`nsm_rpc::Service`]: argument
//! decoding, the procedures of an [`Instance`], and what flows out of them (lockd callbacks,
//! HA callouts).
//!
//! Malformed arguments get GARBAGE_ARGS; everything else gets the procedure's result.
#![warn(missing_docs)]

pub mod callback;
pub mod callout;
pub mod instance;
pub mod names;

use std::sync::Arc;

use bytes::Bytes;
use nsm_rpc::{Outcome, Request, Service};
use nsm_xdr::nsm::{
    Mon, MonId, MyId, SM_MON, SM_NOTIFY, SM_NULL, SM_PROG, SM_SIMU_CRASH, SM_STAT, SM_UNMON,
    SM_UNMON_ALL, SM_VERS, SmName, StatChge,
};
use nsm_xdr::{Decode, Encode, from_bytes};
use tracing::debug;

pub use instance::{DirectAuthority, Instance, InstanceConfig, StateAuthority};

/// The NSM program of one nsmd process, serving one instance.
#[derive(Debug)]
pub struct NsmService {
    instance: Arc<Instance>,
}

impl NsmService {
    /// The service of `instance`.
    pub fn new(instance: Arc<Instance>) -> Self {
        Self { instance }
    }

    /// The instance served.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }
}

fn results<T: Encode>(v: &T) -> Outcome {
    Outcome::Success(Bytes::from(v.to_xdr()))
}

fn args<'a, T: Decode<'a>>(req: &'a Request) -> Result<T, Outcome> {
    from_bytes::<T>(&req.args).map_err(|e| {
        debug!(error = %e, "garbage arguments");
        Outcome::GarbageArgs
    })
}

impl Service for NsmService {
    fn versions(&self, prog: u32) -> Option<(u32, u32)> {
        (prog == SM_PROG).then_some((SM_VERS, SM_VERS))
    }

    async fn call(&self, req: Request) -> Outcome {
        let inst = &self.instance;
        let r = async {
            Ok::<_, Outcome>(match req.proc_ {
                SM_NULL => {
                    args::<()>(&req)?;
                    Outcome::Success(Bytes::new())
                }
                SM_STAT => results(&inst.stat(args::<SmName<'_>>(&req)?.mon_name.as_bytes())),
                SM_MON => results(&inst.mon(req.peer, &args::<Mon<'_>>(&req)?).await),
                SM_UNMON => results(&inst.unmon(req.peer, &args::<MonId<'_>>(&req)?).await),
                SM_UNMON_ALL => results(&inst.unmon_all(req.peer, &args::<MyId<'_>>(&req)?).await),
                SM_SIMU_CRASH => {
                    args::<()>(&req)?;
                    inst.simu_crash(req.peer).await;
                    Outcome::Success(Bytes::new())
                }
                SM_NOTIFY => {
                    inst.notify(req.peer, &args::<StatChge<'_>>(&req)?);
                    Outcome::Success(Bytes::new())
                }
                _ => Outcome::ProcUnavail,
            })
        }
        .await;
        r.unwrap_or_else(|o| o)
    }
}
