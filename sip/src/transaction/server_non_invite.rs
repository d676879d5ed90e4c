//! The non-INVITE server transaction (RFC 3261 §17.2.2).
//!
//! ```text
//!   Trying ──1xx from TU──▶ Proceeding ──200-699 from TU──▶ Completed ──Timer J──▶ Terminated
//!     └──────────200-699 from TU──────────────────────────────▲
//!   Proceeding / Completed ──transport error──▶ Terminated
//! ```
//!
//! - Trying: the request went to the TU when the transaction was created; retransmissions of
//!   it are absorbed (there is nothing to resend yet).
//! - Proceeding: retransmissions get the latest provisional response again.
//! - Completed: retransmissions get the final response again; any further response from the
//!   TU is discarded. Timer J (64*T1; 0 on reliable transports) ends it.

use std::time::Instant;

use super::timers::{Config, Deadline, TimerKind};
use super::{Action, Reliability, State, StatusClass};

/// A non-INVITE server transaction. States: Trying, Proceeding, Completed, Terminated.
#[derive(Debug, Clone)]
pub struct ServerNonInvite<M> {
    config: Config,
    reliability: Reliability,
    state: State,
    request: M,
    /// The latest response sent (provisional in Proceeding, final in Completed).
    last_response: Option<M>,
    /// Timer J in Completed.
    timer_j: Option<Deadline>,
}

impl<M: Clone> ServerNonInvite<M> {
    /// Creates the transaction for a newly received request, in Trying. The caller passes the
    /// request to the TU itself.
    pub fn new(config: Config, reliability: Reliability, request: M) -> Self {
        ServerNonInvite {
            config: config.sanitized(),
            reliability,
            state: State::Trying,
            request,
            last_response: None,
            timer_j: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The request that created the transaction.
    pub fn request(&self) -> &M {
        &self.request
    }

    /// When the machine next wants [`on_timer`](Self::on_timer), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timer_j.map(|d| d.at)
    }

    /// The TU sends a response with this status code. Once a final response is sent, later
    /// ones are discarded (§17.2.2).
    pub fn respond(&mut self, now: Instant, status: u16, response: M) -> Vec<Action<M>> {
        let mut out = Vec::new();
        let open = matches!(self.state, State::Trying | State::Proceeding);
        match StatusClass::of(status) {
            StatusClass::Provisional if open => {
                self.state = State::Proceeding;
                self.last_response = Some(response.clone());
                out.push(Action::Send {
                    message: response,
                    retransmission: false,
                });
            }
            StatusClass::Success | StatusClass::Failure if open => {
                self.state = State::Completed;
                self.last_response = Some(response.clone());
                out.push(Action::Send {
                    message: response,
                    retransmission: false,
                });
                match self.config.initial(TimerKind::J, self.reliability) {
                    Some(d) if !d.is_zero() => {
                        self.timer_j = Some(Deadline::after(TimerKind::J, now, d));
                    }
                    _ => self.terminate(&mut out),
                }
            }
            _ => {}
        }
        out
    }

    /// In Completed with Timer J running: when it fires and the final response it resends
    /// meanwhile. The table keeps only these two (and the key) for the rest of Timer J.
    pub(crate) fn into_lingering(self) -> Option<(Instant, M)> {
        match (self.state, self.timer_j, self.last_response) {
            (State::Completed, Some(j), Some(response)) => Some((j.at, response)),
            _ => None,
        }
    }

    /// Whether the transaction is in Completed with Timer J running.
    pub(crate) fn is_lingering(&self) -> bool {
        self.state == State::Completed && self.timer_j.is_some() && self.last_response.is_some()
    }

    /// A retransmission of the request arrived: the latest response is sent again, if any.
    pub fn on_request(&mut self) -> Vec<Action<M>> {
        match (&self.state, &self.last_response) {
            (State::Proceeding | State::Completed, Some(response)) => vec![Action::Send {
                message: response.clone(),
                retransmission: true,
            }],
            _ => Vec::new(),
        }
    }

    /// Fires Timer J if it is due at `now`.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<M>> {
        let mut out = Vec::new();
        if self.timer_j.is_some_and(|d| d.due(now)) {
            self.terminate(&mut out);
        }
        out
    }

    /// The transport could not send a response (§17.2.4): the TU is told and, once a response
    /// has been sent, the transaction ends.
    pub fn on_transport_error(&mut self) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match self.state {
            State::Terminated => {}
            State::Proceeding | State::Completed => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            _ => out.push(Action::TransportError),
        }
        out
    }

    fn terminate(&mut self, out: &mut Vec<Action<M>>) {
        self.state = State::Terminated;
        self.timer_j = None;
        out.push(Action::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn send(m: &'static str, retransmission: bool) -> Action<&'static str> {
        Action::Send {
            message: m,
            retransmission,
        }
    }

    fn start(rel: Reliability) -> ServerNonInvite<&'static str> {
        let txn = ServerNonInvite::new(Config::default(), rel, "REGISTER");
        assert_eq!(txn.state(), State::Trying);
        assert_eq!(txn.next_deadline(), None);
        txn
    }

    #[test]
    fn walks_trying_proceeding_completed_and_timer_j() {
        let t0 = Instant::now();
        let mut txn = start(Reliability::Unreliable);
        // Trying: nothing to resend yet.
        assert_eq!(txn.on_request(), vec![]);
        assert_eq!(txn.respond(t0, 100, "100"), vec![send("100", false)]);
        assert_eq!(txn.state(), State::Proceeding);
        assert_eq!(txn.on_request(), vec![send("100", true)]);
        let at = t0 + 300 * MS;
        assert_eq!(txn.respond(at, 200, "200"), vec![send("200", false)]);
        assert_eq!(txn.state(), State::Completed);
        assert_eq!(txn.on_request(), vec![send("200", true)]);
        // Later responses from the TU are discarded.
        assert_eq!(txn.respond(at, 500, "500"), vec![]);
        assert_eq!(txn.respond(at, 180, "180"), vec![]);
        assert_eq!(txn.next_deadline(), Some(at + Duration::from_secs(32)));
        assert_eq!(txn.on_timer(at + 31999 * MS), vec![]);
        assert_eq!(
            txn.on_timer(at + Duration::from_secs(32)),
            vec![Action::Terminated]
        );
        assert_eq!(txn.state(), State::Terminated);
        assert_eq!(txn.on_request(), vec![]);
    }

    #[test]
    fn final_from_trying_over_reliable_terminates_at_once() {
        let mut txn = start(Reliability::Reliable);
        assert_eq!(
            txn.respond(Instant::now(), 401, "401"),
            vec![send("401", false), Action::Terminated]
        );
        assert_eq!(txn.next_deadline(), None);
    }

    #[test]
    fn transport_errors() {
        let t0 = Instant::now();
        let mut txn = start(Reliability::Unreliable);
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(txn.state(), State::Trying);
        txn.respond(t0, 180, "180");
        assert_eq!(
            txn.on_transport_error(),
            vec![Action::TransportError, Action::Terminated]
        );
        let mut txn = start(Reliability::Unreliable);
        txn.respond(t0, 200, "200");
        assert_eq!(
            txn.on_transport_error(),
            vec![Action::TransportError, Action::Terminated]
        );
        assert_eq!(txn.on_transport_error(), vec![]);
    }
}
