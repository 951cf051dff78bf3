//! TCP record marking (`RecordCodec`, RFC 5531 §11). The input is
//! `[limits] [n] [n chunk sizes] stream`: the limits byte picks the record cap and the fragment
//! cap, the chunk sizes say how the stream arrives. Properties:
//!
//! - feeding the stream in those chunks and feeding it all at once give the same records and
//!   the same error (field for field), also at end of stream (`decode_eof`);
//! - both agree with a straightforward model of record marking written from the RFC;
//! - every record is at most the cap and is made of at most the fragment cap of fragments;
//! - memory: a decode call that fails allocates nothing, and the buffer's capacity stays within
//!   `2 * (bytes received + cap + 4) + 64`: it follows what arrived and the cap, never a length
//!   a header claims.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use nsm_rpc::record::{LAST_FRAGMENT, RecordCodec, RecordError};
use tokio_util::codec::Decoder;

const CAPS: [usize; 8] = [0, 1, 8, 40, 100, 512, 4096, 64 * 1024];

/// How a stream ended, comparable across runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// End of stream on a record boundary.
    Clean,
    TooLarge {
        fragment: usize,
        so_far: usize,
        max: usize,
    },
    TooManyFragments {
        max: usize,
    },
    Incomplete {
        buffered: usize,
    },
}

impl From<RecordError> for End {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::TooLarge {
                fragment,
                so_far,
                max,
            } => Self::TooLarge {
                fragment,
                so_far,
                max,
            },
            RecordError::TooManyFragments { max } => Self::TooManyFragments { max },
            RecordError::Incomplete { buffered } => Self::Incomplete { buffered },
            other => panic!("unexpected error from an in-memory stream: {other:?}"),
        }
    }
}

struct Run {
    codec: RecordCodec,
    src: BytesMut,
    cap: usize,
    fed: usize,
    records: Vec<Bytes>,
}

impl Run {
    fn new(cap: usize, max_fragments: usize) -> Self {
        Self {
            codec: RecordCodec::new(cap, max_fragments),
            src: BytesMut::new(),
            cap,
            fed: 0,
            records: Vec::new(),
        }
    }

    fn check_memory(&self, before: usize, failed: bool) {
        let capacity = self.src.capacity();
        if failed {
            assert!(
                capacity <= before,
                "a failing decode call grew the buffer from {before} to {capacity}"
            );
        }
        let bound = 2 * (self.fed + self.cap + 4) + 64;
        assert!(
            capacity <= bound,
            "capacity {capacity} after {} bytes with cap {}",
            self.fed,
            self.cap
        );
    }

    /// Appends `chunk` and decodes every record now complete.
    fn feed(&mut self, chunk: &[u8]) -> Result<(), End> {
        self.src.extend_from_slice(chunk);
        self.fed += chunk.len();
        loop {
            let before = self.src.capacity();
            let r = self.codec.decode(&mut self.src);
            self.check_memory(before, r.is_err());
            match r {
                Ok(Some(rec)) => {
                    assert!(
                        rec.len() <= self.cap,
                        "record of {} bytes over the cap {}",
                        rec.len(),
                        self.cap
                    );
                    self.records.push(rec);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// End of stream, as `FramedRead` handles it.
    fn eof(&mut self) -> End {
        loop {
            let before = self.src.capacity();
            let r = self.codec.decode_eof(&mut self.src);
            self.check_memory(before, r.is_err());
            match r {
                Ok(Some(rec)) => {
                    assert!(rec.len() <= self.cap);
                    self.records.push(rec);
                }
                Ok(None) => return End::Clean,
                Err(e) => return e.into(),
            }
        }
    }
}

/// Record marking from the RFC, on the whole stream: records and how the stream ended.
fn model(stream: &[u8], cap: usize, max_fragments: usize) -> (Vec<Vec<u8>>, End, Vec<usize>) {
    let (mut records, mut counts) = (Vec::new(), Vec::new());
    let mut partial = Vec::new();
    let mut fragments = 0;
    let mut rest = stream;
    while let Some((hdr, after)) = rest.split_first_chunk::<4>() {
        let hdr = u32::from_be_bytes(*hdr);
        let len = (hdr & !LAST_FRAGMENT) as usize;
        if partial.len() + len > cap {
            return (
                records,
                End::TooLarge {
                    fragment: len,
                    so_far: partial.len(),
                    max: cap,
                },
                counts,
            );
        }
        if fragments >= max_fragments {
            return (
                records,
                End::TooManyFragments { max: max_fragments },
                counts,
            );
        }
        if after.len() < len {
            break;
        }
        partial.extend_from_slice(&after[..len]);
        fragments += 1;
        rest = &after[len..];
        if hdr & LAST_FRAGMENT != 0 {
            records.push(std::mem::take(&mut partial));
            counts.push(fragments);
            fragments = 0;
        }
    }
    let end = if rest.is_empty() && partial.is_empty() {
        End::Clean
    } else {
        End::Incomplete {
            buffered: rest.len() + partial.len(),
        }
    };
    (records, end, counts)
}

fuzz_target!(|data: &[u8]| {
    let [limits, n, rest @ ..] = data else {
        return;
    };
    let cap = CAPS[usize::from(limits & 7)];
    let max_fragments = usize::from(limits >> 3) % 8 + 1;
    let n = usize::from(n % 9).min(rest.len());
    let (sizes, stream) = rest.split_at(n);

    let mut chunked = Run::new(cap, max_fragments);
    let mut at = 0;
    let mut end = None;
    for &s in sizes {
        let to = (at + usize::from(s)).min(stream.len());
        if let Err(e) = chunked.feed(&stream[at..to]) {
            end = Some(e);
            break;
        }
        at = to;
    }
    let end_chunked = match end {
        Some(e) => e,
        None => match chunked.feed(&stream[at..]) {
            Err(e) => e,
            Ok(()) => chunked.eof(),
        },
    };

    let mut whole = Run::new(cap, max_fragments);
    let end_whole = match whole.feed(stream) {
        Err(e) => e,
        Ok(()) => whole.eof(),
    };

    assert_eq!(
        chunked.records, whole.records,
        "records depend on how the stream was split"
    );
    assert_eq!(
        end_chunked, end_whole,
        "the end depends on how the stream was split"
    );

    let (records, end_model, counts) = model(stream, cap, max_fragments);
    assert_eq!(
        whole.records.len(),
        records.len(),
        "codec and model disagree on the record count"
    );
    for (a, b) in whole.records.iter().zip(&records) {
        assert_eq!(&a[..], &b[..], "codec and model disagree on a record");
    }
    assert_eq!(end_whole, end_model, "codec and model disagree on the end");
    assert!(counts.iter().all(|&c| c <= max_fragments), "{counts:?}");
});
