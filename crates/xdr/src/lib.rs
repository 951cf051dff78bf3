//! Bounded XDR (RFC 4506) and every wire type nsmd speaks: the NSM protocol (program 100024,
//! `proto/sm_inter.x`), the lockd callback argument (`proto/nlm_callback.x`) and the rpcbind
//! subsets (`proto/rpcbind.x`).
//!
//! Decoding works on a borrowed buffer and never copies or allocates: variable-length items
//! borrow from the input after their declared bound (e.g. `mon_name<1024>`) was checked against
//! the length word, *before* anything else happens. Truncated input and trailing bytes are typed
//! errors; nothing panics or loops on any input. Encoding knows its exact length up front
//! ([`Encode::encoded_len`]) and cannot fail: bounds are enforced when a value is constructed
//! ([`Opaque::new`]).
//!
//! Naming policy: types are Rust-cased (`SmStatRes` for `sm_stat_res`), fields keep their `.x`
//! names (`priv` becomes `priv_`, a Rust keyword).
//!
//! This crate does no I/O.
#![warn(missing_docs)]

mod codec;
mod error;
pub mod nsm;
pub mod rpcbind;

pub use codec::{Decode, Decoder, Encode, Opaque, from_bytes, padding};
pub use error::XdrError;
