//! Record file names.

use crate::error::NameError;

/// The longest record file name: `NAME_MAX` (255) minus the 5 bytes of the temporary file's
/// `.` prefix and `.new` suffix.
pub const MAX_FILE_NAME: usize = 250;

/// The temporary-file suffix of nfs-utils (both `X.new` in 2.6 and `.X.new` from 2.8 on).
pub(crate) const TEMP_SUFFIX: &str = ".new";

/// Checks a mon_name is safe as a file name in `sm/` and returns it as the file name
/// (nsmd names files by the mon_name as given, never by a DNS lookup).
///
/// Accepted: 1..=[`MAX_FILE_NAME`] bytes of UTF-8, not starting with `.`, without `/`, NUL,
/// ASCII whitespace or control characters (nfs-utils rejects `isspace`), without Unicode
/// whitespace or control characters (they would be invisible or misleading in `ls` and
/// logs), and not ending in `.new` (scans skip such names as temporary-file leftovers).
pub fn file_name(mon_name: &[u8]) -> Result<&str, NameError> {
    checked(mon_name, MAX_FILE_NAME)
}

/// [`file_name`] with another length limit (directory scans allow `NAME_MAX`: nfs-utils may
/// have written longer names than nsmd does).
pub(crate) fn checked(mon_name: &[u8], max: usize) -> Result<&str, NameError> {
    check(mon_name, max)?;
    let name = std::str::from_utf8(mon_name).map_err(|e| NameError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if let Some((offset, _)) = name
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(NameError::Control { offset });
    }
    if name.ends_with(TEMP_SUFFIX) {
        return Err(NameError::TempSuffix);
    }
    Ok(name)
}

/// The byte rules.
fn check(name: &[u8], max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    if name[0] == b'.' {
        return Err(NameError::LeadingDot);
    }
    for (offset, &b) in name.iter().enumerate() {
        match b {
            0 => return Err(NameError::Nul { offset }),
            b'/' => return Err(NameError::Slash { offset }),
            b if b.is_ascii_control() || b == b' ' => return Err(NameError::Control { offset }),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a directory entry is a temporary file of nfs-utils 2.6 (`X.new`), of nfs-utils
/// 2.8+ or nsmd (`.X.new`).
pub(crate) fn is_temp(name: &[u8]) -> bool {
    name.len() > TEMP_SUFFIX.len() && name.ends_with(TEMP_SUFFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn accepts_host_names_and_addresses() {
        for n in [
            "client1",
            "client1.example.test",
            "10.9.9.9",
            "2001:db8::1",
            "fe80::1%eth0",
            "hôte-ü.example",
            "a",
        ] {
            assert_eq!(file_name(n.as_bytes()), Ok(n));
        }
        let max = "a".repeat(MAX_FILE_NAME);
        assert_eq!(file_name(max.as_bytes()), Ok(max.as_str()));
    }

    #[test]
    fn rejects_what_could_escape_or_confuse() {
        assert_eq!(file_name(b""), Err(NameError::Empty));
        assert_eq!(file_name(b"."), Err(NameError::LeadingDot));
        assert_eq!(file_name(b".."), Err(NameError::LeadingDot));
        assert_eq!(file_name(b".hidden"), Err(NameError::LeadingDot));
        assert_eq!(file_name(b"../etc/passwd"), Err(NameError::LeadingDot));
        assert_eq!(file_name(b"a/b"), Err(NameError::Slash { offset: 1 }));
        assert_eq!(file_name(b"/etc"), Err(NameError::Slash { offset: 0 }));
        assert_eq!(file_name(b"a\0b"), Err(NameError::Nul { offset: 1 }));
        assert_eq!(file_name(b"a b"), Err(NameError::Control { offset: 1 }));
        assert_eq!(file_name(b"a\tb"), Err(NameError::Control { offset: 1 }));
        assert_eq!(file_name(b"a\nb"), Err(NameError::Control { offset: 1 }));
        assert_eq!(file_name(b"a\x7f"), Err(NameError::Control { offset: 1 }));
        assert_eq!(file_name(b"a\xffb"), Err(NameError::NotUtf8 { offset: 1 }));
        assert_eq!(
            file_name("a\u{a0}b".as_bytes()),
            Err(NameError::Control { offset: 1 })
        );
        assert_eq!(
            file_name("a\u{2028}".as_bytes()),
            Err(NameError::Control { offset: 1 })
        );
        assert_eq!(
            file_name("a\u{85}".as_bytes()),
            Err(NameError::Control { offset: 1 })
        );
        assert_eq!(file_name(b"host.new"), Err(NameError::TempSuffix));
        assert_eq!(
            file_name("a".repeat(MAX_FILE_NAME + 1).as_bytes()),
            Err(NameError::TooLong {
                len: MAX_FILE_NAME + 1,
                max: MAX_FILE_NAME
            })
        );
        assert_eq!(
            file_name(&[b'a'; 1025]),
            Err(NameError::TooLong {
                len: 1025,
                max: MAX_FILE_NAME
            })
        );
    }

    #[test]
    fn temp_names() {
        assert!(is_temp(b"client1.new"));
        assert!(is_temp(b".client1.new"));
        assert!(is_temp(b".state.new"));
        assert!(!is_temp(b".new"));
        assert!(!is_temp(b"client1"));
        assert!(!is_temp(b"new"));
    }
}
