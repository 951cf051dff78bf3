//! The control protocol between `nsmctl` and nsmd, over nsmd's Unix socket (root or nsmd's
//! user only): one connection per request, one JSON object per line each way.
//!
//! ```text
//! nsmctl -> nsmd   {"version":1,"request":{"takeover":{"name":"svc1","force":false}}}
//! nsmd -> nsmctl   {"instance":"svc1","state":7,"ok":true}
//!                  {"error":"no instance named \"svc9\"","kind":"no-such-instance","ok":false}
//! ```
//!
//! A request names the protocol [`VERSION`] its sender speaks; nsmd serves exactly its own
//! version (unknown fields are refused) and answers any other, or a line that is not a
//! request of it, with an error of kind `"version"` or `"request"` that names both sides and
//! what to do. Any change to a request's meaning bumps the version. A reply is the object
//! `nsmctl --json` prints: replies may gain fields within a version (readers ignore what
//! they do not know), never lose or change one.
//!
//! nsmd before version 1 read one word-separated text line (`takeover svc1 force`) and
//! answered the same reply objects, without `"kind"` in its errors. A package upgrade
//! installs the new nsmctl while the old nsmd still runs until it is restarted, and the
//! cluster managers call nsmctl in between (a monitor that fails makes Pacemaker stop the
//! resource; a stop that fails fences the node): nsmctl recognises that nsmd's answer to a
//! JSON line ([`ErrorReply::is_from_text_protocol_nsmd`]) and asks again in the old form
//! ([`Request::text_line`]). The other way round (an nsmctl before version 1 talking to this
//! nsmd) gets an error that says to use the nsmctl installed with this nsmd.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The protocol version of this nsmctl and nsmd.
pub const VERSION: u32 = 1;

/// The longest request line nsmd reads (with its newline); a longer one is refused.
pub const MAX_REQUEST: usize = 4096;

/// What nsmctl asks nsmd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every instance and its state (also what `nsmctl state` and `release --offline` ask).
    Status,
    /// Take the instance over on this node.
    Takeover {
        /// The instance.
        name: String,
        /// Over another node's ownership lock (the cluster manager decided).
        force: bool,
    },
    /// Release the instance from this node.
    Release {
        /// The instance.
        name: String,
    },
    /// Notify the instance's peers (`sm.bak/`) again.
    Notify {
        /// The instance.
        name: String,
    },
    /// The peers the instance monitors (`node`: the node instance).
    Peers {
        /// The instance.
        name: String,
    },
    /// Every instance's counters as OpenMetrics text.
    Metrics,
}

/// A request line: the protocol version and the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    /// [`VERSION`] of the sender.
    pub version: u32,
    /// What is asked.
    pub request: Request,
}

impl Request {
    /// The line sent to nsmd (without the newline): compact JSON, never a space outside a
    /// string.
    pub fn line(&self) -> String {
        let line = RequestLine {
            version: VERSION,
            request: self.clone(),
        };
        // Strings and derived maps only: serialising cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// The request as an nsmd before version 1 reads it (`takeover svc1 force`).
    pub fn text_line(&self) -> String {
        match self {
            Self::Status => "status".to_owned(),
            Self::Metrics => "metrics".to_owned(),
            Self::Takeover { name, force: false } => format!("takeover {name}"),
            Self::Takeover { name, force: true } => format!("takeover {name} force"),
            Self::Release { name } => format!("release {name}"),
            Self::Notify { name } => format!("notify {name}"),
            Self::Peers { name } => format!("peers {name}"),
        }
    }

    /// For messages: the request as the operator typed it (`takeover svc1 --force`).
    pub fn shown(&self) -> String {
        match self {
            Self::Takeover { name, force: true } => format!("takeover --force {name}"),
            other => other.text_line(),
        }
    }
}

/// Reads one request line (without its newline) as nsmd does: a request of [`VERSION`], or
/// the error reply to send back.
pub fn decode_request(line: &[u8]) -> Result<Request, ErrorReply> {
    let text = std::str::from_utf8(line).map_err(|_| {
        ErrorReply::new(
            "the control request is not UTF-8 text: nsmctl sends one JSON object per line",
            KIND_REQUEST,
        )
    })?;
    let text = text.trim();
    if !text.starts_with('{') {
        let word = text.split_whitespace().next().unwrap_or_default();
        let words = [
            "status", "takeover", "release", "notify", "peers", "metrics",
        ];
        return Err(if words.contains(&word) {
            ErrorReply::new(
                format!(
                    "{text:?} is a request of an nsmctl from before control protocol version 1 \
                     (an old nsmctl still in use?); this nsmd speaks version {VERSION}: use the \
                     nsmctl installed with this nsmd"
                ),
                KIND_VERSION,
            )
        } else {
            ErrorReply::new(
                format!(
                    "not a control request: {:?} (nsmctl sends one JSON object per line, \
                     protocol version {VERSION})",
                    shorten(text)
                ),
                KIND_REQUEST,
            )
        });
    }
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let bad = |e: serde_json::Error| {
        ErrorReply::new(
            format!(
                "not a control request of protocol version {VERSION}: {}: {:?}",
                shorten(&e.to_string()),
                shorten(text)
            ),
            KIND_REQUEST,
        )
    };
    let v: Version = serde_json::from_str(text).map_err(bad)?;
    if v.version != VERSION {
        let what = if v.version > VERSION {
            "the nsmd running is older than the nsmctl installed: restart nsmd (systemctl \
             restart nsmd) to run the installed version"
        } else {
            "use the nsmctl installed with this nsmd"
        };
        return Err(ErrorReply::new(
            format!(
                "nsmctl speaks control protocol version {}, this nsmd version {VERSION}: {what}",
                v.version
            ),
            KIND_VERSION,
        ));
    }
    let line: RequestLine = serde_json::from_str(text).map_err(bad)?;
    Ok(line.request)
}

/// At most 200 characters of `text`, for messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(MAX).collect();
    s.push_str("...");
    s
}

/// The error kind of a request nsmd cannot read.
pub const KIND_REQUEST: &str = "request";
/// The error kind of a request of another protocol version.
pub const KIND_VERSION: &str = "version";

/// nsmd's reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// To [`Request::Status`].
    Status(StatusReply),
    /// To [`Request::Takeover`].
    Takeover(TakeoverReply),
    /// To [`Request::Release`].
    Release(ReleaseReply),
    /// To [`Request::Notify`].
    Notify(NotifyReply),
    /// To [`Request::Peers`].
    Peers(PeersReply),
    /// To [`Request::Metrics`].
    Metrics(MetricsReply),
    /// Not done: why.
    Error(ErrorReply),
}

/// A reply object: its fields and `"ok"`.
#[derive(Serialize)]
struct Flat<'a, T> {
    #[serde(flatten)]
    body: &'a T,
    ok: bool,
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ok = !matches!(self, Self::Error(_));
        match self {
            Self::Status(b) => Flat { body: b, ok }.serialize(s),
            Self::Takeover(b) => Flat { body: b, ok }.serialize(s),
            Self::Release(b) => Flat { body: b, ok }.serialize(s),
            Self::Notify(b) => Flat { body: b, ok }.serialize(s),
            Self::Peers(b) => Flat { body: b, ok }.serialize(s),
            Self::Metrics(b) => Flat { body: b, ok }.serialize(s),
            Self::Error(b) => Flat { body: b, ok }.serialize(s),
        }
    }
}

impl Response {
    /// The reply line (without the newline).
    pub fn line(&self) -> String {
        // Strings, numbers and addresses only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads nsmd's reply line to `request`.
    pub fn decode(request: &Request, line: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Ok {
            ok: bool,
        }
        if !serde_json::from_str::<Ok>(line)?.ok {
            return serde_json::from_str(line).map(Self::Error);
        }
        Ok(match request {
            Request::Status => Self::Status(serde_json::from_str(line)?),
            Request::Takeover { .. } => Self::Takeover(serde_json::from_str(line)?),
            Request::Release { .. } => Self::Release(serde_json::from_str(line)?),
            Request::Notify { .. } => Self::Notify(serde_json::from_str(line)?),
            Request::Peers { .. } => Self::Peers(serde_json::from_str(line)?),
            Request::Metrics => Self::Metrics(serde_json::from_str(line)?),
        })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Every instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The node instance first, then the service instances.
    pub instances: Vec<InstanceStatus>,
}

/// One instance in [`StatusReply`], by its `"role"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum InstanceStatus {
    /// The node instance (the host's own NSM, what rpc.statd is).
    Node(NodeStatus),
    /// A service instance.
    Service(ServiceStatus),
}

/// The node instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `node`.
    pub name: String,
    /// Always true: the node instance serves while nsmd runs.
    pub active: bool,
    /// Its state number.
    pub state: i32,
    /// How many peers it monitors.
    pub peers: usize,
    /// Its state directory.
    pub state_dir: String,
    /// None: it answers on every address no service instance has.
    pub addresses: Vec<IpAddr>,
}

/// A service instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// Its service hostname.
    pub hostname: String,
    /// Whether it is active on this node (fenced or not).
    pub active: bool,
    /// Its state number, when active.
    pub state: Option<i32>,
    /// The ownership epoch held here (also one held before nsmd restarted and not resumed).
    pub epoch: Option<u64>,
    /// Another node took it over (or it was held before nsmd restarted and not resumed):
    /// nothing is answered or sent for it here.
    pub fenced: bool,
    /// The takeover or release step under way.
    pub step: Option<String>,
    /// How many peers it monitors.
    pub peers: usize,
    /// Its state directory.
    pub state_dir: String,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Its last notification run.
    pub notify: NotifyStatus,
}

/// The last notification run of a service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStatus {
    /// Peers to notify.
    pub peers: usize,
    /// Peers that acknowledged (when finished).
    pub acked: usize,
    /// Peers given up (when finished).
    pub gave_up: usize,
    /// Whether the run finished.
    pub finished: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// A takeover done (or nothing to do: `already`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeoverReply {
    /// The instance.
    pub instance: String,
    /// Its state number.
    pub state: i32,
    /// It was active here already: nothing was done.
    #[serde(default, skip_serializing_if = "is_false")]
    pub already: bool,
}

/// A release done (or nothing to do: `already`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReply {
    /// The instance.
    pub instance: String,
    /// This node held nothing of it: nothing was done.
    #[serde(default, skip_serializing_if = "is_false")]
    pub already: bool,
}

/// A notification run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyReply {
    /// The instance.
    pub instance: String,
    /// How many peers it notifies.
    pub peers: usize,
}

/// The peers an instance monitors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersReply {
    /// The instance.
    pub instance: String,
    /// Its peers, in the order they were first monitored.
    pub peers: Vec<Peer>,
}

/// One monitored peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's name, as lockd gave it.
    pub mon_name: String,
    /// The name of this host the peer knows.
    pub my_name: String,
}

/// The OpenMetrics text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// The exposition, ending in `# EOF`.
    pub metrics: String,
}

/// A request not done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What failed, on which instance, file or address, and what to do.
    pub error: String,
    /// The kind of error for scripts ([`nsm_statd::Error::kind`], [`KIND_REQUEST`],
    /// [`KIND_VERSION`], ...). Absent only in the replies of nsmd before version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl ErrorReply {
    /// An error of `kind`.
    pub fn new(error: impl Into<String>, kind: &str) -> Self {
        Self {
            error: error.into(),
            kind: Some(kind.to_owned()),
        }
    }

    /// Whether this is what an nsmd before version 1 answers to a JSON request line: it took
    /// the whole line for an unknown command word.
    pub fn is_from_text_protocol_nsmd(&self) -> bool {
        self.kind.is_none() && self.error.starts_with("unknown command \"{")
    }
}

impl From<&nsm_statd::Error> for ErrorReply {
    fn from(e: &nsm_statd::Error) -> Self {
        Self::new(e.to_string(), e.kind())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        let name = "svc1".to_owned();
        vec![
            Request::Status,
            Request::Takeover {
                name: name.clone(),
                force: false,
            },
            Request::Takeover {
                name: name.clone(),
                force: true,
            },
            Request::Release { name: name.clone() },
            Request::Notify { name: name.clone() },
            Request::Peers { name },
            Request::Metrics,
        ]
    }

    #[test]
    fn every_request_goes_through_the_line_and_back() {
        for r in every_request() {
            let line = r.line();
            assert!(!line.contains(' ') && !line.contains('\n'), "{line}");
            assert_eq!(decode_request(line.as_bytes()).unwrap(), r, "{line}");
        }
    }

    #[test]
    fn request_lines_byte_for_byte() {
        let vectors = [
            (Request::Status, r#"{"version":1,"request":"status"}"#),
            (Request::Metrics, r#"{"version":1,"request":"metrics"}"#),
            (
                Request::Takeover {
                    name: "svc1".into(),
                    force: true,
                },
                r#"{"version":1,"request":{"takeover":{"name":"svc1","force":true}}}"#,
            ),
            (
                Request::Release {
                    name: "svc1".into(),
                },
                r#"{"version":1,"request":{"release":{"name":"svc1"}}}"#,
            ),
            (
                Request::Peers {
                    name: "node".into(),
                },
                r#"{"version":1,"request":{"peers":{"name":"node"}}}"#,
            ),
        ];
        for (r, line) in vectors {
            assert_eq!(r.line(), line);
            assert_eq!(decode_request(line.as_bytes()).unwrap(), r);
        }
    }

    fn every_response() -> Vec<(Request, Response)> {
        let svc = |name: &str| name.to_owned();
        vec![
            (
                Request::Status,
                Response::Status(StatusReply {
                    instances: vec![
                        InstanceStatus::Node(NodeStatus {
                            name: "node".into(),
                            active: true,
                            state: 3,
                            peers: 2,
                            state_dir: "/var/lib/nfs".into(),
                            addresses: vec![],
                        }),
                        InstanceStatus::Service(ServiceStatus {
                            name: "svc1".into(),
                            hostname: "svc1.example.test".into(),
                            active: true,
                            state: Some(7),
                            epoch: Some(4),
                            fenced: false,
                            step: Some("waiting for readiness".into()),
                            peers: 1,
                            state_dir: "/srv/svc1/nfs".into(),
                            addresses: vec![
                                "198.51.100.10".parse().unwrap(),
                                "::1".parse().unwrap(),
                            ],
                            notify: NotifyStatus {
                                peers: 1,
                                acked: 0,
                                gave_up: 0,
                                finished: false,
                                error: Some("x".into()),
                            },
                        }),
                    ],
                }),
            ),
            (
                Request::Takeover {
                    name: svc("svc1"),
                    force: false,
                },
                Response::Takeover(TakeoverReply {
                    instance: svc("svc1"),
                    state: 7,
                    already: true,
                }),
            ),
            (
                Request::Release { name: svc("svc1") },
                Response::Release(ReleaseReply {
                    instance: svc("svc1"),
                    already: false,
                }),
            ),
            (
                Request::Notify { name: svc("svc1") },
                Response::Notify(NotifyReply {
                    instance: svc("svc1"),
                    peers: 12,
                }),
            ),
            (
                Request::Peers { name: svc("node") },
                Response::Peers(PeersReply {
                    instance: svc("node"),
                    peers: vec![Peer {
                        mon_name: "cli1".into(),
                        my_name: "srv".into(),
                    }],
                }),
            ),
            (
                Request::Metrics,
                Response::Metrics(MetricsReply {
                    metrics: "# EOF\n".into(),
                }),
            ),
            (
                Request::Metrics,
                Response::Error(ErrorReply::new("no", "request")),
            ),
        ]
    }

    #[test]
    fn every_response_goes_through_the_line_and_back() {
        for (req, resp) in every_response() {
            let line = resp.line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Response::decode(&req, &line).unwrap(), resp, "{line}");
        }
    }

    /// The objects `nsmctl --json` prints, with the fields they had before the protocol was
    /// typed (scripts read them with jq).
    #[test]
    fn reply_lines_byte_for_byte() {
        let vectors = [
            (
                Response::Takeover(TakeoverReply {
                    instance: "svc1".into(),
                    state: 7,
                    already: false,
                }),
                r#"{"instance":"svc1","state":7,"ok":true}"#,
            ),
            (
                Response::Release(ReleaseReply {
                    instance: "svc1".into(),
                    already: true,
                }),
                r#"{"instance":"svc1","already":true,"ok":true}"#,
            ),
            (
                Response::Error(ErrorReply::from(&nsm_statd::Error::NotActive {
                    name: "svc1".into(),
                })),
                r#"{"error":"instance svc1 is not active on this node","kind":"not-active","ok":false}"#,
            ),
            (
                Response::Status(StatusReply {
                    instances: vec![InstanceStatus::Node(NodeStatus {
                        name: "node".into(),
                        active: true,
                        state: 3,
                        peers: 0,
                        state_dir: "/var/lib/nfs".into(),
                        addresses: vec![],
                    })],
                }),
                r#"{"instances":[{"role":"node","name":"node","active":true,"state":3,"peers":0,"state_dir":"/var/lib/nfs","addresses":[]}],"ok":true}"#,
            ),
        ];
        for (r, line) in vectors {
            assert_eq!(r.line(), line);
        }
    }

    /// What nsmd before version 1 answered (its reply objects had their keys sorted): the
    /// typed replies read them, and its answer to a JSON line is recognised.
    #[test]
    fn replies_of_an_nsmd_before_version_1_are_read() {
        let status = r#"{"instances":[{"active":true,"addresses":[],"name":"node","peers":0,"role":"node","state":3,"state_dir":"/var/lib/nfs"},{"active":false,"addresses":["198.51.100.10"],"epoch":null,"fenced":false,"hostname":"svc1.example.test","name":"svc1","notify":{"acked":0,"error":null,"finished":false,"gave_up":0,"peers":0},"peers":0,"role":"service","state":null,"state_dir":"/srv/svc1","step":null}],"ok":true}"#;
        let Response::Status(s) = Response::decode(&Request::Status, status).unwrap() else {
            panic!("not a status");
        };
        assert!(matches!(&s.instances[1], InstanceStatus::Service(s) if s.name == "svc1"));
        // The old nsmd's words: `format!("unknown command {cmd:?} (...)")`, the first
        // whitespace-separated word of the line as `cmd`: all of a JSON line.
        let req = Request::Takeover {
            name: "svc1".into(),
            force: true,
        };
        let cmd = req.line();
        let old = serde_json::json!({
            "ok": false,
            "error": format!(
                "unknown command {cmd:?} (status, takeover, release, notify, peers, metrics)"
            ),
        })
        .to_string();
        let Response::Error(e) = Response::decode(&req, &old).unwrap() else {
            panic!("not an error");
        };
        assert!(e.is_from_text_protocol_nsmd(), "{e:?}");
        assert_eq!(req.text_line(), "takeover svc1 force");
        // An error of this nsmd is never taken for one.
        for (_, r) in every_response() {
            if let Response::Error(e) = r {
                assert!(!e.is_from_text_protocol_nsmd());
            }
        }
        let e = decode_request(b"{\"unknown").unwrap_err();
        assert!(!e.is_from_text_protocol_nsmd());
    }

    #[test]
    fn what_is_not_a_request_of_this_version_gets_an_error_that_says_what_to_do() {
        let cases: [(&[u8], &str, &str); 9] = [
            (
                b"takeover svc1",
                "version",
                "use the nsmctl installed with this nsmd",
            ),
            (b"status", "version", "before control protocol version 1"),
            (
                br#"{"version":2,"request":"status"}"#,
                "version",
                "nsmctl speaks control protocol version 2, this nsmd version 1: the nsmd \
                 running is older than the nsmctl installed: restart nsmd",
            ),
            (
                br#"{"version":0,"request":"status"}"#,
                "version",
                "use the nsmctl installed with this nsmd",
            ),
            (b"garbage", "request", "not a control request: \"garbage\""),
            (b"\xff\xfe", "request", "not UTF-8"),
            (
                br#"{"version":1,"request":"reboot"}"#,
                "request",
                "unknown variant `reboot`",
            ),
            (
                br#"{"version":1,"request":{"takeover":{"name":"a","force":true,"now":1}}}"#,
                "request",
                "unknown field `now`",
            ),
            (
                br#"{"request":"status"}"#,
                "request",
                "missing field `version`",
            ),
        ];
        for (line, kind, says) in cases {
            let e = decode_request(line).unwrap_err();
            assert_eq!(e.kind.as_deref(), Some(kind), "{e:?}");
            assert!(
                e.error.contains(says),
                "{:?}: {}",
                String::from_utf8_lossy(line),
                e.error
            );
        }
        let long = format!("{{\"version\":1,\"request\":\"{}\"}}", "x".repeat(5000));
        let e = decode_request(long.as_bytes()).unwrap_err();
        assert!(
            e.error.len() < 600,
            "a long line is not echoed whole: {}",
            e.error
        );
    }
}
