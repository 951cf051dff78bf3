//! NSM wire types (`proto/sm_inter.x`): the first byte picks the type, the rest is decoded
//! with `from_bytes`. Properties:
//!
//! - decoding never panics, and its errors are self-consistent;
//! - a decoded value re-encodes to exactly `encoded_len()` bytes, which is the number of bytes
//!   it was read from, differing from the input only in padding (written as zero);
//! - decoding the encoding gives an equal value, and encoding that again gives the same bytes;
//! - every strict prefix of a valid message is `Truncated`, four more bytes are `TrailingBytes`;
//! - `mon` is `mon_id` followed by 16 bytes, `status` is `stat_chge` followed by 16 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsm_xdr::nsm::{Mon, MonId, MyId, SmName, SmStat, SmStatRes, StatChge, Status};
use nsm_xdr::{Encode, XdrError, from_bytes};

/// What every decode error must satisfy for an input of `len` bytes.
fn check_err(e: &XdrError, len: usize) {
    match *e {
        XdrError::Truncated { need, have } => {
            assert!(have < need, "{e:?}");
            assert!(have <= len, "{e:?} for {len} bytes");
        }
        XdrError::TooLong { len: l, max } => assert!(l > max as u64, "{e:?}"),
        XdrError::TrailingBytes { count } => assert!(count > 0 && count <= len, "{e:?}"),
        XdrError::BadDiscriminant { .. } => {}
        _ => panic!("unexpected error variant {e:?}"),
    }
}

/// Bytes of `enc` that differ from `input` must be padding, which the encoder writes as zero.
fn differs_only_in_padding(input: &[u8], enc: &[u8]) {
    assert_eq!(input.len(), enc.len());
    for (i, (a, b)) in input.iter().zip(enc).enumerate() {
        assert!(
            a == b || *b == 0,
            "byte {i}: input {a:#04x}, re-encoded {b:#04x}"
        );
    }
}

macro_rules! check {
    ($t:ty, $data:expr) => {{
        let data: &[u8] = $data;
        match from_bytes::<$t>(data) {
            Ok(v) => {
                let enc = v.to_xdr();
                assert_eq!(enc.len(), v.encoded_len(), "encoded_len of {v:?}");
                assert_eq!(enc.len() % 4, 0);
                differs_only_in_padding(data, &enc);
                let again = from_bytes::<$t>(&enc).expect("an encoding decodes");
                assert_eq!(again, v, "round trip");
                assert_eq!(again.to_xdr(), enc, "encoding is canonical");
                for cut in [enc.len().wrapping_sub(1), enc.len() / 2] {
                    if cut < enc.len() {
                        let r = from_bytes::<$t>(&enc[..cut]);
                        assert!(
                            matches!(r, Err(XdrError::Truncated { .. })),
                            "prefix of {cut} bytes: {r:?}"
                        );
                    }
                }
                let mut longer = enc.clone();
                longer.extend_from_slice(&[0; 4]);
                assert_eq!(
                    from_bytes::<$t>(&longer).map(|_| ()),
                    Err(XdrError::TrailingBytes { count: 4 })
                );
                true
            }
            Err(e) => {
                check_err(&e, data.len());
                false
            }
        }
    }};
}

/// `x` split as (head, last 16 bytes), if it is long enough.
fn split_priv(x: &[u8]) -> Option<(&[u8], &[u8])> {
    x.len().checked_sub(16).map(|n| x.split_at(n))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 8 {
        0 => {
            let ok = check!(Mon<'_>, rest);
            let by_parts =
                split_priv(rest).is_some_and(|(id, _)| from_bytes::<MonId<'_>>(id).is_ok());
            assert_eq!(ok, by_parts, "mon is mon_id + opaque[16]");
            if let (Ok(m), Some((id, p))) = (from_bytes::<Mon<'_>>(rest), split_priv(rest)) {
                assert_eq!(Ok(m.mon_id), from_bytes::<MonId<'_>>(id));
                assert_eq!(&m.priv_[..], p);
            }
        }
        1 => {
            check!(MonId<'_>, rest);
        }
        2 => {
            check!(MyId<'_>, rest);
        }
        3 => {
            check!(SmName<'_>, rest);
        }
        4 => {
            check!(StatChge<'_>, rest);
        }
        5 => {
            let ok = check!(Status<'_>, rest);
            let by_parts =
                split_priv(rest).is_some_and(|(sc, _)| from_bytes::<StatChge<'_>>(sc).is_ok());
            assert_eq!(ok, by_parts, "status is stat_chge + opaque[16]");
        }
        6 => {
            let ok = check!(SmStatRes, rest);
            let valid = rest.len() == 8 && matches!(rest[..4], [0, 0, 0, 0] | [0, 0, 0, 1]);
            assert_eq!(ok, valid, "sm_stat_res is res (0 or 1) + int");
        }
        _ => {
            let ok = check!(SmStat, rest);
            assert_eq!(ok, rest.len() == 4, "sm_stat is any four bytes");
        }
    }
});
