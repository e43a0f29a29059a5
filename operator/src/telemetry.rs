//! Structured logs through `tracing`: human-readable by default, JSON lines with
//! `--log-format json` (what a log pipeline ingests). `RUST_LOG` filters as usual.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_lease_manager=warn,kube_runtime=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init`: a second call (tests) must not panic.
    let _ = match format {
        LogFormat::Text => {
            // Colours only on a terminal: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry.with(fmt::layer().with_target(true).with_ansi(ansi)).try_init()
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true))
            .try_init(),
    };
}
