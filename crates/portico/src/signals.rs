//! The signals `portico up` acts on: SIGINT (Ctrl-C) and SIGTERM start the shutdown
//! sequence, SIGHUP reloads the configuration.

use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

/// What a signal asks for.
pub(crate) enum Signal {
    /// Shut down (the signal's name).
    Shutdown(&'static str),
    /// Re-read the configuration.
    Reload,
}

/// The installed handlers.
pub(crate) struct Signals {
    term: Stream,
    int: Stream,
    hup: Stream,
}

impl Signals {
    /// Installs the handlers; from now on these signals no longer end the process.
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Shutdown("SIGTERM"),
            _ = self.int.recv() => Signal::Shutdown("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
