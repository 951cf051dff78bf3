//! Names: what a my_name may be, and when two host names mean the same host. (What a
//! mon_name may be is the store's rule, [`nsm_store::file_name`]: it becomes a file name.)

use std::net::IpAddr;

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty.
    #[error("empty name")]
    Empty,
    /// Longer than 1024 bytes.
    #[error("name of {0} bytes is longer than 1024")]
    TooLong(usize),
    /// Contains whitespace, a control character or NUL: it would break the record line.
    #[error("name contains whitespace or a control character")]
    Control,
}

/// my_name as nfs-utils stores it: space, tab, CR and LF become `_` (so the record line keeps
/// its shape). Other control characters are refused by [`check_my_name`].
pub fn sanitize_my_name(name: &[u8]) -> Vec<u8> {
    name.iter()
        .map(|&b| {
            if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                b'_'
            } else {
                b
            }
        })
        .collect()
}

/// Checks a (sanitized) my_name: not empty, no control characters.
pub fn check_my_name(name: &[u8]) -> Result<(), NameError> {
    match name {
        [] => Err(NameError::Empty),
        n if n.len() > 1024 => Err(NameError::TooLong(n.len())),
        n if n.iter().any(|b| b.is_ascii_control()) => Err(NameError::Control),
        _ => Ok(()),
    }
}

/// The address a name denotes literally, if it is an IP address (no DNS involved).
pub fn ip_literal(name: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// Whether two host names denote the same host without asking DNS: equal ignoring ASCII case,
/// or one is the other's first label (`client1` and `client1.example.test`). Two fully
/// qualified names in different domains do not match.
pub fn same_host(a: &[u8], b: &[u8]) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let short = |n: &[u8]| -> Option<usize> { n.iter().position(|&c| c == b'.') };
    match (short(a), short(b)) {
        (None, Some(i)) => ip_literal(b).is_none() && a.eq_ignore_ascii_case(&b[..i]),
        (Some(i), None) => ip_literal(a).is_none() && b.eq_ignore_ascii_case(&a[..i]),
        _ => false,
    }
}

/// An address as compared in matching: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn my_name_sanitized() {
        assert_eq!(sanitize_my_name(b"other me\t\r\n"), b"other_me___");
        assert!(check_my_name(&sanitize_my_name(b"a\x01")).is_err());
    }

    #[test]
    fn host_matching() {
        assert!(same_host(b"Client1.Example.TEST", b"client1.example.test"));
        assert!(same_host(b"client1", b"client1.example.test"));
        assert!(same_host(b"client1.example.test", b"CLIENT1"));
        assert!(!same_host(b"client1.a.test", b"client1.b.test"));
        assert!(!same_host(b"client", b"client1.example.test"));
        assert!(
            !same_host(b"192", b"192.0.2.7"),
            "an address is not a short name"
        );
    }

    #[test]
    fn mapped_addresses() {
        let m: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(canonical(m), IpAddr::from([198, 51, 100, 7]));
    }
}
