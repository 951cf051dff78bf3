//! Logging: `tracing` to stderr. The level is info, or debug with `-d` / `[statd] debug`;
//! `RUST_LOG` overrides both. The level can change at run time (SIGHUP re-reads nfs.conf).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Changes the log level after start.
#[derive(Debug, Clone)]
pub struct LogLevel {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogLevel {
    /// Switches between info and debug (no effect when `RUST_LOG` set the filter).
    pub fn set_debug(&self, debug: bool) {
        if let Some(h) = &self.handle {
            let _ = h.reload(EnvFilter::new(if debug { "debug" } else { "info" }));
        }
    }
}

/// Installs the global subscriber.
pub fn init(debug: bool) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(if debug { "debug" } else { "info" }));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false),
        )
        .try_init();
    LogLevel {
        handle: (!fixed).then_some(handle),
    }
}
