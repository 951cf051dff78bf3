//! The server and client against each other on loopback, plus hostile peers.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nsm_rpc::client::{CallOptions, ClientError, Proc, call_tcp, call_udp};
use nsm_rpc::msg::{self, AcceptStat, RejectReply, ReplyBody};
use nsm_rpc::server::{Limits, Outcome, Request, Server, Service};
use nsm_xdr::{Encode, from_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const PROG: u32 = 0x2000_0001;

/// proc 0: void; proc 1: echo an u32 plus one; proc 2: sleep 2 s then void; proc 4: the
/// caller's address; others: PROC_UNAVAIL.
#[derive(Default)]
struct Test {
    calls: AtomicUsize,
}

impl Service for Test {
    fn versions(&self, prog: u32) -> Option<(u32, u32)> {
        (prog == PROG).then_some((1, 2))
    }

    async fn call(&self, req: Request) -> Outcome {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match req.proc_ {
            0 => Outcome::Success(Bytes::new()),
            1 => match from_bytes::<u32>(&req.args) {
                Ok(v) => Outcome::Success(Bytes::from(v.wrapping_add(1).to_xdr())),
                Err(_) => Outcome::GarbageArgs,
            },
            2 => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Outcome::Success(Bytes::new())
            }
            4 => {
                // The caller's address as the server saw it: IPv4 octets, then the port.
                let ip = match req.peer.ip() {
                    std::net::IpAddr::V4(a) => u32::from(a),
                    std::net::IpAddr::V6(_) => 0,
                };
                let mut v = ip.to_xdr();
                v.extend(u32::from(req.peer.port()).to_xdr());
                Outcome::Success(Bytes::from(v))
            }
            _ => Outcome::ProcUnavail,
        }
    }
}

struct Running {
    server: Server<Test>,
    svc: Arc<Test>,
    udp: SocketAddr,
    tcp: SocketAddr,
}

async fn start(limits: Limits) -> Running {
    let svc = Arc::new(Test::default());
    let server = Server::new(svc.clone(), limits);
    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let t = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp, tcp) = (u.local_addr().unwrap(), t.local_addr().unwrap());
    server.serve_udp(u);
    server.serve_tcp(t);
    Running {
        server,
        svc,
        udp,
        tcp,
    }
}

fn opts() -> CallOptions {
    CallOptions {
        timeout: Duration::from_secs(3),
        retransmit: Duration::from_millis(200),
        ..CallOptions::default()
    }
}

const P1: Proc = Proc {
    prog: PROG,
    vers: 1,
    proc_: 1,
};

#[tokio::test]
async fn udp_and_tcp_calls() {
    let r = start(Limits::default()).await;
    let a = call_udp(r.udp, P1, &41u32, &opts()).await.unwrap();
    assert_eq!(from_bytes::<u32>(&a).unwrap(), 42);
    let b = call_tcp(r.tcp, P1, &99u32, &opts()).await.unwrap();
    assert_eq!(from_bytes::<u32>(&b).unwrap(), 100);
}

#[tokio::test]
async fn rpc_layer_rejections() {
    let r = start(Limits::default()).await;
    let cases = [
        (
            Proc {
                prog: PROG + 1,
                vers: 1,
                proc_: 0,
            },
            AcceptStat::ProgUnavail,
        ),
        (
            Proc {
                prog: PROG,
                vers: 3,
                proc_: 0,
            },
            AcceptStat::ProgMismatch { low: 1, high: 2 },
        ),
        (
            Proc {
                prog: PROG,
                vers: 1,
                proc_: 9,
            },
            AcceptStat::ProcUnavail,
        ),
    ];
    for (p, want) in cases {
        for tcp in [false, true] {
            let e = if tcp {
                call_tcp(r.tcp, p, &(), &opts()).await
            } else {
                call_udp(r.udp, p, &(), &opts()).await
            };
            match e {
                Err(ClientError::NotAccepted { stat, .. }) => assert_eq!(stat, want),
                other => panic!("{p:?} tcp={tcp}: {other:?}"),
            }
        }
    }
    // Truncated arguments.
    match call_udp(r.udp, P1, &(), &opts()).await {
        Err(ClientError::NotAccepted { stat, .. }) => assert_eq!(stat, AcceptStat::GarbageArgs),
        other => panic!("{other:?}"),
    }
}

/// Sends raw bytes as one datagram and returns the reply, if any, within 500 ms.
async fn raw_udp(to: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, to).await.unwrap();
    let mut buf = vec![0; 70_000];
    let n = tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

fn null_call(xid: u32, rpcvers: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [xid, 0, rpcvers, PROG, 1, 0, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

#[tokio::test]
async fn rpc_version_mismatch_and_bad_auth() {
    let r = start(Limits::default()).await;
    let reply = raw_udp(r.udp, &null_call(5, 3)).await.unwrap();
    let p = msg::parse_reply(&reply).unwrap();
    assert_eq!(p.xid, 5);
    assert_eq!(
        p.body,
        ReplyBody::Denied(RejectReply::RpcMismatch { low: 2, high: 2 })
    );
    // AUTH_SYS flavor with a body that is not an authsys_parms.
    let mut c = null_call(6, 2);
    c[27] = 1; // cred flavor AUTH_SYS, length 0
    let p2 = raw_udp(r.udp, &c).await.unwrap();
    assert_eq!(
        msg::parse_reply(&p2).unwrap().body,
        ReplyBody::Denied(RejectReply::AuthError(msg::AuthStat::BADCRED))
    );
}

#[tokio::test]
async fn hostile_udp_then_still_serving() {
    let r = start(Limits::default()).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..5000 {
        let len = (next() % 600) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of them look like calls to our program, so they get past the header checks.
        if i % 2 == 0 && d.len() >= 40 {
            d[..40].copy_from_slice(&null_call(next() as u32, 2));
            d[23] = (next() % 4) as u8;
        }
        s.send_to(&d, r.udp).await.unwrap();
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let a = call_udp(r.udp, P1, &1u32, &opts()).await.unwrap();
    assert_eq!(from_bytes::<u32>(&a).unwrap(), 2);
    let b = call_tcp(r.tcp, P1, &1u32, &opts()).await.unwrap();
    assert_eq!(from_bytes::<u32>(&b).unwrap(), 2);
}

#[tokio::test]
async fn two_gib_record_mark_closes_connection() {
    let r = start(Limits::default()).await;
    let mut s = TcpStream::connect(r.tcp).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("server closes the connection at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
    call_tcp(r.tcp, P1, &1u32, &opts()).await.unwrap();
}

#[tokio::test]
async fn multi_fragment_tcp_call() {
    let r = start(Limits::default()).await;
    let mut call = null_call(77, 2);
    call[23] = 1; // proc 1
    call.extend_from_slice(&41u32.to_be_bytes());
    let mut wire = Vec::new();
    for (i, chunk) in call.chunks(7).enumerate() {
        let last = (i + 1) * 7 >= call.len();
        let hdr = chunk.len() as u32 | if last { 0x8000_0000 } else { 0 };
        wire.extend_from_slice(&hdr.to_be_bytes());
        wire.extend_from_slice(chunk);
    }
    let mut s = TcpStream::connect(r.tcp).await.unwrap();
    for b in wire.chunks(3) {
        s.write_all(b).await.unwrap();
    }
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).await.unwrap();
    let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    let p = msg::parse_reply(&body).unwrap();
    assert_eq!(p.xid, 77);
    assert_eq!(
        p.body,
        ReplyBody::Accepted(AcceptStat::Success(&42u32.to_be_bytes()[..]))
    );
}

#[tokio::test]
async fn slow_call_does_not_block_others() {
    let r = start(Limits::default()).await;
    let slow = Proc {
        prog: PROG,
        vers: 1,
        proc_: 2,
    };
    let udp = r.udp;
    let t = tokio::spawn(async move { call_udp(udp, slow, &(), &opts()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    call_udp(r.udp, P1, &1u32, &opts()).await.unwrap();
    call_tcp(r.tcp, P1, &1u32, &opts()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not serialised behind the slow call"
    );
    t.await.unwrap().unwrap();
}

#[tokio::test]
async fn connection_limit_and_idle_timeout() {
    let r = start(Limits {
        max_connections: 2,
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let _a = TcpStream::connect(r.tcp).await.unwrap();
    let _b = TcpStream::connect(r.tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = TcpStream::connect(r.tcp).await.unwrap();
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "third connection closed at once");
    // After the idle timeout the two idle connections are gone and calls work again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    call_tcp(r.tcp, P1, &1u32, &opts()).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_calls() {
    let r = start(Limits::default()).await;
    let slow = Proc {
        prog: PROG,
        vers: 1,
        proc_: 2,
    };
    let tcp = r.tcp;
    let t = tokio::spawn(async move { call_tcp(tcp, slow, &(), &opts()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.server.shutdown(Duration::from_secs(5)).await);
    t.await
        .unwrap()
        .expect("in-flight call answered during shutdown");
    assert!(TcpStream::connect(r.tcp).await.is_err(), "listener closed");
    assert!(r.svc.calls.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn source_address_and_privileged_port() {
    let r = start(Limits::default()).await;
    let who = Proc {
        prog: PROG,
        vers: 1,
        proc_: 4,
    };
    let o = CallOptions {
        source: Some("127.0.0.2".parse().unwrap()),
        ..opts()
    };
    for tcp in [false, true] {
        let res = if tcp {
            call_tcp(r.tcp, who, &(), &o).await
        } else {
            call_udp(r.udp, who, &(), &o).await
        }
        .unwrap();
        assert_eq!(
            &res[..4],
            &[127, 0, 0, 2],
            "source address honoured (tcp={tcp})"
        );
    }
    let o = CallOptions {
        privileged_port: true,
        ..opts()
    };
    let root = nix::unistd::geteuid().is_root();
    for tcp in [false, true] {
        let res = if tcp {
            call_tcp(r.tcp, who, &(), &o).await
        } else {
            call_udp(r.udp, who, &(), &o).await
        };
        match res {
            Ok(b) => {
                assert!(root, "only root can bind a privileged port");
                let port = u32::from_be_bytes(b[4..8].try_into().unwrap());
                assert!((600..1024).contains(&port), "port {port} (tcp={tcp})");
            }
            Err(ClientError::NoPrivilegedPort { .. }) => assert!(!root),
            Err(e) => panic!("{e}"),
        }
    }
}

/// One call of procedure 1 (echo plus one) with `xid` on an open connection; the reply's
/// xid, or `None` when the server closed the connection.
async fn call_on(s: &mut TcpStream, xid: u32) -> Option<u32> {
    let mut call = Vec::new();
    for w in [xid, 0, 2, PROG, 1, 1, 0, 0, 0, 0, 41] {
        call.extend_from_slice(&w.to_be_bytes());
    }
    let mut record = (0x8000_0000 | call.len() as u32).to_be_bytes().to_vec();
    record.extend_from_slice(&call);
    s.write_all(&record).await.ok()?;
    let mut mark = [0u8; 4];
    s.read_exact(&mut mark).await.ok()?;
    let mut reply = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
    s.read_exact(&mut reply).await.ok()?;
    Some(u32::from_be_bytes(reply[..4].try_into().unwrap()))
}

/// A connection from `source` to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{source}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Stands in for "the local lock manager" in these tests: what is trusted is the
/// server's decision, made by `Limits::trusted` (by default a privileged loopback port,
/// which only root can bind).
fn from_127_0_0_2(peer: SocketAddr) -> bool {
    peer.ip() == std::net::Ipv4Addr::new(127, 0, 0, 2)
}

#[tokio::test(start_paused = true)]
async fn the_lock_managers_connection_outlives_any_quiet_period_a_remote_one_does_not() {
    let r = start(Limits {
        trusted: from_127_0_0_2,
        ..Limits::default()
    })
    .await;
    let mut lockd = connect_from("127.0.0.2", r.tcp).await;
    let mut remote = connect_from("127.0.0.1", r.tcp).await;
    assert_eq!(call_on(&mut lockd, 1).await, Some(1));
    assert_eq!(call_on(&mut remote, 2).await, Some(2));
    // Ten times the idle limit without a request (the paused clock jumps there).
    tokio::time::sleep(Limits::default().idle_timeout * 10).await;
    assert_eq!(
        call_on(&mut remote, 3).await,
        None,
        "a quiet remote connection is closed after the idle limit"
    );
    assert_eq!(
        call_on(&mut lockd, 4).await,
        Some(4),
        "the lock manager's connection is still served after a long quiet period"
    );
    // And again: being quiet once did not use up anything.
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    assert_eq!(call_on(&mut lockd, 5).await, Some(5));
}

#[tokio::test]
async fn remote_connections_at_their_limit_do_not_crowd_out_the_lock_manager() {
    let r = start(Limits {
        trusted: from_127_0_0_2,
        max_connections: 2,
        max_trusted_connections: 1,
        ..Limits::default()
    })
    .await;
    let _a = connect_from("127.0.0.1", r.tcp).await;
    let _b = connect_from("127.0.0.1", r.tcp).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut lockd = connect_from("127.0.0.2", r.tcp).await;
    assert_eq!(
        call_on(&mut lockd, 1).await,
        Some(1),
        "the lock manager gets in while remote peers fill every other slot"
    );
    // Its own pool is bounded too: a second trusted connection is refused.
    let mut second = connect_from("127.0.0.2", r.tcp).await;
    assert_eq!(call_on(&mut second, 2).await, None);
    let mut third = connect_from("127.0.0.1", r.tcp).await;
    assert_eq!(
        call_on(&mut third, 3).await,
        None,
        "remote slots still full"
    );
}
