//! The NSM service (program 100024, version 1) of nsmd as an [`nsm_rpc::Service`]: argument
//! decoding, the procedures of an [`Instance`], and what flows out of them (lockd callbacks,
//! HA callouts).
//!
//! Malformed arguments get GARBAGE_ARGS; everything else gets the procedure's result.
#![warn(missing_docs)]

pub mod callback;
pub mod callout;
pub mod core;
pub mod error;
pub mod instance;
pub mod metrics;
pub mod names;
pub mod ownership;
pub mod registered;
pub mod service;

use std::sync::Arc;

use bytes::Bytes;
use nsm_rpc::{Outcome, Request, Service};
use nsm_xdr::nsm::{
    Mon, MonId, MyId, SM_MON, SM_NOTIFY, SM_NULL, SM_PROG, SM_SIMU_CRASH, SM_STAT, SM_UNMON,
    SM_UNMON_ALL, SM_VERS, SmName, StatChge,
};
use nsm_xdr::{Decode, Encode, from_bytes};
use tracing::debug;

use crate::metrics::CallOutcome;

pub use error::Error;
pub use instance::{CrashNotify, DirectAuthority, Instance, InstanceConfig, StateAuthority};
pub use registered::{OpenRegistered, Registered};
pub use service::{Route, ServicePrivileges, ServiceSpec, Services, ServicesConfig};

/// The NSM program of one nsmd process: the node instance, and the service instances picked
/// by the local address a call was sent to.
#[derive(Debug)]
pub struct NsmService {
    instance: Arc<Instance>,
    services: Option<Arc<Services>>,
}

impl NsmService {
    /// The service of `instance` alone.
    pub fn new(instance: Arc<Instance>) -> Self {
        Self {
            instance,
            services: None,
        }
    }

    /// The service of the node instance `instance` and the service instances `services`.
    pub fn with_services(instance: Arc<Instance>, services: Arc<Services>) -> Self {
        Self {
            instance,
            services: Some(services),
        }
    }

    /// The service instances an SM_MON of `mon_name` is recorded in: exactly those whose
    /// service address the client is connected to over TCP, when the kernel shows it
    /// (`/proc/net/tcp{,6}`); otherwise every active one (`active`).
    async fn mon_targets(
        &self,
        node: &Arc<Instance>,
        mon_name: &[u8],
        active: &[Arc<Instance>],
    ) -> Vec<Arc<Instance>> {
        let Some(services) = self.services.clone() else {
            return Vec::new();
        };
        let addrs = node.addresses_of(mon_name);
        if addrs.is_empty() {
            // A host name not looked up yet: look it up for the next SM_MON of this host;
            // this one must not wait for DNS.
            node.look_up_later(mon_name);
        }
        // Reading /proc/net/tcp{,6} takes a while on a server with many connections: not on
        // the thread that serves every other request.
        let exact = if addrs.is_empty() {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || services.attribute(&addrs))
                .await
                .unwrap_or_default()
        };
        if exact.is_empty() {
            debug!(
                instances = active.len(),
                "SM_MON: client's service address unknown, recorded in every active service instance"
            );
            active.to_vec()
        } else {
            debug!(
                instances = exact.len(),
                "SM_MON: attributed by the client's TCP connections"
            );
            exact
        }
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
        let route = self
            .services
            .as_ref()
            .map_or(Route::Node, |s| s.route(req.local.ip()));
        // lockd's SM_MON does not say which server address the client used: SM_MON and
        // SM_UNMON* to the node record the peer in (or remove it from) every service instance
        // active here too (`also_in`, listed only for those procedures).
        let (inst, also_in) = match route {
            // Calls to a service address go to that instance only.
            Route::Service(i) => (i, None),
            Route::Silent => return Outcome::Drop,
            Route::Node => (self.instance.clone(), self.services.as_ref()),
        };
        let also = || also_in.map(|s| s.active()).unwrap_or_default();
        let inst = &inst;
        let mut outcome = CallOutcome::Success;
        let r = async {
            Ok::<_, Outcome>(match req.proc_ {
                SM_NULL => {
                    args::<()>(&req)?;
                    Outcome::Success(Bytes::new())
                }
                SM_STAT => results(&inst.stat(args::<SmName<'_>>(&req)?.mon_name.as_bytes())),
                SM_MON => {
                    let m = args::<Mon<'_>>(&req)?;
                    let r = inst.mon(req.peer, &m).await;
                    if r.res_stat != nsm_xdr::nsm::Res::StatSucc {
                        outcome = CallOutcome::Fail;
                    }
                    let also = also();
                    if r.res_stat == nsm_xdr::nsm::Res::StatSucc && !also.is_empty() {
                        // Each instance has its own state directory and commit thread: the
                        // writes go to all of them at once, the reply waits for the slowest.
                        let targets = self
                            .mon_targets(inst, m.mon_id.mon_name.as_bytes(), &also)
                            .await;
                        futures_util::future::join_all(targets.iter().map(|s| s.mon(req.peer, &m)))
                            .await;
                    }
                    results(&r)
                }
                SM_UNMON => {
                    let id = args::<MonId<'_>>(&req)?;
                    for s in &also() {
                        s.unmon(req.peer, &id).await;
                    }
                    results(&inst.unmon(req.peer, &id).await)
                }
                SM_UNMON_ALL => {
                    let id = args::<MyId<'_>>(&req)?;
                    for s in &also() {
                        s.unmon_all(req.peer, &id).await;
                    }
                    results(&inst.unmon_all(req.peer, &id).await)
                }
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
        let r = r.unwrap_or_else(|o| o);
        let outcome = match r {
            Outcome::GarbageArgs => CallOutcome::GarbageArgs,
            Outcome::ProcUnavail => CallOutcome::ProcUnavail,
            _ => outcome,
        };
        inst.metrics().call(req.proc_, outcome);
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};

    use nsm_rpc::{Auth, Transport};
    use nsm_xdr::nsm::{NLM_PROG, Res, SmStat, SmStatRes};

    use super::*;
    use crate::callback::CallbackPolicy;

    /// service.rs's test spec without the kernel's unlock files.
    fn spec(name: &str, addr: &str, dir: &Path) -> ServiceSpec {
        ServiceSpec {
            unlock_ip: false,
            exports: vec![],
            ..service::tests::spec(name, addr, dir)
        }
    }

    fn call(proc_: u32, args: Vec<u8>) -> Request {
        Request {
            xid: 1,
            prog: SM_PROG,
            vers: SM_VERS,
            proc_,
            auth: Auth::None,
            peer: "127.0.0.1:700".parse().unwrap(),
            local: "127.0.0.1:662".parse::<SocketAddr>().unwrap(),
            transport: Transport::Tcp,
            args: Bytes::from(args),
        }
    }

    /// lockd's SM_MON to the node is recorded in the node and in every active service
    /// instance (the client's connection is not known), durably, before the reply; its
    /// SM_UNMON removes it from all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sm_mon_to_the_node_is_recorded_in_every_active_service_instance() {
        let d = tempfile::tempdir().unwrap();
        let dir = |n: &str| -> PathBuf {
            let p = d.path().join(n);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let (node_dir, a, b) = (dir("node"), dir("a"), dir("b"));
        let cfg = ServicesConfig {
            owner: "test".into(),
            proc_root: dir("proc"),
            ha_callout: None,
            callback: CallbackPolicy::default(),
            rpcbind_port: 111,
            privileged: None,
            registered: Registered::open(),
            run_dir: None,
        };
        let services = Arc::new(Services::new(
            cfg,
            vec![spec("a", "127.0.0.9", &a), spec("b", "127.0.0.10", &b)],
        ));
        services.takeover("a").await.unwrap();
        services.takeover("b").await.unwrap();
        let (node, _) = Instance::open(InstanceConfig::new("node", node_dir)).unwrap();
        let svc = NsmService::with_services(node.clone(), services.clone());

        let mon = Mon {
            mon_id: MonId {
                mon_name: nsm_xdr::Opaque::new(b"198.51.100.20").unwrap(),
                my_id: MyId {
                    my_name: nsm_xdr::Opaque::new(b"srv").unwrap(),
                    my_prog: NLM_PROG,
                    my_vers: 3,
                    my_proc: 16,
                },
            },
            priv_: [3; 16],
        };
        let out = svc.call(call(SM_MON, mon.to_xdr())).await;
        let ok = SmStatRes {
            res_stat: Res::StatSucc,
            state: node.state(),
        };
        assert_eq!(out, Outcome::Success(Bytes::from(ok.to_xdr())));
        let on_disk = |p: &Path| -> Vec<String> {
            let (r, _) = nsm_store::StateDir::open(p)
                .unwrap()
                .load(nsm_store::Dir::Sm)
                .unwrap();
            r.into_iter().map(|(f, _)| f).collect()
        };
        let peer = vec![("198.51.100.20".to_owned(), "srv".to_owned())];
        for (name, p) in [("a", &a), ("b", &b)] {
            assert_eq!(services.peers(name).unwrap(), peer, "{name}");
            assert_eq!(on_disk(p), ["198.51.100.20"], "{name}");
        }
        assert_eq!(node.peers(), peer);

        let out = svc.call(call(SM_UNMON, mon.mon_id.to_xdr())).await;
        let state = SmStat {
            state: node.state(),
        };
        assert_eq!(out, Outcome::Success(Bytes::from(state.to_xdr())));
        for (name, p) in [("a", &a), ("b", &b)] {
            assert!(services.peers(name).unwrap().is_empty(), "{name}");
            assert!(on_disk(p).is_empty(), "{name}");
        }
        assert!(node.is_empty());
        services.release("a").await.unwrap();
        services.release("b").await.unwrap();
    }
}
