//! TCP record marking (RFC 5531 §11): each record is one or more fragments, each preceded by
//! a four-byte header whose top bit marks the last fragment and whose low 31 bits give the
//! fragment's length.
//!
//! [`RecordCodec`] reassembles records without trusting any length it reads: a fragment is
//! rejected as soon as its header shows the record would exceed the cap, before any buffer is
//! reserved for it, and the number of fragments per record is capped too, so empty fragments
//! cannot keep a connection busy forever.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

/// The last-fragment bit of a record-marking header.
pub const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Default cap on a reassembled record: NSM messages are a few hundred bytes; 64 KiB leaves
/// room for anything legitimate (libtirpc's servers use a similar per-connection cap).
pub const DEFAULT_MAX_RECORD: usize = 64 * 1024;
/// Default cap on fragments per record.
pub const DEFAULT_MAX_FRAGMENTS: usize = 64;

/// The most the codec reserves ahead of the bytes that arrived.
const RESERVE_STEP: usize = 4096;

/// Why a stream was closed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A fragment header announced more bytes than the record cap allows.
    #[error(
        "RPC record too large: a fragment of {fragment} bytes after {so_far} would exceed the cap of {max} bytes"
    )]
    TooLarge {
        /// Length announced by the fragment header.
        fragment: usize,
        /// Bytes of the record already received.
        so_far: usize,
        /// The cap.
        max: usize,
    },
    /// The record had more fragments than allowed.
    #[error("RPC record has more than {max} fragments")]
    TooManyFragments {
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a record.
    #[error("connection closed inside an RPC record ({buffered} bytes unparsed)")]
    Incomplete {
        /// Bytes that were left.
        buffered: usize,
    },
    /// A socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reassembles records from a byte stream and frames outgoing records as one fragment each.
#[derive(Debug)]
pub struct RecordCodec {
    max_record: usize,
    max_fragments: usize,
    partial: BytesMut,
    fragments: usize,
}

impl Default for RecordCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_RECORD, DEFAULT_MAX_FRAGMENTS)
    }
}

impl RecordCodec {
    /// A codec that refuses records over `max_record` bytes or `max_fragments` fragments.
    pub fn new(max_record: usize, max_fragments: usize) -> Self {
        Self {
            max_record,
            max_fragments,
            partial: BytesMut::new(),
            fragments: 0,
        }
    }
}

impl Decoder for RecordCodec {
    type Item = Bytes;
    type Error = RecordError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, RecordError> {
        loop {
            let Some(hdr) = src.get(..4) else {
                return Ok(None);
            };
            let hdr = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let len = (hdr & !LAST_FRAGMENT) as usize;
            let last = hdr & LAST_FRAGMENT != 0;
            let so_far = self.partial.len();
            if len > self.max_record.saturating_sub(so_far) {
                return Err(RecordError::TooLarge {
                    fragment: len,
                    so_far,
                    max: self.max_record,
                });
            }
            if self.fragments >= self.max_fragments {
                return Err(RecordError::TooManyFragments {
                    max: self.max_fragments,
                });
            }
            if src.len() < 4 + len {
                // Grow with what arrives, not with what a header claims: a bare header must
                // not make an idle connection hold a full record's worth of memory.
                src.reserve((4 + len - src.len()).min(RESERVE_STEP));
                return Ok(None);
            }
            src.advance(4);
            let frag = src.split_to(len);
            if last && self.partial.is_empty() {
                // The common case, a single-fragment record: no copy.
                self.fragments = 0;
                return Ok(Some(frag.freeze()));
            }
            self.partial.extend_from_slice(&frag);
            self.fragments += 1;
            if last {
                self.fragments = 0;
                return Ok(Some(std::mem::take(&mut self.partial).freeze()));
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, RecordError> {
        match self.decode(src)? {
            Some(r) => Ok(Some(r)),
            None if src.is_empty() && self.partial.is_empty() => Ok(None),
            None => Err(RecordError::Incomplete {
                buffered: src.len() + self.partial.len(),
            }),
        }
    }
}

impl Encoder<Bytes> for RecordCodec {
    type Error = RecordError;

    fn encode(&mut self, record: Bytes, dst: &mut BytesMut) -> Result<(), RecordError> {
        put_record_mark(dst, record.len());
        dst.extend_from_slice(&record);
        Ok(())
    }
}

/// Writes the header of a single-fragment record of `len` bytes.
pub fn put_record_mark<B: BufMut>(dst: &mut B, len: usize) {
    debug_assert!(len < LAST_FRAGMENT as usize);
    dst.put_u32(LAST_FRAGMENT | len as u32);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fragments(record: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = record;
        for (i, &n) in sizes.iter().enumerate() {
            let (a, b) = rest.split_at(n.min(rest.len()));
            let last = i + 1 == sizes.len();
            let hdr = a.len() as u32 | if last { LAST_FRAGMENT } else { 0 };
            out.extend_from_slice(&hdr.to_be_bytes());
            out.extend_from_slice(a);
            rest = b;
        }
        out
    }

    fn decode_all(codec: &mut RecordCodec, bytes: &[u8], chunk: usize) -> Vec<Bytes> {
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for c in bytes.chunks(chunk.max(1)) {
            src.extend_from_slice(c);
            while let Some(r) = codec.decode(&mut src).unwrap() {
                out.push(r);
            }
        }
        out
    }

    #[test]
    fn single_fragment_vector() {
        let wire = [0x80, 0, 0, 3, b'a', b'b', b'c'];
        let got = decode_all(&mut RecordCodec::default(), &wire, 7);
        assert_eq!(got, vec![Bytes::from_static(b"abc")]);
        let mut enc = BytesMut::new();
        RecordCodec::default()
            .encode(Bytes::from_static(b"abc"), &mut enc)
            .unwrap();
        assert_eq!(&enc[..], &wire);
    }

    #[test]
    fn multi_fragment_any_split() {
        let record: Vec<u8> = (0..=255u8).collect();
        let wire = fragments(&record, &[1, 0, 100, 55, 100]);
        let mut twice = wire.clone();
        twice.extend_from_slice(&wire);
        for chunk in 1..=twice.len() {
            let got = decode_all(&mut RecordCodec::default(), &twice, chunk);
            assert_eq!(got.len(), 2, "chunk {chunk}");
            assert!(got.iter().all(|r| r[..] == record[..]));
        }
    }

    #[test]
    fn two_gib_claim_closes_without_allocating() {
        let mut src = BytesMut::from(&[0xff, 0xff, 0xff, 0xfe][..]);
        let e = RecordCodec::default().decode(&mut src).unwrap_err();
        assert!(matches!(
            e,
            RecordError::TooLarge {
                fragment: 0x7fff_fffe,
                ..
            }
        ));
        assert!(src.capacity() < 1024, "nothing reserved for the claim");
    }

    #[test]
    fn cap_counts_across_fragments() {
        let mut c = RecordCodec::new(100, 64);
        let wire = fragments(&[0u8; 101], &[60, 41]);
        let mut src = BytesMut::from(&wire[..]);
        assert!(matches!(
            c.decode(&mut src),
            Err(RecordError::TooLarge { so_far: 60, .. })
        ));
    }

    #[test]
    fn empty_fragments_are_capped() {
        let mut c = RecordCodec::new(100, 4);
        let mut src = BytesMut::from(&[0u8; 40][..]); // ten empty non-last fragments
        assert!(matches!(
            c.decode(&mut src),
            Err(RecordError::TooManyFragments { max: 4 })
        ));
    }

    #[test]
    fn eof_inside_a_record() {
        let mut c = RecordCodec::default();
        let mut src = BytesMut::from(&[0x80, 0, 0, 8, 1, 2][..]);
        assert!(c.decode(&mut src).unwrap().is_none());
        assert!(matches!(
            c.decode_eof(&mut src),
            Err(RecordError::Incomplete { buffered: 6 })
        ));
    }
}
