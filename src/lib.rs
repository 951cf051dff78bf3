//! The parts of the nsmd binaries that are not protocol: listeners, rpcbind registration,
//! and logging.

pub mod cli;
pub mod config;
pub mod control;
pub mod held;
pub mod listen;
pub mod logging;
pub mod privileges;
pub mod register;
