//! The XDR primitives: a borrowing [`Decoder`], the [`Encode`]/[`Decode`] traits and the bounded
//! [`Opaque`] used for every `string<N>` and `opaque<N>`.

use std::fmt;

use bytes::BufMut;

use crate::XdrError;

/// Number of zero bytes that follow `len` bytes of opaque data to reach a multiple of four.
pub const fn padding(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

/// Reads XDR items from a borrowed buffer.
///
/// Every method checks the remaining length before it reads, so no input can make it panic,
/// and variable-length items are checked against their bound before they are sliced.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`.
    pub const fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub const fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The bytes not read yet (e.g. the procedure arguments that follow an RPC call header).
    pub const fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        match self.buf.split_at_checked(n) {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(head)
            }
            None => Err(XdrError::Truncated {
                need: n,
                have: self.buf.len(),
            }),
        }
    }

    /// An `unsigned int`.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An `int`.
    pub fn i32(&mut self) -> Result<i32, XdrError> {
        self.u32().map(|v| v as i32)
    }

    /// A `bool`: only 0 and 1 are accepted.
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::BadDiscriminant {
                what: "bool",
                value,
            }),
        }
    }

    /// A fixed-length `opaque name[N]`, padding included.
    pub fn fixed_opaque<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let b = self.take(N + padding(N))?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b[..N]);
        Ok(out)
    }

    /// A variable-length `opaque<max>` or `string<max>`: the length word is checked against
    /// `max` before anything else, then the bytes and their padding must be present. The
    /// result borrows from the input. Padding bytes are not required to be zero (RFC 4506
    /// says they are, but neither libtirpc nor the kernel checks, and a value is the same
    /// with any padding).
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], XdrError> {
        let n = self.bounded_len(max)?;
        let b = self.take(n + padding(n))?;
        Ok(&b[..n])
    }

    /// The element count of a variable-length array `T<max>`, checked against `max`. The
    /// caller decodes that many elements; nothing is allocated from the count.
    pub fn array_len(&mut self, max: usize) -> Result<usize, XdrError> {
        self.bounded_len(max)
    }

    /// A length word, rejected when above `max`.
    fn bounded_len(&mut self, max: usize) -> Result<usize, XdrError> {
        let len = self.u32()?;
        match usize::try_from(len) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(XdrError::TooLong {
                len: u64::from(len),
                max,
            }),
        }
    }

    /// Succeeds only when every byte was consumed.
    pub const fn finish(self) -> Result<(), XdrError> {
        match self.buf.len() {
            0 => Ok(()),
            count => Err(XdrError::TrailingBytes { count }),
        }
    }
}

/// Implements [`Decode`] and [`Encode`] for a struct whose fields are all XDR types, in the
/// order given (which must be the `.x` order).
macro_rules! xdr_struct {
    ([$($gen:tt)*] $name:ty { $($field:ident),+ $(,)? }) => {
        impl<'a> $crate::Decode<'a> for $name {
            fn decode(d: &mut $crate::Decoder<'a>) -> Result<Self, $crate::XdrError> {
                Ok(Self { $($field: $crate::Decode::decode(d)?),+ })
            }
        }

        impl $($gen)* $crate::Encode for $name {
            fn encoded_len(&self) -> usize {
                0 $(+ $crate::Encode::encoded_len(&self.$field))+
            }

            fn encode<B: bytes::BufMut>(&self, out: &mut B) {
                $($crate::Encode::encode(&self.$field, out);)+
            }
        }
    };
}
pub(crate) use xdr_struct;

/// A type that can be read from XDR.
pub trait Decode<'a>: Sized {
    /// Reads one value; on error the decoder's position is unspecified.
    fn decode(d: &mut Decoder<'a>) -> Result<Self, XdrError>;
}

/// A type that can be written as XDR. Encoding cannot fail: bounds are checked when values
/// are built.
pub trait Encode {
    /// The exact number of bytes [`Encode::encode`] writes.
    fn encoded_len(&self) -> usize;

    /// Appends the XDR form of `self` to `out`.
    fn encode<B: BufMut>(&self, out: &mut B);

    /// The XDR form of `self` in a new vector of exactly [`Encode::encoded_len`] bytes.
    fn to_xdr(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        debug_assert_eq!(v.len(), self.encoded_len());
        v
    }
}

/// Decodes a whole message: the value must use every byte of `buf`.
pub fn from_bytes<'a, T: Decode<'a>>(buf: &'a [u8]) -> Result<T, XdrError> {
    let mut d = Decoder::new(buf);
    let v = T::decode(&mut d)?;
    d.finish()?;
    Ok(v)
}

/// A borrowed `opaque<MAX>` or `string<MAX>`: at most `MAX` bytes, guaranteed by construction.
///
/// NSM strings are bytes, not necessarily UTF-8; [`fmt::Display`] shows them escaped, so peer
/// data can be logged safely.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opaque<'a, const MAX: usize>(&'a [u8]);

impl<'a, const MAX: usize> Opaque<'a, MAX> {
    /// `bytes` if it fits the bound.
    pub const fn new(bytes: &'a [u8]) -> Result<Self, XdrError> {
        if bytes.len() <= MAX {
            Ok(Self(bytes))
        } else {
            Err(XdrError::TooLong {
                len: bytes.len() as u64,
                max: MAX,
            })
        }
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Number of bytes (not counting length word and padding).
    pub const fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty string.
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<const MAX: usize> Default for Opaque<'_, MAX> {
    fn default() -> Self {
        Self(&[])
    }
}

impl<const MAX: usize> fmt::Debug for Opaque<'_, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl<const MAX: usize> fmt::Display for Opaque<'_, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl<'a, const MAX: usize> Decode<'a> for Opaque<'a, MAX> {
    fn decode(d: &mut Decoder<'a>) -> Result<Self, XdrError> {
        d.opaque(MAX).map(Self)
    }
}

impl<const MAX: usize> Encode for Opaque<'_, MAX> {
    fn encoded_len(&self) -> usize {
        4 + self.0.len() + padding(self.0.len())
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        // The constructor guarantees len <= MAX, and every MAX used is far below u32::MAX.
        out.put_u32(self.0.len() as u32);
        out.put_slice(self.0);
        out.put_bytes(0, padding(self.0.len()));
    }
}

impl Decode<'_> for u32 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        d.u32()
    }
}

impl Encode for u32 {
    fn encoded_len(&self) -> usize {
        4
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u32(*self);
    }
}

impl Decode<'_> for i32 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        d.i32()
    }
}

impl Encode for i32 {
    fn encoded_len(&self) -> usize {
        4
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_i32(*self);
    }
}

impl Decode<'_> for bool {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        d.bool()
    }
}

impl Encode for bool {
    fn encoded_len(&self) -> usize {
        4
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_u32(u32::from(*self));
    }
}

impl<const N: usize> Decode<'_> for [u8; N] {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, XdrError> {
        d.fixed_opaque()
    }
}

/// A fixed-length `opaque[N]`.
impl<const N: usize> Encode for [u8; N] {
    fn encoded_len(&self) -> usize {
        N + padding(N)
    }

    fn encode<B: BufMut>(&self, out: &mut B) {
        out.put_slice(self);
        out.put_bytes(0, padding(N));
    }
}

/// The XDR `void`: no bytes.
impl Decode<'_> for () {
    fn decode(_: &mut Decoder<'_>) -> Result<Self, XdrError> {
        Ok(())
    }
}

impl Encode for () {
    fn encoded_len(&self) -> usize {
        0
    }

    fn encode<B: BufMut>(&self, _: &mut B) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn padding_values() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5].map(padding),
            [0, 3, 2, 1, 0, 3],
            "padding to a multiple of four"
        );
    }

    #[test]
    fn opaque_checks_bound_before_length_of_input() {
        // A length word of 0xfffffff0 with nothing behind it: rejected for the bound, not
        // reported as truncation, and nothing is allocated.
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0xf0, b'a', b'b']);
        assert_eq!(
            d.opaque(1024),
            Err(XdrError::TooLong {
                len: 0xffff_fff0,
                max: 1024
            })
        );
    }

    #[test]
    fn opaque_missing_padding_is_truncation() {
        let mut d = Decoder::new(&[0, 0, 0, 1, b'a']);
        assert_eq!(d.opaque(8), Err(XdrError::Truncated { need: 4, have: 1 }));
    }

    #[test]
    fn opaque_borrows_and_skips_padding() {
        let buf = [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 7];
        let mut d = Decoder::new(&buf);
        let s = d.opaque(3).unwrap();
        assert_eq!(s, b"abc");
        assert!(std::ptr::eq(s.as_ptr(), buf[4..].as_ptr()), "zero-copy");
        assert_eq!(d.u32().unwrap(), 7);
        d.finish().unwrap();
    }

    #[test]
    fn bool_is_strict() {
        assert_eq!(
            Decoder::new(&[0, 0, 0, 2]).bool(),
            Err(XdrError::BadDiscriminant {
                what: "bool",
                value: 2
            })
        );
    }

    #[test]
    fn trailing_bytes_are_reported() {
        assert_eq!(
            from_bytes::<u32>(&[0, 0, 0, 1, 9]),
            Err(XdrError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn array_len_bounded() {
        assert!(Decoder::new(&[0, 0, 0, 17]).array_len(16).is_err());
        assert_eq!(Decoder::new(&[0, 0, 0, 16]).array_len(16), Ok(16));
    }

    #[test]
    fn opaque_new_enforces_bound() {
        assert!(Opaque::<3>::new(b"abcd").is_err());
        let o = Opaque::<4>::new(b"abcd").unwrap();
        assert_eq!(o.to_xdr(), [0, 0, 0, 4, b'a', b'b', b'c', b'd']);
        assert_eq!(
            Opaque::<8>::new(b"a\n\x01").unwrap().to_string(),
            "a\\n\\x01",
            "display escapes peer bytes"
        );
    }
}
