//! systemd notification (sd_notify): READY, STATUS, WATCHDOG, STOPPING. A no-op when
//! NOTIFY_SOCKET is not set, and on Windows.

use std::time::Duration;

/// Talks to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Half the watchdog interval systemd asked for, if it asked.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Self {
        #[cfg(unix)]
        {
            let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
            let watchdog_every = sd_notify::watchdog_enabled()
                .filter(|_| enabled)
                .map(|d| d / 2);
            Notifier {
                enabled,
                watchdog_every,
            }
        }
        #[cfg(not(unix))]
        {
            Notifier {
                enabled: false,
                watchdog_every: None,
            }
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={line}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    fn send(&self, state: &str) {
        if !self.enabled {
            return;
        }
        #[cfg(unix)]
        {
            let parsed = sd_notify::NotifyState::Custom(state);
            if let Err(e) = sd_notify::notify(&[parsed]) {
                tracing::warn!(error = %e, state, "sd_notify failed");
            }
        }
        #[cfg(not(unix))]
        let _ = state;
    }
}
