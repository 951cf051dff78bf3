//! `strverscmp(3)`, the order glibc's `versionsort` gives `scandir`: nfs-utils reads the
//! drop-in files of `nfs.conf.d/` in this order, so `9-a.conf` comes before `10-b.conf`, and a
//! name with more leading zeros sorts as a smaller fraction (`00` < `01` < `0` < `1`).

use std::cmp::Ordering;

// The state machine of glibc's `__strverscmp` (string/strverscmp.c): states are multiples
// of 3 so that `state + class` indexes the tables.
const S_N: u8 = 0; // normal
const S_I: u8 = 3; // comparing integral part
const S_F: u8 = 6; // comparing fractional part (leading zeros)
const S_Z: u8 = 9; // idem but with leading zeros only

const CMP: i8 = 2;
const LEN: i8 = 3;

#[rustfmt::skip]
const NEXT_STATE: [u8; 12] = [
    /* S_N */ S_N, S_I, S_Z,
    /* S_I */ S_N, S_I, S_I,
    /* S_F */ S_N, S_F, S_F,
    /* S_Z */ S_N, S_F, S_Z,
];

#[rustfmt::skip]
const RESULT_TYPE: [i8; 36] = [
    /*          x/x  x/d  x/0  d/x  d/d  d/0  0/x  0/d  0/0 */
    /* S_N */  CMP, CMP, CMP, CMP, LEN, CMP, CMP, CMP, CMP,
    /* S_I */  CMP, -1,  -1,  1,   LEN, LEN, 1,   LEN, LEN,
    /* S_F */  CMP, CMP, CMP, CMP, CMP, CMP, CMP, CMP, CMP,
    /* S_Z */  CMP, 1,   1,   -1,  CMP, CMP, -1,  CMP, CMP,
];

/// 0 for a non-digit, 1 for 1-9, 2 for '0'.
fn class(c: u8) -> u8 {
    u8::from(c == b'0') + u8::from(c.is_ascii_digit())
}

/// Compares two names as `strverscmp(3)` does (bytes; a NUL ends a name).
pub(crate) fn strverscmp(a: &[u8], b: &[u8]) -> Ordering {
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut i, mut j) = (0usize, 0usize);
    let mut c1 = at(a, i);
    let mut c2 = at(b, j);
    i += 1;
    j += 1;
    let mut state = S_N + class(c1);
    while c1 == c2 {
        if c1 == 0 {
            return Ordering::Equal;
        }
        state = NEXT_STATE[usize::from(state)];
        c1 = at(a, i);
        c2 = at(b, j);
        i += 1;
        j += 1;
        state += class(c1);
    }
    let diff = i32::from(c1) - i32::from(c2);
    let result = RESULT_TYPE[usize::from(state) * 3 + usize::from(class(c2))];
    match result {
        CMP => diff.cmp(&0),
        LEN => {
            // The longer run of digits is the larger number.
            loop {
                let d1 = at(a, i).is_ascii_digit();
                i += 1;
                if !d1 {
                    break;
                }
                let d2 = at(b, j).is_ascii_digit();
                j += 1;
                if !d2 {
                    return Ordering::Greater;
                }
            }
            if at(b, j).is_ascii_digit() {
                Ordering::Less
            } else {
                diff.cmp(&0)
            }
        }
        r => r.cmp(&0),
    }
}

#[cfg(test)]
mod tests {
    use super::strverscmp;
    use std::cmp::Ordering;

    #[test]
    fn glibc_documented_order() {
        // The example of the glibc manual, in increasing order.
        let names = ["000", "00", "01", "010", "09", "0", "1", "9", "10"];
        for w in names.windows(2) {
            assert_eq!(
                strverscmp(w[0].as_bytes(), w[1].as_bytes()),
                Ordering::Less,
                "{} < {}",
                w[0],
                w[1]
            );
            assert_eq!(
                strverscmp(w[1].as_bytes(), w[0].as_bytes()),
                Ordering::Greater
            );
        }
    }

    #[test]
    fn drop_in_names() {
        let mut v = vec!["10-b.conf", "9-a.conf", "a.conf", "09-c.conf", "B.conf"];
        v.sort_by(|a, b| strverscmp(a.as_bytes(), b.as_bytes()));
        assert_eq!(
            v,
            ["09-c.conf", "9-a.conf", "10-b.conf", "B.conf", "a.conf"]
        );
        assert_eq!(strverscmp(b"same", b"same"), Ordering::Equal);
        assert_eq!(strverscmp(b"a", b"ab"), Ordering::Less);
    }
}
