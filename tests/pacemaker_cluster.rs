//! nsmd under a real Pacemaker/Corosync cluster: Debian's corosync (knet) and pacemakerd on
//! two nodes, each a test host (its own network, mount and UTS namespaces, with private
//! `/etc/corosync`, `/var/lib/corosync`, `/var/lib/pacemaker`, `/dev/shm` and `/run`), the
//! agent `ocf:nsmd:nsmd-instance` in a group after `IPaddr2` per NFS service, configured with
//! the `crm configure` text the README shows. svc1's clients: two test hosts running Debian's
//! rpc.statd and a lockd stand-in, and 1,000 statds played by the peer farm; svc2's: two
//! rpc.statd hosts. Drills, each checked from the clients' side (one more callback or
//! SM_NOTIFY each, with the service hostname and its new, larger state, SM_NOTIFY only from
//! the service address, the other service's clients and state untouched):
//! a. standby of the active node (and back);
//! b. `crm_resource --move` and `--clear`;
//! c. `kill -9` of nsmd on the active node: the kernel lock release runs on that node;
//! d. a node lost with fencing (the lab's fence agent), then powered on again;
//! d'. a node lost without fencing: the survivor neither serves nor notifies while the lost
//!    node's nsmd holds the state directory, and its start fails naming the holder; once the
//!    holder is gone, `--cleanup` starts it; the stale nsmd, restarted, is fenced and silent.
//! Each drill prints the time from its command to the first and last client that heard.
//! Network namespaces, root only.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::LockdStandIn;
use common::farm::Farm;
use nsm_testhost::{Host, Lab, Proc, Signal, require};

const NSMCTL: &str = env!("CARGO_BIN_EXE_nsmctl");
const AGENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/pacemaker/nsmd-instance"
);
const FENCE_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pacemaker/fence_nsmdlab");
const T: Duration = Duration::from_secs(60);
const COOKIE: [u8; 16] = [0xc1, 0x05, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];

/// The services: (instance, hostname, address, preferred node).
const SERVICES: [(&str, &str, &str, &str); 2] = [
    ("svc1", "nfs-svc1.example.test", "198.51.100.101", "n1"),
    ("svc2", "nfs-svc2.example.test", "198.51.100.102", "n2"),
];

/// Clients per service running Debian's rpc.statd and a lockd stand-in.
const CLIENTS: usize = 2;
/// Clients of svc1 the peer farm plays (statds only: they acknowledge and record).
const FARM_PEERS: usize = 1000;
/// The farm's address on the lab's bridge (the nodes route 10.77.0.0/16 to it).
const FARM_ADDR: &str = "198.51.100.200";

/// The address of client `c` (1-based) of service `i`.
fn client_addr(i: usize, c: usize) -> String {
    format!("198.51.100.{}", 20 + 10 * i + c)
}

fn corosync_conf() -> String {
    "totem {\n  version: 2\n  cluster_name: nsmdlab\n  transport: knet\n  token: 1000\n  \
     crypto_cipher: none\n  crypto_hash: none\n}\n\
     nodelist {\n  node {\n    name: n1\n    nodeid: 1\n    ring0_addr: 198.51.100.11\n  }\n  \
     node {\n    name: n2\n    nodeid: 2\n    ring0_addr: 198.51.100.12\n  }\n}\n\
     quorum {\n  provider: corosync_votequorum\n  two_node: 1\n}\n\
     uidgid {\n  uid: hacluster\n  gid: haclient\n}\n\
     logging {\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n  timestamp: on\n}\n"
        .to_owned()
}

/// The CIB a node starts with: a 2 s DC election instead of 20 s, no fencing (no fence
/// device in these drills).
const CIB: &str = r#"<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="cib-bootstrap-options-dc-deadtime" name="dc-deadtime" value="2s"/>
        <nvpair id="cib-bootstrap-options-stonith-enabled" name="stonith-enabled" value="false"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"#;

/// The resources, as `crm configure load update` reads them (the README's text, with the
/// test's paths).
fn crm_config(shared: &Path) -> String {
    let mut c = String::new();
    for (name, _, addr, node) in SERVICES {
        c.push_str(&format!(
            "primitive {name}-ip IPaddr2 params ip={addr} cidr_netmask=24 nic=eth0 \
             op monitor interval=10s timeout=20s\n\
             primitive {name}-nsm ocf:nsmd:nsmd-instance params instance={name} \
             nsmctl={NSMCTL} instances_dir={inst} proc_root=/run/proc \
             op monitor interval=2s timeout=20s op start timeout=60s op stop timeout=60s\n\
             group {name} {name}-ip {name}-nsm meta migration-threshold=1\n\
             location {name}-prefers-{node} {name} 100: {node}\n",
            inst = shared.join("instances").display()
        ));
    }
    c
}

struct Node {
    host: Host,
    nsmd: Option<Proc>,
    port: u16,
    instances: String,
    corosync: Proc,
    pacemakerd: Proc,
    _lockd: LockdStandIn,
    _rpcbind: Proc,
}

impl Node {
    fn new(lab: &Lab, name: &str, addr: &str) -> Self {
        let host = lab.host(name, &[&format!("{addr}/24")]).unwrap();
        host.sh(&format!("ip route add 10.77.0.0/16 via {FARM_ADDR}"), T)
            .unwrap();
        for f in [
            "sys/fs/nfs/nsm_local_state",
            "fs/nfsd/unlock_ip",
            "fs/nfsd/unlock_filesystem",
        ] {
            host.write_file(&format!("/run/proc/{f}"), "").unwrap();
        }
        // Each client holds an NFS connection to its service's address: lockd's SM_MON of a
        // client is recorded by the service it uses (nsmd reads /proc/net/tcp).
        let hex = |a: &str| {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            format!("{:08X}", u32::from_ne_bytes(ip.octets()))
        };
        let mut tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_owned();
        for (i, (_, _, vip, _)) in SERVICES.iter().enumerate() {
            for c in 1..=CLIENTS {
                tcp.push_str(&format!(
                    "  {}: {}:0801 {}:03FF 01 00000000:00000000 00:00000000 00000000     0        0 0\n",
                    i * 10 + c,
                    hex(vip),
                    hex(&client_addr(i, c))
                ));
            }
        }
        host.write_file("/run/proc/net/tcp", tcp).unwrap();
        // What a node keeps to itself.
        let etc = host.mount_private("/etc/corosync").unwrap();
        std::fs::write(etc.join("corosync.conf"), corosync_conf()).unwrap();
        host.mount_private("/var/lib/corosync").unwrap();
        let shm = host.mount_private("/dev/shm").unwrap();
        chmod(&shm, 0o1777);
        let lib = host.mount_private("/var/lib/pacemaker").unwrap();
        let hacluster = nix::unistd::User::from_name("hacluster").unwrap().unwrap();
        let haclient = nix::unistd::Group::from_name("haclient").unwrap().unwrap();
        for d in ["", "cib", "pengine", "blackbox", "cores"] {
            let p = lib.join(d);
            std::fs::create_dir_all(&p).unwrap();
            nix::unistd::chown(&p, Some(hacluster.uid), Some(haclient.gid)).unwrap();
            chmod(&p, 0o750);
        }
        let cib = lib.join("cib/cib.xml");
        std::fs::write(&cib, CIB).unwrap();
        nix::unistd::chown(&cib, Some(hacluster.uid), Some(haclient.gid)).unwrap();
        chmod(&cib, 0o600);
        host.mount_private("/var/log/pacemaker").unwrap();
        // The agent, where Pacemaker looks for ocf:nsmd:*, beside the machine's agents.
        let ra = host.outside_path("/run/.private/ra").unwrap();
        std::fs::create_dir_all(ra.join("nsmd")).unwrap();
        std::fs::copy(AGENT, ra.join("nsmd/nsmd-instance")).unwrap();
        host.sh(
            "set -e; cd /run/.private/ra; for p in heartbeat pacemaker; do mkdir $p; \
             mount --bind /usr/lib/ocf/resource.d/$p $p; done; \
             mount --rbind /run/.private/ra /usr/lib/ocf/resource.d",
            T,
        )
        .unwrap();
        // The lab's fence agent, where pacemaker-fenced looks for fence_*: a read-only overlay
        // of the machine's /usr/sbin.
        let fence = host.outside_path("/run/.private/fence").unwrap();
        std::fs::create_dir_all(&fence).unwrap();
        std::fs::copy(FENCE_AGENT, fence.join("fence_nsmdlab")).unwrap();
        host.sh(
            "mount -t overlay overlay -o lowerdir=/run/.private/fence:/usr/sbin /usr/sbin",
            T,
        )
        .unwrap();
        let (rpcbind, lockd, corosync, pacemakerd) = boot(&host);
        Self {
            host,
            nsmd: None,
            port: 0,
            instances: String::new(),
            corosync,
            pacemakerd,
            _lockd: lockd,
            _rpcbind: rpcbind,
        }
    }

    /// Powers the node on again after the fence agent powered it off: what a reboot forgets
    /// is gone (its addresses but its own, /run's state, /dev/shm), its interface is up, its
    /// daemons and nsmd start.
    fn power_on(&mut self, shared: &Path) {
        let addr = self.host.addrs()[0];
        self.host
            .sh(
                &format!(
                    "set -e; ip addr flush dev eth0; ip addr add {addr}/24 dev eth0; \
                     ip link set eth0 up; ip route add 10.77.0.0/16 via {FARM_ADDR}; rm -rf /run/nsmd /run/resource-agents /run/crm; \
                     find /dev/shm -mindepth 1 -delete"
                ),
                T,
            )
            .unwrap();
        let (rpcbind, lockd, corosync, pacemakerd) = boot(&self.host);
        self._rpcbind = rpcbind;
        self._lockd = lockd;
        self.corosync = corosync;
        self.pacemakerd = pacemakerd;
        self.start_nsmd(shared);
    }

    fn start_nsmd(&mut self, shared: &Path) {
        self.instances = shared.join("instances").display().to_string();
        let (p, port) = common::spawn_nsmd(
            &self.host,
            "nsmd",
            &[
                "-P",
                "/var/lib/nfs/node",
                "--proc-root",
                "/run/proc",
                "--instances",
                shared.join("instances").to_str().unwrap(),
            ],
        );
        self.nsmd = Some(p);
        self.port = port;
    }

    fn run(&self, argv: &[&str]) -> String {
        self.host.run_ok(argv, T).unwrap()
    }

    /// `nsmctl state NAME`'s exit status on this node.
    fn state(&self, name: &str) -> i32 {
        self.host
            .run(&[NSMCTL, "state", "--instances", &self.instances, name], T)
            .unwrap()
            .status
            .code()
            .unwrap_or(-1)
    }

    /// lockd's SM_MON of `client` to this node's nsmd (recorded by every service active here).
    fn mon(&self, client: &str) {
        common::sm_mon(&self.host, self.port, client, "server", COOKIE);
    }

    /// The node is lost to the cluster: SIGKILL to corosync and every Pacemaker daemon.
    fn kill_cluster_stack(&self) {
        for pid in self.host.pids() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("corosync") || comm.starts_with("pacemaker") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.corosync.wait(T).unwrap();
        self.pacemakerd.wait(T).unwrap();
    }

    fn kernel(&self, file: &str) -> String {
        String::from_utf8(
            self.host
                .read_file(&format!("/run/proc/fs/nfsd/{file}"))
                .unwrap(),
        )
        .unwrap()
    }

    fn clear_kernel(&self) {
        for f in ["unlock_ip", "unlock_filesystem"] {
            self.host
                .write_file(&format!("/run/proc/fs/nfsd/{f}"), "")
                .unwrap();
        }
    }

    fn logs(&self) -> String {
        let pm = self
            .host
            .read_file("/run/pacemaker.log")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let tail: Vec<&str> = pm.lines().rev().take(60).collect();
        format!(
            "--- {} pacemaker.log (last 60, newest first)\n{}\n--- corosync\n{}\n--- pacemakerd\n{}\n--- nsmd\n{}",
            self.host.name(),
            tail.join("\n"),
            self.corosync.log_tail(10),
            self.pacemakerd.log_tail(10),
            self.nsmd
                .as_ref()
                .map(|n| n.log_tail(20))
                .unwrap_or_default()
        )
    }
}

/// Starts what a node runs besides nsmd: rpcbind, the lockd stand-in, corosync, pacemakerd.
fn boot(host: &Host) -> (Proc, LockdStandIn, Proc, Proc) {
    let rpcbind = host.start_rpcbind().unwrap();
    let lockd = LockdStandIn::start(host, true);
    let corosync = host
        .spawn("corosync", &["/usr/sbin/corosync", "-f"])
        .unwrap();
    corosync
        .wait_for_log_line("Initializing transport", T)
        .unwrap();
    let pacemakerd = host
        .spawn_env(
            "pacemakerd",
            &["/usr/sbin/pacemakerd"],
            &[("PCMK_logfile", "/run/pacemaker.log")],
        )
        .unwrap();
    (rpcbind, lockd, corosync, pacemakerd)
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A client: rpcbind, a lockd stand-in, Debian's rpc.statd monitoring a service.
struct Client {
    _host: Host,
    lockd: LockdStandIn,
    statd: Proc,
    _rpcbind: Proc,
}

impl Client {
    fn new(lab: &Lab, name: &str, addr: &str, service: &str) -> Self {
        let host = lab.host(name, &[&format!("{addr}/24")]).unwrap();
        let rpcbind = host.start_rpcbind().unwrap();
        let lockd = LockdStandIn::start(&host, true);
        let (statd, port) = common::debian_statd(&host, None);
        common::sm_mon(&host, port, service, name, COOKIE);
        Self {
            _host: host,
            lockd,
            statd,
            _rpcbind: rpcbind,
        }
    }

    /// (mon_name, state) of every callback so far.
    fn callbacks(&self) -> Vec<(String, i32)> {
        common::callback_states(&self.lockd.calls.lock().unwrap(), COOKIE)
    }

    /// The non-loopback senders of the SM_NOTIFYs rpc.statd received.
    fn senders(&self) -> Vec<String> {
        common::notify_senders(&self.statd.log())
    }
}

struct Cluster {
    lab: Lab,
    shared: tempfile::TempDir,
    nodes: Vec<Node>,
    /// Per service, its clients.
    clients: Vec<Vec<Client>>,
    /// svc1's other clients.
    farm: Farm,
    _farm_host: Host,
}

impl Cluster {
    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.host.name() == name).unwrap()
    }

    /// Where service `i` is active, as nsmd says (exit status 0 of `nsmctl state`).
    fn active_on(&self, i: usize) -> Option<&Node> {
        let active: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.state(SERVICES[i].0) == 0)
            .collect();
        assert!(active.len() <= 1, "{} active on two nodes", SERVICES[i].0);
        active.first().copied()
    }

    fn wait_active_on(&self, i: usize, node: &str) {
        let deadline = Instant::now() + T;
        while self.active_on(i).map(|n| n.host.name()) != Some(node) {
            assert!(
                Instant::now() < deadline,
                "waited {T:?} for {} to be active on {node}\n{}\n{}",
                SERVICES[i].0,
                self.crm_mon(),
                self.nodes.iter().map(Node::logs).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn crm_mon(&self) -> String {
        self.nodes[0]
            .host
            .run(&["/usr/sbin/crm_mon", "-1", "-r", "-f"], T)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until resource `id` runs somewhere.
    fn wait_started(&self, id: &str) {
        let deadline = Instant::now() + T;
        loop {
            let out = self.nodes[1]
                .host
                .run(&["/usr/sbin/crm_mon", "-1", "--output-as=xml"], T)
                .unwrap();
            let xml = String::from_utf8_lossy(&out.stdout).into_owned();
            if xml.lines().any(|l| {
                l.contains(&format!("<resource id=\"{id}\"")) && l.contains("role=\"Started\"")
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {T:?} for {id} to start:\n{xml}\n{}",
                self.nodes.iter().map(Node::logs).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until an operation `op` (e.g. `svc1-nsm_start_0`) failed on the surviving node
    /// n2; returns its exit reason.
    fn wait_failure(&self, op: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let out = self.nodes[1]
                .host
                .run(&["/usr/sbin/crm_mon", "-1", "--output-as=xml"], T)
                .unwrap();
            let xml = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(f) = xml
                .lines()
                .find(|l| l.contains("<failure ") && l.contains(&format!("op_key=\"{op}\"")))
            {
                return f
                    .split("exitreason=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_default()
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "waited {T:?} for {op} to fail:\n{xml}\n{}",
                self.nodes.iter().map(Node::logs).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn state_of(&self, i: usize) -> i32 {
        let b = std::fs::read(self.shared.path().join(SERVICES[i].0).join("state")).unwrap();
        i32::from_ne_bytes(b[..4].try_into().unwrap())
    }

    /// Puts service `i`'s clients back into its records (lockd monitors them again where it
    /// runs), so that the next move notifies them.
    fn monitor_clients(&self, i: usize) {
        let node = self.active_on(i).unwrap();
        // As the kernel's lockd names clients by default (nsm_use_hostnames=0): by address.
        for c in 1..=self.clients[i].len() {
            node.mon(&client_addr(i, c));
        }
        let sm = self.shared.path().join(SERVICES[i].0).join("sm");
        let mut expected = self.clients[i].len();
        if i == 0 {
            // The farm's peers, as lockd's SM_MONs would have recorded them (written
            // directly: a thousand SM_MONs would only slow the test down).
            for p in 1..=self.farm.len() {
                let ip = common::farm::peer_addr(p).to_string();
                let r = nsm_store::Record {
                    mon_name: ip.clone().into_bytes(),
                    my_name: b"server".to_vec(),
                    my_prog: 100_021,
                    my_vers: 4,
                    my_proc: 16,
                    priv_: [0; 16],
                };
                std::fs::write(sm.join(&ip), r.to_line()).unwrap();
            }
            expected += self.farm.len();
        }
        assert_eq!(
            std::fs::read_dir(&sm).unwrap().count(),
            expected,
            "{expected} records in {}",
            sm.display()
        );
    }

    /// Runs `cmd` on `on`, then waits until each client of service `i` was called back once
    /// more; checks what they heard; returns (to the first, to the last callback) from the
    /// command.
    fn drill(&self, what: &str, i: usize, on: &Node, cmd: &[&str]) -> (Duration, Duration) {
        self.drill_with(what, i, || {
            if !cmd.is_empty() {
                on.run(cmd);
            }
        })
    }

    /// [`Cluster::drill`] with `act` as the command.
    fn drill_with(&self, what: &str, i: usize, act: impl FnOnce()) -> (Duration, Duration) {
        let (_, host, addr, _) = SERVICES[i];
        let before: Vec<usize> = self.clients[i]
            .iter()
            .map(|c| c.callbacks().len())
            .collect();
        let others: Vec<usize> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, cs)| cs.iter().map(|c| c.callbacks().len()))
            .collect();
        let other_states: Vec<i32> = (0..SERVICES.len())
            .filter(|j| *j != i)
            .map(|j| self.state_of(j))
            .collect();
        let old_state = self.state_of(i);
        let farm_before = self.farm.counts();
        let t0 = Instant::now();
        act();
        let mut first = None;
        let deadline = t0 + T;
        let last = loop {
            let heard: Vec<bool> = self.clients[i]
                .iter()
                .zip(&before)
                .map(|(c, b)| c.callbacks().len() > *b)
                .collect();
            if first.is_none() && heard.iter().any(|h| *h) {
                first = Some(t0.elapsed());
            }
            if heard.iter().all(|h| *h) {
                break t0.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: waited {T:?} for the clients of {host}\n{}\n{}",
                self.crm_mon(),
                self.nodes.iter().map(Node::logs).collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let new_state = self.state_of(i);
        assert!(
            new_state > old_state,
            "{what}: state {new_state} > {old_state}"
        );
        for (c, b) in self.clients[i].iter().zip(&before) {
            let got = c.callbacks();
            assert_eq!(got.len(), b + 1, "{what}: one callback each: {got:?}");
            assert_eq!(got[*b], (host.to_owned(), new_state), "{what}");
            let senders = c.senders();
            assert!(
                senders.iter().all(|s| s == addr),
                "{what}: SM_NOTIFY only from {addr}: {senders:?}"
            );
        }
        // Active/active: the other service's clients heard nothing and its state stayed.
        let others_after: Vec<usize> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, cs)| cs.iter().map(|c| c.callbacks().len()))
            .collect();
        assert_eq!(others_after, others, "{what}: the other service's clients");
        let other_after: Vec<i32> = (0..SERVICES.len())
            .filter(|j| *j != i)
            .map(|j| self.state_of(j))
            .collect();
        assert_eq!(
            other_after, other_states,
            "{what}: the other service's state"
        );
        // svc1's farm peers: each notified once more, with the service's name and new state,
        // from its address; the other service's moves never reach them.
        let (mut first, mut last) = (first.unwrap(), last);
        if i == 0 {
            let deadline = t0 + T;
            while self
                .farm
                .counts()
                .iter()
                .zip(&farm_before)
                .any(|(n, b)| n <= b)
            {
                assert!(
                    Instant::now() < deadline,
                    "{what}: waited {T:?} for the farm's {} peers",
                    self.farm.len()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let seen = self.farm.seen.lock().unwrap();
            for (p, b) in (1..).zip(&farm_before) {
                let n = &seen[p][*b];
                assert_eq!(
                    (n.mon_name.as_str(), n.state, n.from.ip().to_string()),
                    (host, new_state, addr.to_owned()),
                    "{what}: farm peer {p}"
                );
                let at = n.at.saturating_duration_since(t0);
                first = first.min(at);
                last = last.max(at);
            }
        } else {
            assert_eq!(self.farm.counts(), farm_before, "{what}: svc1's farm peers");
        }
        eprintln!(
            "drill {what}: first callback {:.3} s, last {:.3} s after the command ({} clients)",
            first.as_secs_f64(),
            last.as_secs_f64(),
            self.clients[i].len() + if i == 0 { self.farm.len() } else { 0 }
        );
        (first, last)
    }
}

fn setup() -> Cluster {
    let shared = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let inst = shared.path().join("instances");
    std::fs::create_dir_all(&inst).unwrap();
    for (name, host, addr, _) in SERVICES {
        let dir = shared.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            inst.join(format!("{name}.toml")),
            format!(
                "hostname = \"{host}\"\naddresses = [\"{addr}\"]\nstate_dir = \"{}\"\n\
                 [notify]\nretry_seconds = 30\n\
                 [readiness]\nrpcbind = [100021]\ntimeout_seconds = 10\n\
                 [release]\nexports = [\"/export/{name}\"]\n",
                dir.display()
            ),
        )
        .unwrap();
    }
    let lab = Lab::new("pcmk").unwrap();
    for (_, host, addr, _) in SERVICES {
        lab.add_name(addr, &[host]).unwrap();
    }
    let t0 = Instant::now();
    let mut nodes = vec![
        Node::new(&lab, "n1", "198.51.100.11"),
        Node::new(&lab, "n2", "198.51.100.12"),
    ];
    for n in &mut nodes {
        n.start_nsmd(shared.path());
    }
    let clients = SERVICES
        .iter()
        .enumerate()
        .map(|(i, (_, host, _, _))| {
            (1..=CLIENTS)
                .map(|c| Client::new(&lab, &format!("c{}{c}", i + 1), &client_addr(i, c), host))
                .collect()
        })
        .collect();
    let farm_host = lab.host("farm", &[&format!("{FARM_ADDR}/24")]).unwrap();
    let farm = Farm::start(&farm_host, FARM_PEERS);
    let cluster = Cluster {
        lab,
        shared,
        nodes,
        clients,
        farm,
        _farm_host: farm_host,
    };
    // Both nodes online, a DC elected.
    let deadline = Instant::now() + T;
    loop {
        let out = cluster.nodes[0]
            .host
            .run(&["/usr/sbin/crm_mon", "-1", "--output-as=xml"], T)
            .unwrap();
        let xml = String::from_utf8_lossy(&out.stdout);
        let online = xml.matches("online=\"true\"").count();
        if online == 2 && xml.contains("<current_dc present=\"true\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "waited {T:?} for two online nodes and a DC:\n{xml}\n{}",
            cluster.nodes.iter().map(Node::logs).collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    let file = cluster.shared.path().join("nsmd.crm");
    std::fs::write(&file, crm_config(cluster.shared.path())).unwrap();
    cluster.nodes[0].run(&[
        "/usr/sbin/crm",
        "configure",
        "load",
        "update",
        file.to_str().unwrap(),
    ]);
    cluster.wait_active_on(0, "n1");
    cluster.wait_active_on(1, "n2");
    let _ = &cluster.lab;
    cluster
}

/// Drills a (standby), b (move, clear), c (kill -9 of nsmd) and e (active/active: every
/// drill checks the other service's clients and state stay untouched).
#[test]
fn pacemaker_failover_drills() {
    if !require(
        "pacemaker_failover_drills",
        &[
            "rpcbind",
            "rpc.statd",
            "corosync",
            "pacemakerd",
            "crm_resource",
            "crm_mon",
            "crm",
        ],
    ) {
        return;
    }
    let c = setup();
    let (n1, n2) = (c.node("n1"), c.node("n2"));

    // a. Standby of the active node: svc1 moves to n2 (svc2 stays there, untouched).
    c.monitor_clients(0);
    let a = c.drill(
        "a: standby n1",
        0,
        n1,
        &[
            "/usr/sbin/crm_attribute",
            "--node",
            "n1",
            "--name",
            "standby",
            "--update",
            "on",
        ],
    );
    c.wait_active_on(0, "n2");
    // Back home (location preference): its clients are notified again, from n1.
    c.monitor_clients(0);
    c.drill(
        "a: n1 back online",
        0,
        n1,
        &[
            "/usr/sbin/crm_attribute",
            "--node",
            "n1",
            "--name",
            "standby",
            "--update",
            "off",
        ],
    );
    c.wait_active_on(0, "n1");

    // b. crm_resource --move, then --clear (back to its preferred node).
    c.monitor_clients(1);
    let b = c.drill(
        "b: move svc2 to n1",
        1,
        n2,
        &[
            "/usr/sbin/crm_resource",
            "--resource",
            "svc2",
            "--move",
            "--node",
            "n1",
        ],
    );
    c.wait_active_on(1, "n1");
    c.monitor_clients(1);
    let b2 = c.drill(
        "b: clear svc2",
        1,
        n2,
        &["/usr/sbin/crm_resource", "--resource", "svc2", "--clear"],
    );
    c.wait_active_on(1, "n2");

    // c. kill -9 of nsmd on the active node: the monitor fails, Pacemaker stops the group
    // there (the kernel lock release runs without nsmd) and starts it on n2.
    c.monitor_clients(0);
    n1.clear_kernel();
    n1.nsmd.as_ref().unwrap().signal(Signal::Kill).unwrap();
    let cc = c.drill("c: kill -9 nsmd on n1", 0, n1, &[]);
    c.wait_active_on(0, "n2");
    assert_eq!(
        n1.kernel("unlock_ip"),
        format!("{}\n", SERVICES[0].2),
        "released on the failed node"
    );
    assert_eq!(n1.kernel("unlock_filesystem"), "/export/svc1\n");
    assert_eq!(n1.state("svc1"), 7, "n1 holds nothing of svc1");

    // n1's nsmd back, its failure cleared: svc1 goes home (location preference).
    let mut c = c;
    c.nodes[0].start_nsmd(c.shared.path());
    c.monitor_clients(0);
    let back = c.drill(
        "c: n1 recovered, --cleanup",
        0,
        &c.nodes[1],
        &["/usr/sbin/crm_resource", "--resource", "svc1", "--cleanup"],
    );
    c.wait_active_on(0, "n1");

    // d. n1 lost with fencing: corosync and Pacemaker die on n1; n2 fences it (the lab's
    // agent takes n1 off the network and kills everything in it, nsmd too), then starts svc1.
    let fence = c.shared.path().join("fence");
    std::fs::create_dir_all(&fence).unwrap();
    for n in &c.nodes {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(n.host.netns_path()).unwrap().ino();
        std::fs::write(
            fence.join(format!("{}.netns", n.host.name())),
            format!("net:[{ino}]"),
        )
        .unwrap();
    }
    let file = c.shared.path().join("fence.crm");
    std::fs::write(
        &file,
        format!(
            "primitive fence-lab stonith:fence_nsmdlab params pcmk_host_list=\"n1 n2\" \
             pcmk_reboot_action=off dir={} op monitor interval=60s\n\
             property stonith-enabled=true\n",
            fence.display()
        ),
    )
    .unwrap();
    c.nodes[1].run(&[
        "/usr/sbin/crm",
        "configure",
        "load",
        "update",
        file.to_str().unwrap(),
    ]);
    c.wait_started("fence-lab");
    c.monitor_clients(0);
    let fenced = c.drill_with("d: n1 lost, fenced", 0, || c.nodes[0].kill_cluster_stack());
    c.wait_active_on(0, "n2");
    assert!(fence.join("n1.off").exists(), "n1 was fenced");
    assert_eq!(
        c.nodes[0].host.pids(),
        Vec::<u32>::new(),
        "nothing runs on n1"
    );
    // Power n1 on again: it rejoins, svc1 goes home, its clients are notified from n1.
    c.monitor_clients(0);
    std::fs::remove_file(fence.join("n1.off")).unwrap();
    let shared = c.shared.path().to_owned();
    c.nodes[0].power_on(&shared);
    c.drill("d: n1 powered on, svc1 home", 0, &c.nodes[1], &[]);
    c.wait_active_on(0, "n1");
    c.nodes[1].run(&[
        "/usr/sbin/crm_attribute",
        "--type",
        "crm_config",
        "--name",
        "stonith-enabled",
        "--update",
        "false",
    ]);

    // d'. n1 lost without fencing: its corosync and Pacemaker die, its nsmd lives on and
    // still holds svc1's state directory (the address leaves with the node's network). n2
    // must not serve or notify svc1: the agent's start fails naming the holder.
    c.monitor_clients(0);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let heard: Vec<usize> = c.clients[0].iter().map(|c| c.callbacks().len()).collect();
    let state = c.state_of(0);
    n1.kill_cluster_stack();
    n1.host.del_addr(&format!("{}/24", SERVICES[0].2)).unwrap();
    let reason = c.wait_failure("svc1-nsm_start_0");
    assert!(
        reason.contains("takeover of svc1 failed") && reason.contains("owner n1 pid"),
        "the exit reason names the holder: {reason}"
    );
    assert_eq!(n2.state("svc1"), 3, "n2 does not serve svc1");
    assert_eq!(n1.state("svc1"), 0, "n1's nsmd still serves it");
    assert_eq!(c.state_of(0), state, "svc1's state untouched");
    let now: Vec<usize> = c.clients[0].iter().map(|c| c.callbacks().len()).collect();
    assert_eq!(now, heard, "no client notified while n1 holds svc1");
    // The holder is gone: the next start (after a cleanup) succeeds, clients hear of it.
    c.nodes[0]
        .nsmd
        .as_ref()
        .unwrap()
        .signal(Signal::Kill)
        .unwrap();
    // The cleanup only once the failed start's transition is over: on a loaded machine a
    // cleanup issued while Pacemaker was still stopping the group was once followed by no
    // new transition at all.
    n2.run(&["/usr/sbin/crm_resource", "--wait", "--timeout", "60s"]);
    let lost = c.drill(
        "d': holder gone, --cleanup",
        0,
        n2,
        &["/usr/sbin/crm_resource", "--resource", "svc1", "--cleanup"],
    );
    c.wait_active_on(0, "n2");
    // The stale nsmd comes back on n1 (outside the cluster): its epoch is no longer the
    // owner file's, so it does not resume svc1, is fenced, and sends nothing.
    let heard: Vec<usize> = c.clients[0].iter().map(|c| c.callbacks().len()).collect();
    let farm = c.farm.counts();
    let shared = c.shared.path().to_owned();
    c.nodes[0].start_nsmd(&shared);
    let n1 = &c.nodes[0];
    n1.nsmd
        .as_ref()
        .unwrap()
        .wait_for_log_line("not resumed", T)
        .unwrap();
    assert_eq!(n1.state("svc1"), 4, "the stale owner is fenced");
    let out = n1.host.run(&[NSMCTL, "notify", "svc1"], T).unwrap();
    assert!(!out.status.success(), "a fenced instance notifies no one");
    // What n1 would send would leave within its first second.
    std::thread::sleep(Duration::from_secs(2));
    let now: Vec<usize> = c.clients[0].iter().map(|c| c.callbacks().len()).collect();
    assert_eq!(now, heard, "nothing from the stale nsmd");
    assert_eq!(c.farm.counts(), farm, "nothing from the stale nsmd");

    eprintln!("| drill | first callback | last callback |");
    for (what, (f, l)) in [
        ("a. standby of the active node", a),
        ("b. crm_resource --move", b),
        ("b. crm_resource --clear", b2),
        ("c. kill -9 of nsmd (monitor interval 2 s)", cc),
        ("c. back home after --cleanup", back),
        (
            "d. lost node with fencing (kill -9 of corosync, pacemaker*)",
            fenced,
        ),
        (
            "d'. lost node without fencing: --cleanup once the holder is gone",
            lost,
        ),
    ] {
        eprintln!(
            "| {what} | {:.3} s | {:.3} s |",
            f.as_secs_f64(),
            l.as_secs_f64()
        );
    }
}
