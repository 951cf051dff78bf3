//! nsm-store's parsers over arbitrary bytes: the input is read as the content of a record
//! file (one `Record::parse_line` per line, as `StateDir::load` does) and as a `mon_name`
//! given to `file_name`. Properties:
//!
//! - nothing panics;
//! - a line that parses is a record that `check`s, and `to_line` gives back the same line
//!   except for what nfs-utils ignores or normalises: the address field (always 127.0.0.1),
//!   the case of the hex digits, and a missing final newline;
//! - `parse_line(to_line(r)) == r`;
//! - a name `file_name` accepts is the input itself, 1..=MAX_FILE_NAME bytes of UTF-8 without
//!   '/', NUL, whitespace or control characters, not starting with '.', not ending in ".new".
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsm_store::{MAX_FILE_NAME, Record, file_name};

fn check_line(line: &[u8]) {
    let Ok(r) = Record::parse_line(line) else {
        return;
    };
    assert!(r.check().is_ok(), "a parsed record checks");
    let out = r.to_line();
    assert_eq!(
        Record::parse_line(&out).as_ref(),
        Ok(&r),
        "to_line parses back"
    );
    let mut expected = line.to_vec();
    if expected.last() != Some(&b'\n') {
        expected.push(b'\n');
    }
    expected[..8].copy_from_slice(&out[..8]);
    expected[9..68].make_ascii_lowercase();
    assert_eq!(out, expected, "to_line reproduces the line");
}

fn check_name(data: &[u8]) {
    let Ok(name) = file_name(data) else {
        return;
    };
    assert_eq!(name.as_bytes(), data);
    assert!(!name.is_empty() && name.len() <= MAX_FILE_NAME);
    assert!(!name.starts_with('.') && !name.ends_with(".new"));
    assert!(
        !name
            .chars()
            .any(|c| c == '/' || c == '\0' || c.is_whitespace() || c.is_control())
    );
}

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        check_line(line);
    }
    check_name(data);
});
