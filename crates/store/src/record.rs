//! One monitor registration and its nfs-utils text line.

use std::fmt;

use crate::error::{Field, ParseError};

/// Size of the lockd cookie (`SM_PRIV_SIZE`).
pub const PRIV_SIZE: usize = 16;

/// The longest `mon_name` or `my_name` the protocol carries (`SM_MAXSTRLEN`).
pub const SM_MAXSTRLEN: usize = 1024;

/// The longest `mon_name` + `my_name` nfs-utils can store in one line: its record buffer is
/// `LINELEN + 1 + SM_MAXSTRLEN + 2` = 1096 bytes and a line takes 71 bytes besides the names.
pub const MAX_NAMES_LEN: usize = 1024;

/// The longest line (newline included) nfs-utils' reader takes in one piece: it reads with
/// `fgets` into a 1096-byte buffer. A longer line is split and misparsed by nfs-utils, so
/// nsmd neither writes nor accepts one.
pub const MAX_LINE_LEN: usize = 1095;

/// Bytes before the cookie: four `%08x` fields, each followed by a space (`RPCARGSLEN`).
const ARGS_LEN: usize = 4 * 9;
/// Where the cookie's hex ends.
const PRIV_END: usize = ARGS_LEN + 2 * PRIV_SIZE;
/// Where `mon_name` starts (after the space that follows the cookie).
const MON_START: usize = PRIV_END + 1;

/// 127.0.0.1 as nfs-utils prints it: the in-memory `s_addr` (network byte order bytes) read
/// as a native-endian `u32`, i.e. `0100007f` on little-endian machines.
fn loopback_field() -> u32 {
    u32::from_ne_bytes([127, 0, 0, 1])
}

/// One monitor registration (one line of an nfs-utils record file).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// The monitored host's name exactly as lockd sent it in SM_MON.
    pub mon_name: Vec<u8>,
    /// The local name lockd registered under (sent back as `mon_name` in SM_NOTIFY).
    pub my_name: Vec<u8>,
    /// Callback program (100021, lockd).
    pub my_prog: u32,
    /// Callback version.
    pub my_vers: u32,
    /// Callback procedure (16).
    pub my_proc: u32,
    /// The 16-byte cookie lockd gets back in the callback.
    pub priv_: [u8; PRIV_SIZE],
}

impl Record {
    /// The nfs-utils line: `"%08x %08x %08x %08x <32 hex priv> <mon_name> <my_name>\n"`; the
    /// first field is 127.0.0.1 as the native-endian u32 printed with `%08x` (`0100007f` on
    /// little-endian) exactly as nfs-utils does.
    ///
    /// This does not check the record; [`Record::check`] says whether the line can be read
    /// back (by nsmd and by nfs-utils). [`StateDir::write`](crate::StateDir::write) checks
    /// before it writes.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(MON_START + self.mon_name.len() + self.my_name.len() + 2);
        let head = format!(
            "{:08x} {:08x} {:08x} {:08x} ",
            loopback_field(),
            self.my_prog,
            self.my_vers,
            self.my_proc
        );
        line.extend_from_slice(head.as_bytes());
        for b in self.priv_ {
            line.push(HEX[usize::from(b >> 4)]);
            line.push(HEX[usize::from(b & 0xf)]);
        }
        line.push(b' ');
        line.extend_from_slice(&self.mon_name);
        line.push(b' ');
        line.extend_from_slice(&self.my_name);
        line.push(b'\n');
        line
    }

    /// Parses one line the way nfs-utils' `nsm_parse_line` does (fields 1-4 `%8x`, the cookie
    /// at fixed offset 36, `mon_name` from offset 69 to the next space, `my_name` = the rest
    /// without the newline), but strictly: anything malformed is an error, never a panic.
    ///
    /// Accepted: exactly the shape nfs-utils writes, with one optional trailing `\n`; hex
    /// digits in either case. The address field must be 8 hex digits and its value is ignored
    /// (nfs-utils ignores it too; callbacks always go to 127.0.0.1). Rejected where nfs-utils
    /// would guess: short or non-hex numbers, missing or doubled separators, an empty
    /// `mon_name`, a missing `my_name` field, NUL, control characters or whitespace inside a
    /// name, names over the limits, lines over [`MAX_LINE_LEN`].
    pub fn parse_line(line: &[u8]) -> Result<Self, ParseError> {
        if line.len() > MAX_LINE_LEN {
            return Err(ParseError::LineTooLong {
                len: line.len(),
                max: MAX_LINE_LEN,
            });
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let mut words = [0u32; 4];
        let fields = [Field::Address, Field::Prog, Field::Vers, Field::Proc];
        for (i, (word, field)) in words.iter_mut().zip(fields).enumerate() {
            let start = i * 9;
            *word = hex_u32(body, start, field)?;
            separator(body, start + 8, field)?;
        }
        let mut priv_ = [0u8; PRIV_SIZE];
        for (i, b) in priv_.iter_mut().enumerate() {
            let at = ARGS_LEN + 2 * i;
            *b = (hex_digit(body, at, Field::Priv)? << 4) | hex_digit(body, at + 1, Field::Priv)?;
        }
        separator(body, PRIV_END, Field::Priv)?;
        let names = body.get(MON_START..).unwrap_or_default();
        let Some(space) = names.iter().position(|&b| b == b' ') else {
            if names.is_empty() {
                return Err(ParseError::Truncated {
                    field: Field::MonName,
                    offset: MON_START,
                });
            }
            return Err(ParseError::MissingMyName);
        };
        let record = Self {
            mon_name: names[..space].to_vec(),
            my_name: names[space + 1..].to_vec(),
            my_prog: words[1],
            my_vers: words[2],
            my_proc: words[3],
            priv_,
        };
        record.check()?;
        Ok(record)
    }

    /// Whether this record can be written as a line that nsmd and nfs-utils read back
    /// unchanged: `mon_name` 1..=1024 bytes, `my_name` 0..=1024 bytes, together at most
    /// [`MAX_NAMES_LEN`], neither containing NUL, an ASCII control character or ASCII
    /// whitespace (nfs-utils splits on spaces and reads lines with `fgets`; SM_MON already
    /// turns whitespace in `my_name` into `_`). Other bytes (UTF-8 or not) are kept as they are.
    pub fn check(&self) -> Result<(), ParseError> {
        if self.mon_name.is_empty() {
            return Err(ParseError::EmptyMonName);
        }
        for (field, name) in [
            (Field::MonName, &self.mon_name),
            (Field::MyName, &self.my_name),
        ] {
            if name.len() > SM_MAXSTRLEN {
                return Err(ParseError::NameTooLong {
                    field,
                    len: name.len(),
                    max: SM_MAXSTRLEN,
                });
            }
            if let Some(offset) = name.iter().position(|&b| !name_byte_ok(b)) {
                return Err(ParseError::BadNameByte {
                    field,
                    offset,
                    byte: name[offset],
                });
            }
        }
        let len = self.mon_name.len() + self.my_name.len();
        if len > MAX_NAMES_LEN {
            return Err(ParseError::NamesTooLong {
                len,
                max: MAX_NAMES_LEN,
            });
        }
        Ok(())
    }
}

/// A byte a name may hold in a record line: not NUL, not an ASCII control character, not
/// ASCII whitespace (C `isspace` in the C locale), not DEL.
pub(crate) fn name_byte_ok(b: u8) -> bool {
    !(b.is_ascii_control() || b == b' ')
}

impl fmt::Display for Record {
    /// `mon_name/my_name prog/vers/proc`, names escaped (safe to log).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}/{}/{}",
            self.mon_name.escape_ascii(),
            self.my_name.escape_ascii(),
            self.my_prog,
            self.my_vers,
            self.my_proc
        )
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(body: &[u8], at: usize, field: Field) -> Result<u8, ParseError> {
    let Some(&byte) = body.get(at) else {
        return Err(ParseError::Truncated { field, offset: at });
    };
    match byte {
        b'0'..=b'9' => Ok(byte - b'0'),
        b'a'..=b'f' => Ok(byte - b'a' + 10),
        b'A'..=b'F' => Ok(byte - b'A' + 10),
        _ => Err(ParseError::BadHex {
            field,
            offset: at,
            byte,
        }),
    }
}

fn hex_u32(body: &[u8], start: usize, field: Field) -> Result<u32, ParseError> {
    let mut v = 0u32;
    for at in start..start + 8 {
        v = (v << 4) | u32::from(hex_digit(body, at, field)?);
    }
    Ok(v)
}

fn separator(body: &[u8], at: usize, field: Field) -> Result<(), ParseError> {
    match body.get(at) {
        Some(b' ') => Ok(()),
        Some(&byte) => Err(ParseError::MissingSeparator {
            field,
            offset: at,
            byte,
        }),
        None => Err(ParseError::Truncated { field, offset: at }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn sample() -> Record {
        Record {
            mon_name: b"client1.example.test".to_vec(),
            my_name: b"server1".to_vec(),
            my_prog: 100_021,
            my_vers: 3,
            my_proc: 16,
            priv_: *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f",
        }
    }

    const SAMPLE_LINE: &[u8] = b"0100007f 000186b5 00000003 00000010 000102030405060708090a0b0c0d0e0f client1.example.test server1\n";

    #[test]
    #[cfg(target_endian = "little")]
    fn line_is_nfs_utils_bytes() {
        assert_eq!(sample().to_line(), SAMPLE_LINE);
        assert_eq!(Record::parse_line(SAMPLE_LINE).unwrap(), sample());
    }

    #[test]
    fn address_field_is_ignored_and_newline_optional() {
        let mut l = SAMPLE_LINE.to_vec();
        l[..8].copy_from_slice(b"7F000001");
        l.pop();
        assert_eq!(Record::parse_line(&l).unwrap(), sample());
    }

    #[test]
    fn uppercase_hex_is_read() {
        let l = SAMPLE_LINE.to_ascii_uppercase();
        let r = Record::parse_line(&l).unwrap();
        assert_eq!(r.priv_, sample().priv_);
        assert_eq!(r.my_prog, 100_021);
        assert_eq!(r.mon_name, b"CLIENT1.EXAMPLE.TEST");
    }

    #[test]
    fn empty_my_name_round_trips() {
        let mut r = sample();
        r.my_name.clear();
        let line = r.to_line();
        assert!(line.ends_with(b"client1.example.test \n"));
        assert_eq!(Record::parse_line(&line).unwrap(), r);
    }

    fn err(line: &[u8]) -> ParseError {
        Record::parse_line(line).unwrap_err()
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(matches!(
            err(b""),
            ParseError::Truncated {
                field: Field::Address,
                offset: 0
            }
        ));
        assert!(matches!(err(b"\n"), ParseError::Truncated { .. }));
        assert!(matches!(
            err(&SAMPLE_LINE[..20]),
            ParseError::Truncated {
                field: Field::Vers,
                ..
            }
        ));
        // missing fields
        assert!(matches!(
            err(&SAMPLE_LINE[..69]),
            ParseError::Truncated {
                field: Field::MonName,
                ..
            }
        ));
        assert!(matches!(
            err(b"0100007f 000186b5 00000003 00000010 000102030405060708090a0b0c0d0e0f client1\n"),
            ParseError::MissingMyName
        ));
        // empty mon_name (nfs-utils would read mon_name "" and my_name "server1")
        assert!(matches!(
            err(b"0100007f 000186b5 00000003 00000010 000102030405060708090a0b0c0d0e0f  server1\n"),
            ParseError::EmptyMonName
        ));
        // doubled separator: my_name would start with a space
        assert!(matches!(
            err(b"0100007f 000186b5 00000003 00000010 000102030405060708090a0b0c0d0e0f a  b\n"),
            ParseError::BadNameByte {
                field: Field::MyName,
                offset: 0,
                byte: b' '
            }
        ));
        // non-hex
        let mut l = SAMPLE_LINE.to_vec();
        l[12] = b'g';
        assert!(matches!(
            err(&l),
            ParseError::BadHex {
                field: Field::Prog,
                offset: 12,
                byte: b'g'
            }
        ));
        let mut l = SAMPLE_LINE.to_vec();
        l[40] = b'x';
        assert!(matches!(
            err(&l),
            ParseError::BadHex {
                field: Field::Priv,
                ..
            }
        ));
        // short number ("%8x" would take it; nfs-utils never writes it)
        assert!(matches!(
            err(b"100007f 000186b5 00000003 00000010 000102030405060708090a0b0c0d0e0f a b\n"),
            ParseError::BadHex { .. } | ParseError::MissingSeparator { .. }
        ));
        let mut l = SAMPLE_LINE.to_vec();
        l[68] = b'_';
        assert!(matches!(
            err(&l),
            ParseError::MissingSeparator {
                field: Field::Priv,
                offset: 68,
                ..
            }
        ));
        // NUL and control characters in names
        let mut l = SAMPLE_LINE.to_vec();
        l[70] = 0;
        assert!(matches!(
            err(&l),
            ParseError::BadNameByte {
                field: Field::MonName,
                offset: 1,
                byte: 0
            }
        ));
        let mut l = SAMPLE_LINE.to_vec();
        l.insert(l.len() - 1, b'\r');
        assert!(matches!(
            err(&l),
            ParseError::BadNameByte { byte: b'\r', .. }
        ));
        let mut l = SAMPLE_LINE.to_vec();
        l.insert(l.len() - 1, b'\t');
        assert!(matches!(
            err(&l),
            ParseError::BadNameByte { byte: b'\t', .. }
        ));
        // two lines in one
        let mut two = SAMPLE_LINE.to_vec();
        two.extend_from_slice(SAMPLE_LINE);
        assert!(matches!(
            err(&two),
            ParseError::BadNameByte { byte: b'\n', .. }
        ));
    }

    #[test]
    fn length_limits_match_nfs_utils() {
        let mut r = sample();
        r.mon_name = vec![b'm'; 1000];
        r.my_name = vec![b'n'; 24];
        let line = r.to_line();
        assert_eq!(line.len(), MAX_LINE_LEN);
        assert_eq!(Record::parse_line(&line).unwrap(), r);
        r.my_name.push(b'n');
        assert!(matches!(
            r.check(),
            Err(ParseError::NamesTooLong { len: 1025, .. })
        ));
        assert!(matches!(
            err(&r.to_line()),
            ParseError::LineTooLong { len: 1096, .. }
        ));
        let mut long = SAMPLE_LINE.to_vec();
        long.splice(80..80, vec![b'x'; 2000]);
        assert!(matches!(err(&long), ParseError::LineTooLong { .. }));
        r.mon_name = vec![b'm'; 1025];
        r.my_name.clear();
        assert!(matches!(
            r.check(),
            Err(ParseError::NameTooLong {
                field: Field::MonName,
                ..
            })
        ));
    }

    #[test]
    fn non_ascii_names_are_kept_as_bytes() {
        let mut r = sample();
        r.mon_name = "hôte.example".as_bytes().to_vec();
        r.my_name = vec![0xff, 0x80, b'x'];
        assert_eq!(Record::parse_line(&r.to_line()).unwrap(), r);
    }

    #[test]
    fn display_escapes_names() {
        let mut r = sample();
        r.my_name = b"a\x1b[2J".to_vec();
        assert_eq!(r.to_string(), "client1.example.test/a\\x1b[2J 100021/3/16");
    }

    fn name(min: usize, max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff], min..=max)
    }

    proptest! {
        #[test]
        fn round_trip(
            mon_name in name(1, 200),
            my_name in name(0, 200),
            my_prog: u32, my_vers: u32, my_proc: u32,
            priv_: [u8; 16],
        ) {
            let r = Record { mon_name, my_name, my_prog, my_vers, my_proc, priv_ };
            prop_assert!(r.check().is_ok());
            let line = r.to_line();
            prop_assert_eq!(Record::parse_line(&line).unwrap(), r.clone());
            // and the file shape: fixed offsets
            prop_assert_eq!(line[36 + 32], b' ');
            prop_assert_eq!(&line[69..69 + r.mon_name.len()], &r.mon_name[..]);
        }

        #[test]
        fn parse_never_panics(line in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = Record::parse_line(&line);
        }

        #[test]
        fn parse_of_mutated_line_is_consistent(at in 0usize..97, byte: u8) {
            let mut l = SAMPLE_LINE.to_vec();
            l[at] = byte;
            if let Ok(r) = Record::parse_line(&l) {
                // whatever parses re-serialises to the same line up to hex case and the
                // ignored address field
                let out = r.to_line();
                prop_assert_eq!(out[8..].to_ascii_lowercase(), l[8..].to_ascii_lowercase());
            }
        }
    }
}
