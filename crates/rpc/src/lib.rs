//! ONC RPC version 2 (RFC 5531) for nsmd.
//!
//! - [`msg`]: CALL and REPLY headers, AUTH_NONE and AUTH_SYS, every accept and reject status.
//!   Written on [`nsm_xdr`] instead of wrapping the onc-rpc crate, which caps auth bodies at
//!   200 bytes (the RFC allows 400) and panics encoding some valid AUTH_SYS credentials.
//! - [`record`]: TCP record marking with multi-fragment reassembly, capped in record size and
//!   fragment count.
//! - [`server`]: an async UDP and TCP server that dispatches by (program, version, procedure),
//!   with limits on connections, in-flight requests, idle time and record size, and a graceful
//!   shutdown.
//! - [`client`]: async calls over UDP (retransmission with backoff), TCP and Unix stream
//!   sockets, with timeouts, a chosen source address and a privileged source port on request.
//! - [`rpcbind`]: registration (rpcbind v4 over `/run/rpcbind.sock`, else over loopback) and
//!   lookups (portmapper v2 GETPORT, rpcbind v3/v4 GETADDR).
#![warn(missing_docs)]

pub mod client;
pub mod msg;
pub mod record;
pub mod rpcbind;
pub mod server;

pub use client::{CallOptions, ClientError};
pub use msg::{AcceptStat, Auth, AuthStat, CallHeader, RejectReply, ReplyBody};
pub use server::{Outcome, Request, Service, Transport};
