//! The signals the supervisor acts on.

/// The signals the supervisor acts on: on Windows, Ctrl-C and Ctrl-Break in its console
/// (reload is `sipcraft ctl reload` there).
pub(super) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: Option<tokio::signal::windows::CtrlC>,
    #[cfg(windows)]
    ctrl_break: Option<tokio::signal::windows::CtrlBreak>,
}

pub(super) enum Sig {
    Stop,
    #[cfg(unix)]
    Reload,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(windows)]
        {
            // A service has no console: a handler that cannot be installed only means no
            // Ctrl-C, never an immediate stop.
            use tokio::signal::windows::{ctrl_break, ctrl_c};
            let warn = |e: std::io::Error| tracing::warn!(error = %e, "cannot watch Ctrl-C");
            Ok(Signals {
                ctrl_c: ctrl_c().map_err(warn).ok(),
                ctrl_break: ctrl_break().map_err(warn).ok(),
            })
        }
    }

    pub(super) async fn next(&mut self) -> Sig {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => Sig::Stop,
                _ = self.int.recv() => Sig::Stop,
                _ = self.hup.recv() => Sig::Reload,
            }
        }
        #[cfg(windows)]
        {
            /// One console event; never, when it cannot be watched (any more).
            async fn event(recv: Option<impl std::future::Future<Output = Option<()>>>) {
                if let Some(recv) = recv {
                    if recv.await.is_some() {
                        return;
                    }
                }
                std::future::pending().await
            }
            tokio::select! {
                () = event(self.ctrl_c.as_mut().map(|c| c.recv())) => Sig::Stop,
                () = event(self.ctrl_break.as_mut().map(|c| c.recv())) => Sig::Stop,
            }
        }
    }
}
