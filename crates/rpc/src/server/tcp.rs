//! The TCP side of the server: accepting connections within the two pools (the local lock
//! manager's, [`Limits::trusted`](super::Limits::trusted), and everyone else's), then per
//! connection reading record-marked calls, answering them in order with a bounded number in
//! flight, batching replies into writes, and closing quiet or unreading peers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, warn};

use super::dispatch::dispatch_here;
use super::{Ctx, Service, Transport};
use crate::record::RecordCodec;

pub(super) async fn tcp_accept_loop<S: Service>(ctx: Ctx<S>, listener: TcpListener) {
    loop {
        let (stream, peer) = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accepting a TCP connection failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let trusted = (ctx.limits.trusted)(peer);
        let permit = if trusted {
            let Ok(p) = ctx.trusted_connections.clone().try_acquire_owned() else {
                warn!(%peer, limit = ctx.limits.max_trusted_connections, "too many TCP connections from privileged loopback ports (the local lock manager's); closed a new one");
                continue;
            };
            p
        } else {
            let Ok(p) = ctx.connections.clone().try_acquire_owned() else {
                debug!(%peer, "too many TCP connections; closed a new one");
                continue;
            };
            p
        };
        let c = ctx.clone();
        ctx.tasks.spawn(async move {
            connection(c, stream, peer, trusted).await;
            drop(permit);
        });
    }
}

/// `f`'s output, or `Err` when `limit` passes first; no limit when `None`.
async fn within<F: Future>(
    limit: Option<Duration>,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await,
        None => Ok(f.await),
    }
}

/// Most replies gathered into one write on a TCP connection.
const TCP_WRITE_BATCH: usize = 64;

/// Serves one TCP connection. A `trusted` one (the local lock manager's) may stay quiet for
/// as long as it likes: lockd and Ganesha open it once and do not reconnect cheaply.
async fn connection<S: Service>(ctx: Ctx<S>, stream: TcpStream, peer: SocketAddr, trusted: bool) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let limits = &ctx.limits;
    let mut records = FramedRead::new(
        rd,
        RecordCodec::new(limits.max_record, limits.max_fragments),
    );
    let (tx, mut rx) = mpsc::channel::<Bytes>(limits.max_tcp_in_flight);
    let idle = limits.idle_timeout;
    let writer = ctx.tasks.spawn(async move {
        let mut out = FramedWrite::new(wr, RecordCodec::default());
        while let Some(reply) = rx.recv().await {
            // Replies that are already waiting go out in the same write.
            let write = async {
                out.feed(reply).await?;
                for _ in 1..TCP_WRITE_BATCH {
                    let Ok(r) = rx.try_recv() else { break };
                    out.feed(r).await?;
                }
                out.flush().await
            };
            match tokio::time::timeout(idle, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TCP write failed; closing");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TCP peer does not read its replies; closing");
                    return;
                }
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(limits.max_tcp_in_flight));
    let quiet_limit = (!trusted).then_some(idle);
    loop {
        let next = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            n = within(quiet_limit, records.next()) => n,
        };
        let message = match next {
            Err(_) => {
                debug!(%peer, "TCP connection idle; closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(%peer, error = %e, "closing TCP connection");
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let permit = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        match dispatch_here(&ctx.service, message, peer, local, Transport::Tcp) {
            Ok(None) => {}
            Ok(Some(r)) => {
                // The writer may be gone (peer closed); nothing to do then. When it is behind,
                // the reply waits in a task, holding its permit, as a slow call's does.
                if let Err(mpsc::error::TrySendError::Full(r)) = tx.try_send(r) {
                    let tx = tx.clone();
                    ctx.tasks.spawn(async move {
                        let _ = tx.send(r).await;
                        drop(permit);
                    });
                }
            }
            Err(reply) => {
                let tx = tx.clone();
                ctx.tasks.spawn(async move {
                    if let Some(r) = reply.await {
                        let _ = tx.send(r).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    // Replies of requests still in progress go out before the connection closes.
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::tests::{Where, call_of};
    use super::super::{Limits, Server};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn pipelined_tcp_calls_are_all_answered_in_order() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = Server::new(Arc::new(Where), Limits::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        server.serve_tcp(listener);
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut records = Vec::new();
        for xid in 0..100u32 {
            let call = call_of(xid, 0);
            records.extend_from_slice(&(0x8000_0000 | call.len() as u32).to_be_bytes());
            records.extend_from_slice(&call);
        }
        s.write_all(&records).await.unwrap();
        for xid in 0..100u32 {
            let mut mark = [0u8; 4];
            s.read_exact(&mut mark).await.unwrap();
            let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
            let mut reply = vec![0u8; len];
            s.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply[..4], xid.to_be_bytes());
            assert_eq!(reply[len - 4..], [127, 0, 0, 1]);
        }
        drop(s);
        assert!(server.shutdown(Duration::from_secs(1)).await);
    }
}
