//! The signals that stop a long-running command: Ctrl-C (SIGINT) and SIGTERM (what systemd,
//! docker and Kubernetes send), both taken as the same graceful stop: engines finish what they
//! hold, flush their acknowledgements and writes, and print their report.

/// Listens for SIGINT and SIGTERM from its creation on, so a signal that arrives between two
/// polls of [`StopSignal::recv`] is not missed. Made once per command, before its loop.
pub struct StopSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    /// Starts listening.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn new() -> std::io::Result<StopSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignal {})
    }

    /// Resolves at the next SIGINT or SIGTERM received since [`StopSignal::new`], naming it
    /// (`interrupted` or `terminated`: the reason the report gives).
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "interrupted",
                _ = self.term.recv() => "terminated",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}
