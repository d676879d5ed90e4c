//! Logging to stderr, and under systemd to the journal with each line's priority.
//!
//! systemd connects a service's stderr to the journal and says so in `JOURNAL_STREAM`. It
//! reads a leading `<N>` on each line as the syslog priority (sd-daemon(3)), which is what
//! makes `journalctl -p warning -u sipcraft` show warnings and errors only. The timestamp is
//! left out there: the journal stamps every line itself.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the process's logger: `RUST_LOG`, else `info`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = Format::default().with_target(false).without_time();
        builder
            .with_ansi(false)
            .event_format(Prioritized(format))
            .fmt_fields(DefaultFields::new())
            .try_init()
    } else {
        builder.try_init()
    };
}

/// The syslog priority of a tracing level: err, warning, info, debug.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Puts `<priority>` in front of what the inner format writes.
struct Prioritized(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Prioritized
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}
