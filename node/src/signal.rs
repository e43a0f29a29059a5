//! Process shutdown signals. In a container the binary is PID 1, for which the kernel
//! applies no default action: a SIGTERM that nobody handles is ignored, so every pod
//! deletion (and every scale-down, drain and rollout) would wait out the whole
//! `terminationGracePeriodSeconds` and end in SIGKILL. The roles therefore stop on
//! SIGTERM exactly as on Ctrl-C (SIGINT).

/// Resolves on the first SIGINT or SIGTERM.
pub async fn terminate() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
