//! A peer farm: one test host plays `n` NFS clients' statds at once, 10.77.0.0/16 (local on
//! the host's loopback, routed to it by the servers), answering rpcbind's PMAP GETPORT and
//! SM_NOTIFY for every peer from the address asked (IP_PKTINFO), and recording each peer's
//! SM_NOTIFYs: when, from where, mon_name and state.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use nsm_testhost::Host;

/// The statd port the farm's rpcbind hands out.
const STATD_PORT: u16 = 32765;

/// One SM_NOTIFY a farm peer received.
#[derive(Debug, Clone)]
pub struct Notified {
    /// When.
    pub at: Instant,
    /// Its source address.
    pub from: SocketAddr,
    /// The mon_name it carried.
    pub mon_name: String,
    /// The state it carried.
    pub state: i32,
}

/// The farm (stops when dropped).
pub struct Farm {
    /// Per peer (index 1..=n), the SM_NOTIFYs received.
    pub seen: Arc<Mutex<Vec<Vec<Notified>>>>,
    n: usize,
    stop: Arc<AtomicBool>,
}

/// Peer `i`'s address (1-based).
pub fn peer_addr(i: usize) -> Ipv4Addr {
    assert!((1..250 * 250).contains(&i));
    Ipv4Addr::new(10, 77, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn peer_of(a: Ipv4Addr) -> Option<usize> {
    let o = a.octets();
    (o[0] == 10 && o[1] == 77 && (1..=250).contains(&o[3]))
        .then(|| usize::from(o[2]) * 250 + usize::from(o[3]) - 1)
}

fn word(m: &[u8], i: usize) -> u32 {
    m.get(i * 4..i * 4 + 4)
        .map_or(u32::MAX, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// SM_NOTIFY's (mon_name, state), after the call header and its credentials.
fn notify_args(m: &[u8]) -> Option<(String, i32)> {
    let mut off = 24;
    for _ in 0..2 {
        let len = word(m, off / 4 + 1) as usize;
        off += 8 + len.div_ceil(4) * 4;
    }
    let len = word(m, off / 4) as usize;
    let name = m.get(off + 4..off + 4 + len)?;
    let state_at = off + 4 + len.div_ceil(4) * 4;
    let state = m.get(state_at..state_at + 4)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        i32::from_be_bytes(state.try_into().ok()?),
    ))
}

impl Farm {
    /// Starts the farm's two responders in `host`'s network namespace for peers 1..=n, and
    /// makes 10.77.0.0/16 local there.
    pub fn start(host: &Host, n: usize) -> Self {
        host.sh(
            "ip route add local 10.77.0.0/16 dev lo",
            Duration::from_secs(10),
        )
        .unwrap();
        let seen = Arc::new(Mutex::new(vec![Vec::new(); n + 1]));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        for port in [111u16, STATD_PORT] {
            let ns = File::open(host.netns_path()).unwrap();
            let (seen, stop, tx) = (seen.clone(), stop.clone(), tx.clone());
            std::thread::spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
                setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).unwrap();
                setsockopt(&sock, sockopt::RcvBuf, &(8 << 20)).unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                tx.send(()).unwrap();
                serve(&sock, port, n, &seen, &stop);
            });
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        Self { seen, n, stop }
    }

    /// How many SM_NOTIFYs each peer received so far.
    pub fn counts(&self) -> Vec<usize> {
        self.seen.lock().unwrap()[1..]
            .iter()
            .map(Vec::len)
            .collect()
    }

    /// The peers.
    pub fn len(&self) -> usize {
        self.n
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    sock: &UdpSocket,
    port: u16,
    n: usize,
    seen: &Mutex<Vec<Vec<Notified>>>,
    stop: &AtomicBool,
) {
    let fd = sock.as_raw_fd();
    let mut buf = vec![0u8; 9000];
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    while !stop.load(Ordering::Relaxed) {
        let (len, from, dst) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(msg) = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
            else {
                continue;
            };
            let mut dst = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::Ipv4PacketInfo(pi) = c {
                        dst = Some(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)));
                    }
                }
            }
            (msg.bytes, msg.address, dst)
        };
        let (Some(from), Some(dst)) = (from, dst) else {
            continue;
        };
        let m = &buf[..len];
        let Some(peer) = peer_of(dst).filter(|p| (1..=n).contains(p)) else {
            continue;
        };
        // A call: xid, CALL, rpcvers 2, prog, vers, proc.
        if len < 40 || word(m, 1) != 0 || word(m, 2) != 2 {
            continue;
        }
        let (prog, proc_) = (word(m, 3), word(m, 5));
        let mut reply = Vec::with_capacity(28);
        for w in [word(m, 0), 1, 0, 0, 0, 0] {
            reply.extend_from_slice(&w.to_be_bytes());
        }
        let notified = match (port, prog, proc_) {
            (111, 100_000, 3) => {
                reply.extend_from_slice(&u32::from(STATD_PORT).to_be_bytes());
                None
            }
            (STATD_PORT, 100_024, 6) => notify_args(m),
            _ => continue,
        };
        let pi = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(dst).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let _ = sendmsg(
            fd,
            &[IoSlice::new(&reply)],
            &[ControlMessage::Ipv4PacketInfo(&pi)],
            MsgFlags::empty(),
            Some(&from),
        );
        if let Some((mon_name, state)) = notified {
            seen.lock().unwrap()[peer].push(Notified {
                at: Instant::now(),
                from: SocketAddr::from((from.ip(), from.port())),
                mon_name,
                state,
            });
        }
    }
}
