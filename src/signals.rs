//! The process's termination signals. [`Signals::install`] is the first thing `serve` does, so a
//! SIGTERM (or SIGINT, or SIGHUP) that arrives while the process is still starting is caught
//! and acted on once it has started, instead of killing it with the default action.

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Term,
    Interrupt,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Interrupt => "SIGINT",
        }
    }
}

/// Listeners for SIGTERM and SIGINT, registered when installed: a signal that arrives before
/// [`Signals::recv`] is called is kept and returned by it.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers. Must run inside a tokio runtime with its signal driver enabled.
    /// SIGHUP (a reload trigger, listened for once the reloader runs) is registered too, so one
    /// sent during start is ignored rather than fatal.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| tracing::warn!("cannot listen for {name}: {e}")).ok()
            };
            // tokio keeps a signal's handler for the life of the process once registered.
            drop(listen(SignalKind::hangup(), "SIGHUP"));
            Self {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the next SIGTERM or SIGINT (or one that arrived since [`Signals::install`]).
    pub async fn recv(&mut self) -> Stop {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => Stop::Term,
                () = next(&mut self.int) => Stop::Interrupt,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Interrupt
        }
    }
}
