//! The parts of the nsmd binaries that are not protocol: listeners, rpcbind registration,
//! and logging.

pub mod listen;
pub mod logging;
pub mod register;
