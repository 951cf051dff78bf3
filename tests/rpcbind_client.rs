//! nsm-rpc's rpcbind client and RPC client against Debian's rpcbind and the real nsmd, in a
//! test host: GETPORT (v2), GETADDR (v3 and v4, IPv4 and IPv6), DUMP, SET/UNSET over
//! `/run/rpcbind.sock` and over loopback UDP, and the source address and privileged port
//! options of the client.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{in_netns, spawn_nsmd};
use nsm_rpc::client::{CallOptions, Proc, call_tcp, call_udp};
use nsm_rpc::rpcbind::{Rpcbind, dump, dump_udp, getaddr, getport};
use nsm_testhost::{Lab, require};
use nsm_xdr::rpcbind::{IPPROTO_TCP, IPPROTO_UDP, RPCB_VERS, RPCB_VERS4};

const T: Duration = Duration::from_secs(10);

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn lookups_and_registration_against_debian_rpcbind() {
    if !require(
        "lookups_and_registration_against_debian_rpcbind",
        &["rpcbind", "rpcinfo"],
    ) {
        return;
    }
    let lab = Lab::new("rpcbcli").unwrap();
    let srv = lab
        .host("srv", &["198.51.100.20/24", "2001:db8::20/64"])
        .unwrap();
    let cli = lab
        .host("cli", &["198.51.100.21/24", "2001:db8::21/64"])
        .unwrap();
    let _rpcbind = srv.start_rpcbind().unwrap();
    let (nsmd, port) = spawn_nsmd(&srv, "nsmd", &["-P", "/var/lib/nfs/st"]);
    nsmd.wait_for_log_line("registered program 100024", T)
        .unwrap();
    let opts = CallOptions::default();

    // From another host: GETPORT over IPv4, GETADDR v3 and v4 over IPv6.
    in_netns(&cli, || {
        block_on(async {
            let v4: SocketAddr = "198.51.100.20:111".parse().unwrap();
            let v6: SocketAddr = "[2001:db8::20]:111".parse().unwrap();
            for prot in [IPPROTO_UDP, IPPROTO_TCP] {
                assert_eq!(
                    getport(v4, 100_024, 1, prot, &opts).await.unwrap(),
                    Some(port)
                );
            }
            // rpcbind answers GETPORT for any registered version of a program (the server
            // then says PROG_MISMATCH), so "not registered" needs an unknown program.
            assert_eq!(
                getport(v4, 100_099, 1, IPPROTO_UDP, &opts).await.unwrap(),
                None
            );
            for vers in [RPCB_VERS, RPCB_VERS4] {
                for netid in ["udp6", "tcp6"] {
                    let a = getaddr(v6, vers, 100_024, 1, netid, &opts).await.unwrap();
                    assert_eq!(a, Some(SocketAddr::new(v6.ip(), port)), "v{vers} {netid}");
                }
            }
            assert_eq!(
                getaddr(v6, RPCB_VERS4, 100_099, 1, "udp6", &opts)
                    .await
                    .unwrap(),
                None
            );
            let all = dump(v4, &opts).await.unwrap();
            assert!(
                all.iter()
                    .any(|m| m.prog == 100_024 && m.port == u32::from(port))
            );
            assert_eq!(dump_udp(v4, &opts).await.unwrap(), all, "DUMP over UDP");
        });
    });

    in_netns(&srv, || {
        block_on(async {
            let local: SocketAddr = "127.0.0.1:111".parse().unwrap();
            // SET/UNSET over /run/rpcbind.sock (the private /run of this host) and, with the
            // socket path pointing nowhere, over loopback UDP.
            for socket in ["/run/rpcbind.sock", "/nonexistent/rpcbind.sock"] {
                let rb = Rpcbind {
                    socket: PathBuf::from(socket),
                    ..Rpcbind::default()
                };
                let at: SocketAddr = "0.0.0.0:999".parse().unwrap();
                assert!(rb.set(0x2000_0099, 3, "udp", at).await.unwrap(), "{socket}");
                assert_eq!(
                    getport(local, 0x2000_0099, 3, IPPROTO_UDP, &opts)
                        .await
                        .unwrap(),
                    Some(999),
                    "{socket}"
                );
                assert!(rb.unset(0x2000_0099, 3).await.unwrap(), "{socket}");
                assert_eq!(
                    getport(local, 0x2000_0099, 3, IPPROTO_UDP, &opts)
                        .await
                        .unwrap(),
                    None
                );
            }

            // The client's source options, seen by rpcbind's own logic: a NULL call from
            // 127.0.0.2 on a privileged port succeeds, over UDP and TCP.
            let null = Proc {
                prog: 100_024,
                vers: 1,
                proc_: 0,
            };
            let nsm: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let o = CallOptions {
                source: Some("127.0.0.2".parse().unwrap()),
                privileged_port: true,
                timeout: Duration::from_secs(3),
                ..CallOptions::default()
            };
            call_udp(nsm, null, &(), &o).await.unwrap();
            call_tcp(nsm, null, &(), &o).await.unwrap();
        });
    });
    let log = nsmd.log();
    assert!(log.contains("registered program"), "{log}");
}
