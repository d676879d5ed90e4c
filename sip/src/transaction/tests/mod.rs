//! Tests of the [`TransactionTable`] driven the way the transport layer drives it: on tokio's
//! paused clock, a driver sleeps until the table's next deadline, polls the timers, and records
//! at which millisecond (since the start of the test) each action came out.

mod client;
mod server;
mod table;

use std::time::{Duration, Instant};

use super::{Action, Config, TransactionKey, TransactionTable};

/// Messages in these tests are labels.
type Msg = &'static str;

/// One action from `poll_timers`, with the millisecond it came out at.
type Fired = (u64, TransactionKey, Action<Msg>);

/// A test-sized transport driver around a table.
struct Driver {
    table: TransactionTable<Msg>,
    start: Instant,
}

impl Driver {
    /// A driver with the default timers and room for `max` transactions, started now.
    fn new(max: usize) -> Driver {
        Driver::with_config(Config::default(), max)
    }

    fn with_config(config: Config, max: usize) -> Driver {
        Driver {
            table: TransactionTable::new(config, max),
            start: now(),
        }
    }

    /// Milliseconds since the driver started, on the paused clock.
    fn elapsed_ms(&self) -> u64 {
        millis(now() - self.start)
    }

    /// Sleeps from deadline to deadline, firing timers, until `until_ms` after the start (the
    /// clock then reads exactly `until_ms`) or forever if nothing is left to fire.
    async fn run_until(&mut self, until_ms: u64) -> Vec<Fired> {
        let end = self.start + Duration::from_millis(until_ms);
        let mut fired = Vec::new();
        while let Some(at) = self.table.next_deadline().filter(|at| *at <= end) {
            tokio::time::sleep_until(at.into()).await;
            let now = now();
            for (key, action) in self.table.poll_timers(now) {
                fired.push((millis(now - self.start), key, action));
            }
        }
        tokio::time::sleep_until(end.into()).await;
        assert_eq!(
            self.elapsed_ms(),
            until_ms,
            "the paused clock moved exactly"
        );
        fired
    }
}

/// The paused clock, as the `std` instant the machines take.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Drops the keys, for tests with one transaction.
fn timeline(fired: Vec<Fired>) -> Vec<(u64, Action<Msg>)> {
    fired.into_iter().map(|(ms, _, a)| (ms, a)).collect()
}

/// `Send { message, retransmission }`.
fn send(message: Msg, retransmission: bool) -> Action<Msg> {
    Action::Send {
        message,
        retransmission,
    }
}

/// The same retransmission at each of `times`.
fn resends(message: Msg, times: &[u64]) -> Vec<(u64, Action<Msg>)> {
    times.iter().map(|&ms| (ms, send(message, true))).collect()
}

#[tokio::test(start_paused = true)]
async fn driver_sleeps_exactly_to_deadlines() {
    let mut driver = Driver::new(1);
    assert_eq!(driver.run_until(1234).await, vec![]);
    assert_eq!(driver.elapsed_ms(), 1234);
}
