//! The NSM protocol, program 100024 version 1 (`proto/sm_inter.x`; X/Open XNFS "Network Status
//! Monitor Protocol"; nfs-utils `support/nsm/sm_inter.x`), and `struct status`, the argument
//! of the lockd callback (NLM program 100021, procedure 16; `proto/nlm_callback.x`).

use bytes::BufMut;

use crate::codec::xdr_struct;
use crate::{Decode, Decoder, Encode, Opaque, XdrError};

/// `SM_PROG`.
pub const SM_PROG: u32 = 100_024;
/// `SM_VERS`.
pub const SM_VERS: u32 = 1;
/// `SM_MAXSTRLEN`: the bound of every NSM string.
pub const SM_MAXSTRLEN: usize = 1024;
/// `SM_PRIV_SIZE`: the length of the lockd cookie.
pub const SM_PRIV_SIZE: usize = 16;

/// `void SM_NULL(void) = 0`.
pub const SM_NULL: u32 = 0;
/// `sm_stat_res SM_STAT(sm_name) = 1`.
pub const SM_STAT: u32 = 1;
/// `sm_stat_res SM_MON(mon) = 2`.
pub const SM_MON: u32 = 2;
/// `sm_stat SM_UNMON(mon_id) = 3`.
pub const SM_UNMON: u32 = 3;
/// `sm_stat SM_UNMON_ALL(my_id) = 4`.
pub const SM_UNMON_ALL: u32 = 4;
/// `void SM_SIMU_CRASH(void) = 5`.
pub const SM_SIMU_CRASH: u32 = 5;
/// `void SM_NOTIFY(stat_chge) = 6`.
pub const SM_NOTIFY: u32 = 6;

/// The NLM program lockd registers; the only callback program nsmd accepts in SM_MON.
pub const NLM_PROG: u32 = 100_021;
/// `NLMPROC_NSM_NOTIFY`: the Linux-private NLM procedure statd calls back.
pub const NLMPROC_NSM_NOTIFY: u32 = 16;

/// An NSM `string<SM_MAXSTRLEN>`.
pub type SmString<'a> = Opaque<'a, SM_MAXSTRLEN>;

/// `struct sm_name { string mon_name<SM_MAXSTRLEN>; }`: the argument of SM_STAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmName<'a> {
    /// The host asked about.
    pub mon_name: SmString<'a>,
}
xdr_struct!([<'a>] SmName<'a> { mon_name });

/// `enum res { stat_succ = 0, stat_fail = 1 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Res {
    /// `stat_succ`.
    StatSucc,
    /// `stat_fail`.
    StatFail,
}

impl Decode<'_> for Res {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        match d.u32()? {
            0 => Ok(Self::StatSucc),
            1 => Ok(Self::StatFail),
            value => Err(XdrError::BadDiscriminant { what: "res", value }),
        }
    }
}

impl Encode for Res {
    fn encoded_len(&self) -> usize {
        4
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u32(match self {
            Self::StatSucc => 0,
            Self::StatFail => 1,
        });
    }
}

/// `struct sm_stat_res { res res_stat; int state; }`: the result of SM_STAT and SM_MON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmStatRes {
    /// Success or failure.
    pub res_stat: Res,
    /// The state number of the answering host.
    pub state: i32,
}
xdr_struct!([] SmStatRes { res_stat, state });

/// `struct sm_stat { int state; }`: the result of SM_UNMON and SM_UNMON_ALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmStat {
    /// The state number of the answering host.
    pub state: i32,
}
xdr_struct!([] SmStat { state });

/// `struct my_id { string my_name<SM_MAXSTRLEN>; int my_prog; int my_vers; int my_proc; }`:
/// who is to be called back, and how. The `.x` declares the numbers `int`; they are program,
/// version and procedure numbers, so they are kept unsigned (the wire form is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MyId<'a> {
    /// The monitoring host's own name (lockd sends the nodename).
    pub my_name: SmString<'a>,
    /// Callback program (100021 for lockd).
    pub my_prog: u32,
    /// Callback version.
    pub my_vers: u32,
    /// Callback procedure (16 for lockd).
    pub my_proc: u32,
}
xdr_struct!([<'a>] MyId<'a> { my_name, my_prog, my_vers, my_proc });

/// `struct mon_id { string mon_name<SM_MAXSTRLEN>; struct my_id my_id; }`: the argument of
/// SM_UNMON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonId<'a> {
    /// The host to be monitored.
    pub mon_name: SmString<'a>,
    /// Who monitors it.
    pub my_id: MyId<'a>,
}
xdr_struct!([<'a>] MonId<'a> { mon_name, my_id });

/// `struct mon { struct mon_id mon_id; opaque priv[SM_PRIV_SIZE]; }`: the argument of SM_MON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mon<'a> {
    /// What is monitored, by whom.
    pub mon_id: MonId<'a>,
    /// The caller's cookie, returned verbatim in the callback.
    pub priv_: [u8; SM_PRIV_SIZE],
}
xdr_struct!([<'a>] Mon<'a> { mon_id, priv_ });

/// `struct stat_chge { string mon_name<SM_MAXSTRLEN>; int state; }`: the argument of
/// SM_NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatChge<'a> {
    /// The host whose state changed (the sender's name for itself).
    pub mon_name: SmString<'a>,
    /// Its new state number.
    pub state: i32,
}
xdr_struct!([<'a>] StatChge<'a> { mon_name, state });

/// `struct status { string mon_name<SM_MAXSTRLEN>; int state; opaque priv[SM_PRIV_SIZE]; }`:
/// the argument of the lockd callback (NLM program 100021, procedure 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status<'a> {
    /// The monitored host, exactly as given in its SM_MON.
    pub mon_name: SmString<'a>,
    /// The peer's new state number.
    pub state: i32,
    /// The cookie from the SM_MON.
    pub priv_: [u8; SM_PRIV_SIZE],
}
xdr_struct!([<'a>] Status<'a> { mon_name, state, priv_ });

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::from_bytes;

    fn s(b: &[u8]) -> SmString<'_> {
        SmString::new(b).unwrap()
    }

    const PRIV: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    /// SM_MON arguments as the kernel sends them (fs/lockd/mon.c): mon_name, my_name,
    /// 100021/3/16, then the 16-byte cookie with no length word.
    const MON_BYTES: &[u8] = &[
        0, 0, 0, 7, b'c', b'l', b'i', b'e', b'n', b't', b'1', 0, // mon_name "client1" + pad 1
        0, 0, 0, 6, b's', b'e', b'r', b'v', b'e', b'r', 0, 0, // my_name "server" + pad 2
        0x00, 0x01, 0x86, 0xb5, // my_prog 100021
        0, 0, 0, 3, // my_vers 3
        0, 0, 0, 0x10, // my_proc 16
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, // priv
    ];

    fn mon() -> Mon<'static> {
        Mon {
            mon_id: MonId {
                mon_name: s(b"client1"),
                my_id: MyId {
                    my_name: s(b"server"),
                    my_prog: NLM_PROG,
                    my_vers: 3,
                    my_proc: NLMPROC_NSM_NOTIFY,
                },
            },
            priv_: PRIV,
        }
    }

    #[test]
    fn mon_vector() {
        assert_eq!(from_bytes::<Mon<'_>>(MON_BYTES).unwrap(), mon());
        assert_eq!(mon().to_xdr(), MON_BYTES);
        assert_eq!(mon().encoded_len(), MON_BYTES.len());
    }

    #[test]
    fn mon_every_prefix_fails() {
        for n in 0..MON_BYTES.len() {
            assert!(
                matches!(
                    from_bytes::<Mon<'_>>(&MON_BYTES[..n]),
                    Err(XdrError::Truncated { .. })
                ),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn mon_trailing_bytes() {
        let mut b = MON_BYTES.to_vec();
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            from_bytes::<Mon<'_>>(&b),
            Err(XdrError::TrailingBytes { count: 4 })
        );
    }

    #[test]
    fn mon_name_over_bound_rejected() {
        let mut b = vec![0, 0, 0x04, 0x01]; // 1025
        b.extend(std::iter::repeat_n(b'a', 1028));
        assert_eq!(
            from_bytes::<SmName<'_>>(&b),
            Err(XdrError::TooLong {
                len: 1025,
                max: 1024
            })
        );
        let mut ok = vec![0, 0, 0x04, 0x00]; // exactly 1024
        ok.extend(std::iter::repeat_n(b'a', 1024));
        assert_eq!(from_bytes::<SmName<'_>>(&ok).unwrap().mon_name.len(), 1024);
    }

    #[test]
    fn sm_stat_res_vectors() {
        let v = SmStatRes {
            res_stat: Res::StatFail,
            state: -1,
        };
        let b = [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(v.to_xdr(), b);
        assert_eq!(from_bytes::<SmStatRes>(&b).unwrap(), v);
        assert_eq!(
            from_bytes::<SmStatRes>(&[0, 0, 0, 2, 0, 0, 0, 3]),
            Err(XdrError::BadDiscriminant {
                what: "res",
                value: 2
            })
        );
    }

    #[test]
    fn stat_chge_and_status_vectors() {
        let sc = StatChge {
            mon_name: s(b"nfs-svc.example.test"),
            state: 7,
        };
        let mut b = vec![0, 0, 0, 20];
        b.extend_from_slice(b"nfs-svc.example.test");
        b.extend_from_slice(&[0, 0, 0, 7]);
        assert_eq!(sc.to_xdr(), b);
        assert_eq!(from_bytes::<StatChge<'_>>(&b).unwrap(), sc);

        let st = Status {
            mon_name: s(b"client1"),
            state: 7,
            priv_: PRIV,
        };
        let mut b = vec![0, 0, 0, 7];
        b.extend_from_slice(b"client1\0");
        b.extend_from_slice(&[0, 0, 0, 7]);
        b.extend_from_slice(&PRIV);
        assert_eq!(st.to_xdr(), b);
        assert_eq!(from_bytes::<Status<'_>>(&b).unwrap(), st);
    }

    proptest::proptest! {
        #[test]
        fn mon_round_trip(
            name in proptest::collection::vec(proptest::num::u8::ANY, 0..=SM_MAXSTRLEN),
            me in proptest::collection::vec(proptest::num::u8::ANY, 0..=64),
            prog: u32, vers: u32, proc_: u32, priv_: [u8; 16],
        ) {
            let m = Mon {
                mon_id: MonId {
                    mon_name: s(&name),
                    my_id: MyId { my_name: s(&me), my_prog: prog, my_vers: vers, my_proc: proc_ },
                },
                priv_,
            };
            let b = m.to_xdr();
            proptest::prop_assert_eq!(b.len(), m.encoded_len());
            proptest::prop_assert_eq!(b.len() % 4, 0);
            proptest::prop_assert_eq!(from_bytes::<Mon<'_>>(&b).unwrap(), m);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = from_bytes::<Mon<'_>>(&data);
            let _ = from_bytes::<MonId<'_>>(&data);
            let _ = from_bytes::<MyId<'_>>(&data);
            let _ = from_bytes::<SmName<'_>>(&data);
            let _ = from_bytes::<StatChge<'_>>(&data);
            let _ = from_bytes::<Status<'_>>(&data);
            let _ = from_bytes::<SmStatRes>(&data);
            let _ = from_bytes::<SmStat>(&data);
        }
    }
}
