//! Registration with the local rpcbind, and what to tell the operator when it fails.

use std::net::SocketAddr;

use nsm_rpc::rpcbind::Rpcbind;
use nsm_xdr::rpcbind::netid;
use tracing::{info, warn};

/// The program's registrations: one per listener.
#[derive(Debug)]
pub struct Registration {
    rpcbind: Rpcbind,
    prog: u32,
    vers: u32,
    endpoints: Vec<(bool, SocketAddr)>,
}

impl Registration {
    /// Registrations of `prog`/`vers` for each `(is_tcp, address)`.
    pub fn new(prog: u32, vers: u32, endpoints: Vec<(bool, SocketAddr)>) -> Self {
        Self {
            rpcbind: Rpcbind::default(),
            prog,
            vers,
            endpoints,
        }
    }

    /// Uses this rpcbind (e.g. another AF_LOCAL socket path).
    pub fn with_rpcbind(mut self, rpcbind: Rpcbind) -> Self {
        self.rpcbind = rpcbind;
        self
    }

    /// Clears stale registrations, then registers every listener. Failures are logged with
    /// what to do; serving goes on either way.
    pub async fn register(&self) -> bool {
        let via = self.rpcbind.describe();
        if let Err(e) = self.rpcbind.unset(self.prog, self.vers).await {
            warn!(
                "rpcbind is not reachable ({e}): program {} version {} is NOT registered. \
                 nsmd keeps serving, but lockd and remote peers find statd through rpcbind: \
                 start rpcbind (e.g. `systemctl start rpcbind`) and restart nsmd",
                self.prog, self.vers
            );
            return false;
        }
        let mut all = true;
        for &(tcp, addr) in &self.endpoints {
            let id = netid(tcp, addr.is_ipv6());
            match self.rpcbind.set(self.prog, self.vers, id, addr).await {
                Ok(true) => {}
                Ok(false) => {
                    all = false;
                    warn!(
                        "rpcbind at {via} refused to register program {} version {} on {id} \
                         port {}: another owner holds it (another statd?); stop it and restart nsmd",
                        self.prog,
                        self.vers,
                        addr.port()
                    );
                }
                Err(e) => {
                    all = false;
                    warn!(
                        "registering {id} port {} with rpcbind failed: {e}",
                        addr.port()
                    );
                }
            }
        }
        if all {
            info!(via = %via, "registered program {} version {} with rpcbind", self.prog, self.vers);
        }
        all
    }

    /// Removes the registrations (on shutdown).
    pub async fn unregister(&self) {
        match self.rpcbind.unset(self.prog, self.vers).await {
            Ok(_) => info!("unregistered from rpcbind"),
            Err(e) => warn!("could not unregister from rpcbind: {e}"),
        }
    }
}
