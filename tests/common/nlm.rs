//! A small NFSv3 lock client for the Ganesha tests: MOUNT3 MNT and NFS3 LOOKUP for a file
//! handle, then NLM4 TEST, LOCK (with `reclaim`) and UNLOCK (RFC 1813 and the Open Group's
//! XNFS NLM4). The wire types live here, not in nsm-xdr: nsmd never sends or parses them,
//! so they stay out of the daemon's dependency tree. They use nsm-xdr's codec primitives
//! and nsm-rpc's client (TCP, one connection per call, AUTH_NONE).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BufMut;
use nsm_rpc::client::{CallOptions, Proc, call_tcp};
use nsm_rpc::rpcbind::getport;
use nsm_xdr::rpcbind::IPPROTO_TCP;
use nsm_xdr::{Decoder, Encode, Opaque, XdrError};

const MOUNT_PROG: u32 = 100_005;
const NFS_PROG: u32 = 100_003;
/// NLM's program number.
pub const NLM_PROG: u32 = 100_021;

/// An NLM4 status (`nlm4_stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nlm4Stat {
    /// NLM4_GRANTED
    Granted,
    /// NLM4_DENIED: someone else holds a conflicting lock.
    Denied,
    /// NLM4_DENIED_GRACE_PERIOD: the server is in grace and this is not a reclaim.
    DeniedGracePeriod,
    /// Any other status, by number.
    Other(u32),
}

impl Nlm4Stat {
    fn of(v: u32) -> Self {
        match v {
            0 => Self::Granted,
            1 => Self::Denied,
            4 => Self::DeniedGracePeriod,
            n => Self::Other(n),
        }
    }
}

/// `nlm4_lock`: the lock a client names.
struct Lock<'a> {
    caller_name: &'a [u8],
    fh: &'a [u8],
    oh: &'a [u8],
    svid: i32,
    /// `l_offset` and `l_len` (0: to the end of the file).
    range: (u64, u64),
}

impl Encode for Lock<'_> {
    fn encoded_len(&self) -> usize {
        opaque_len(self.caller_name) + opaque_len(self.fh) + opaque_len(self.oh) + 4 + 8 + 8
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_opaque(out, self.caller_name);
        put_opaque(out, self.fh);
        put_opaque(out, self.oh);
        out.put_i32(self.svid);
        out.put_u64(self.range.0);
        out.put_u64(self.range.1);
    }
}

fn opaque_len(b: &[u8]) -> usize {
    4 + b.len().div_ceil(4) * 4
}

fn put_opaque<B: BufMut>(out: &mut B, b: &[u8]) {
    // Every opaque here is a name, a handle or a cookie: far below u32::MAX.
    out.put_u32(b.len() as u32);
    out.put_slice(b);
    out.put_bytes(0, opaque_len(b) - 4 - b.len());
}

/// `nlm4_lockargs`, `nlm4_unlockargs` and `nlm4_testargs` in one: the fields each sends.
enum Args<'a> {
    Test {
        exclusive: bool,
        lock: Lock<'a>,
    },
    Lock {
        lock: Lock<'a>,
        reclaim: bool,
        state: i32,
    },
    Unlock {
        lock: Lock<'a>,
    },
}

const COOKIE: &[u8] = b"nsmdtest";

impl Encode for Args<'_> {
    fn encoded_len(&self) -> usize {
        opaque_len(COOKIE)
            + match self {
                Self::Test { lock, .. } => 4 + lock.encoded_len(),
                Self::Lock { lock, .. } => 4 + 4 + lock.encoded_len() + 4 + 4,
                Self::Unlock { lock } => lock.encoded_len(),
            }
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_opaque(out, COOKIE);
        match self {
            Self::Test { exclusive, lock } => {
                exclusive.encode(out);
                lock.encode(out);
            }
            Self::Lock {
                lock,
                reclaim,
                state,
            } => {
                false.encode(out); // block
                true.encode(out); // exclusive
                lock.encode(out);
                reclaim.encode(out);
                state.encode(out);
            }
            Self::Unlock { lock } => lock.encode(out),
        }
    }
}

/// `nlm4_res` / `nlm4_testres`: the cookie, then the status (TEST's holder, if any, after
/// it is not read).
fn nlm_status(res: &[u8]) -> Result<Nlm4Stat, XdrError> {
    let mut d = Decoder::new(res);
    d.opaque(1024)?;
    Ok(Nlm4Stat::of(d.u32()?))
}

/// A lock client on one host: its caller name and the file it locks on one server.
pub struct NlmClient {
    /// `caller_name` in every lock (the client's hostname).
    pub caller_name: String,
    nlm: SocketAddr,
    fh: Vec<u8>,
    /// The owner handle and svid (the "process" holding the lock).
    svid: i32,
    opts: CallOptions,
}

impl NlmClient {
    /// Mounts `export` on `server`, looks `file` up in it and finds the server's NLM port;
    /// must run in the client host's network namespace (inside a Tokio runtime).
    pub async fn new(
        server: IpAddr,
        export: &str,
        file: &str,
        caller_name: &str,
        svid: i32,
    ) -> Result<Self, String> {
        let opts = CallOptions {
            timeout: Duration::from_secs(20),
            ..CallOptions::default()
        };
        let port = |prog, vers| {
            let opts = opts.clone();
            async move {
                getport(SocketAddr::new(server, 111), prog, vers, IPPROTO_TCP, &opts)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{prog}/{vers} not registered on {server}"))
            }
        };
        let mount = SocketAddr::new(server, port(MOUNT_PROG, 3).await?);
        let nfs = SocketAddr::new(server, port(NFS_PROG, 3).await?);
        let nlm = SocketAddr::new(server, port(NLM_PROG, 4).await?);
        let dirpath = Opaque::<1024>::new(export.as_bytes()).map_err(|e| e.to_string())?;
        let mnt = call_tcp(
            mount,
            Proc {
                prog: MOUNT_PROG,
                vers: 3,
                proc_: 1,
            },
            &dirpath,
            &opts,
        )
        .await
        .map_err(|e| format!("MOUNT3 MNT {export}: {e}"))?;
        let mut d = Decoder::new(&mnt);
        let stat = d.u32().map_err(|e| e.to_string())?;
        if stat != 0 {
            return Err(format!("MOUNT3 MNT {export}: mountstat3 {stat}"));
        }
        let root = d.opaque(64).map_err(|e| e.to_string())?.to_vec();
        let args = DirOp {
            dir: &root,
            name: file.as_bytes(),
        };
        let res = call_tcp(
            nfs,
            Proc {
                prog: NFS_PROG,
                vers: 3,
                proc_: 3,
            },
            &args,
            &opts,
        )
        .await
        .map_err(|e| format!("NFS3 LOOKUP {file}: {e}"))?;
        let mut d = Decoder::new(&res);
        let stat = d.u32().map_err(|e| e.to_string())?;
        if stat != 0 {
            return Err(format!("NFS3 LOOKUP {file}: nfsstat3 {stat}"));
        }
        let fh = d.opaque(64).map_err(|e| e.to_string())?.to_vec();
        Ok(Self {
            caller_name: caller_name.to_owned(),
            nlm,
            fh,
            svid,
            opts,
        })
    }

    fn lock(&self, range: (u64, u64)) -> Lock<'_> {
        Lock {
            caller_name: self.caller_name.as_bytes(),
            fh: &self.fh,
            oh: self.caller_name.as_bytes(),
            svid: self.svid,
            range,
        }
    }

    async fn call(&self, proc_: u32, args: &Args<'_>) -> Result<Nlm4Stat, String> {
        let p = Proc {
            prog: NLM_PROG,
            vers: 4,
            proc_,
        };
        let res = call_tcp(self.nlm, p, args, &self.opts)
            .await
            .map_err(|e| format!("NLM4 procedure {proc_}: {e}"))?;
        nlm_status(&res).map_err(|e| format!("NLM4 procedure {proc_}: {e}"))
    }

    /// NLM4_TEST for an exclusive lock on the whole file.
    pub async fn test(&self) -> Result<Nlm4Stat, String> {
        self.call(
            1,
            &Args::Test {
                exclusive: true,
                lock: self.lock((0, 0)),
            },
        )
        .await
    }

    /// NLM4_LOCK, exclusive, non-blocking, of the byte at `offset`; `reclaim` in grace.
    pub async fn lock_byte(
        &self,
        offset: u64,
        reclaim: bool,
        state: i32,
    ) -> Result<Nlm4Stat, String> {
        self.call(
            2,
            &Args::Lock {
                lock: self.lock((offset, 1)),
                reclaim,
                state,
            },
        )
        .await
    }

    /// NLM4_UNLOCK of the byte at `offset`.
    pub async fn unlock_byte(&self, offset: u64) -> Result<Nlm4Stat, String> {
        self.call(
            4,
            &Args::Unlock {
                lock: self.lock((offset, 1)),
            },
        )
        .await
    }
}

/// `diropargs3`: a directory handle and a name in it.
struct DirOp<'a> {
    dir: &'a [u8],
    name: &'a [u8],
}

impl Encode for DirOp<'_> {
    fn encoded_len(&self) -> usize {
        opaque_len(self.dir) + opaque_len(self.name)
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        put_opaque(out, self.dir);
        put_opaque(out, self.name);
    }
}
