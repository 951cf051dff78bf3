//! The parts of the nsmd binaries that are not protocol: listeners, rpcbind registration,
//! logging and the state directory.

pub mod listen;
pub mod logging;
pub mod register;
pub mod state_dir;
