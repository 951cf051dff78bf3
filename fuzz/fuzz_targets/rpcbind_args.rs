//! rpcbind wire types (`proto/rpcbind.x`): the first byte picks `mapping`, `rpcb`, a
//! PMAPPROC_DUMP list or a universal address. Properties:
//!
//! - decoding never panics; a decoded value re-encodes to `encoded_len()` bytes, the size it was
//!   read from, and decodes back to an equal value;
//! - `mapping` is any 16 bytes; a dump list decodes exactly when a simple model of
//!   `pmaplist *` (a `1` word and 16 bytes per entry, then a `0` word) accepts it;
//! - `parse_uaddr(x) == Some(a)` implies `parse_uaddr(uaddr(a)) == Some(a)`, and every socket
//!   address survives `uaddr` then `parse_uaddr`.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use nsm_xdr::rpcbind::{Mapping, PMAP_DUMP_MAX, PmapList, Rpcb, parse_uaddr, uaddr};
use nsm_xdr::{Encode, XdrError, from_bytes};

macro_rules! check {
    ($t:ty, $data:expr) => {{
        let data: &[u8] = $data;
        match from_bytes::<$t>(data) {
            Ok(v) => {
                let enc = v.to_xdr();
                assert_eq!(enc.len(), v.encoded_len(), "encoded_len of {v:?}");
                assert_eq!(
                    enc.len(),
                    data.len(),
                    "re-encodes to the size it was read from"
                );
                for (i, (a, b)) in data.iter().zip(&enc).enumerate() {
                    assert!(a == b || *b == 0, "byte {i} differs outside padding");
                }
                let again = from_bytes::<$t>(&enc).expect("an encoding decodes");
                assert_eq!(again, v, "round trip");
                assert_eq!(again.to_xdr(), enc, "encoding is canonical");
                if let Some(cut) = enc.len().checked_sub(1) {
                    let r = from_bytes::<$t>(&enc[..cut]);
                    assert!(matches!(r, Err(XdrError::Truncated { .. })), "{r:?}");
                }
                true
            }
            Err(e) => {
                match e {
                    XdrError::Truncated { need, have } => assert!(have < need),
                    XdrError::TooLong { len, max } => assert!(len > max as u64),
                    XdrError::TrailingBytes { count } => assert!(count > 0 && count <= data.len()),
                    XdrError::BadDiscriminant { .. } => {}
                    _ => panic!("unexpected error variant {e:?}"),
                }
                false
            }
        }
    }};
}

/// A model of the `pmaplist *` decoder: the number of entries, or `None` when invalid.
fn model_pmaplist(mut d: &[u8]) -> Option<usize> {
    let mut n = 0;
    loop {
        let (w, rest) = d.split_first_chunk::<4>()?;
        match u32::from_be_bytes(*w) {
            0 => return rest.is_empty().then_some(n),
            1 if n < PMAP_DUMP_MAX && rest.len() >= 16 => {
                d = &rest[16..];
                n += 1;
            }
            _ => return None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            let ok = check!(Mapping, rest);
            assert_eq!(ok, rest.len() == 16, "mapping is any 16 bytes");
        }
        1 => {
            if check!(Rpcb<'_>, rest) {
                let r = from_bytes::<Rpcb<'_>>(rest).expect("decoded above");
                assert_eq!(&rest[..4], r.r_prog.to_be_bytes());
                assert_eq!(&rest[4..8], r.r_vers.to_be_bytes());
            }
        }
        2 => {
            let ok = check!(PmapList, rest);
            let model = model_pmaplist(rest);
            assert_eq!(ok, model.is_some(), "decoder and model disagree");
            if let (Ok(l), Some(n)) = (from_bytes::<PmapList>(rest), model) {
                assert_eq!(l.0.len(), n);
            }
        }
        _ => {
            if let Some(a) = parse_uaddr(rest) {
                let s = std::str::from_utf8(rest).expect("a uaddr is text");
                assert!(s.matches('.').count() >= 2, "{s:?}");
                assert_eq!(parse_uaddr(uaddr(a).as_bytes()), Some(a), "from {s:?}");
            }
            // And the other direction, from an address built out of the input.
            let mut b = [0u8; 19];
            let n = rest.len().min(b.len());
            b[..n].copy_from_slice(&rest[..n]);
            let port = u16::from_be_bytes([b[1], b[2]]);
            let a = if b[0] & 1 == 0 {
                let ip: [u8; 4] = b[3..7].try_into().expect("4 bytes");
                SocketAddr::from((Ipv4Addr::from(ip), port))
            } else {
                let ip: [u8; 16] = b[3..19].try_into().expect("16 bytes");
                SocketAddr::from((Ipv6Addr::from(ip), port))
            };
            let u = uaddr(a);
            assert_eq!(parse_uaddr(u.as_bytes()), Some(a), "{u}");
        }
    }
});
