use thiserror::Error;

/// Why bytes could not be decoded as the XDR type that was expected.
///
/// Every variant means the peer sent something malformed; none is an internal failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum XdrError {
    /// The input ended before the value was complete (this includes missing padding).
    #[error("truncated XDR: needed {need} more bytes, {have} left")]
    Truncated {
        /// Bytes the next item needed.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// A variable-length item declared a length above the bound of its `.x` definition.
    #[error("XDR item of {len} bytes exceeds its bound of {max}")]
    TooLong {
        /// The length the input declared.
        len: u64,
        /// The bound from the `.x` file.
        max: usize,
    },
    /// A closed enum or a bool carried a value that is not one of its arms.
    #[error("invalid value {value} for XDR {what}")]
    BadDiscriminant {
        /// The type that was being decoded.
        what: &'static str,
        /// The value found on the wire.
        value: u32,
    },
    /// Bytes remained after the complete message had been decoded.
    #[error("{count} trailing bytes after the XDR message")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
}
