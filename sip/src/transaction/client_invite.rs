//! The INVITE client transaction (RFC 3261 §17.1.1, with RFC 6026 §7.2).
//!
//! ```text
//!            Calling ──1xx──▶ Proceeding ──300-699──▶ Completed ──Timer D──▶ Terminated
//!               │  └──────300-699 (ACK sent)─────────────▲
//!               ├──2xx──▶ Accepted ──Timer M──▶ Terminated
//!               └──Timer B / transport error──▶ Terminated
//! ```
//!
//! - Calling: the INVITE is retransmitted on Timer A (T1, doubling, unreliable transports
//!   only); Timer B (64*T1) ends the transaction with a timeout.
//! - Proceeding: no retransmissions and no timeout; the TU (Timer C in a proxy, or the user)
//!   decides how long to ring.
//! - Completed: entered on a 300-699, which is passed to the TU and acknowledged; every
//!   retransmission of it is acknowledged again and absorbed. Timer D (32 s; 0 on reliable).
//! - Accepted (RFC 6026): entered on a 2xx. The 2xx and every later 2xx are passed to the TU,
//!   which acknowledges them itself (the ACK to a 2xx is not part of the transaction). Timer M
//!   (64*T1) ends it. This keeps 2xx retransmissions and forked 2xx from being mistaken for
//!   stray responses by a proxy.

use std::time::Instant;

use super::timers::{earliest, Config, Deadline, Retransmit, TimerKind};
use super::{Action, Reliability, State, StatusClass};

/// An INVITE client transaction. States: Calling, Proceeding, Completed, Accepted, Terminated.
#[derive(Debug, Clone)]
pub struct ClientInvite<M> {
    config: Config,
    reliability: Reliability,
    state: State,
    request: M,
    /// Timer A, in Calling over unreliable transports.
    timer_a: Option<Retransmit>,
    /// Timer B in Calling, D in Completed, M in Accepted.
    deadline: Option<Deadline>,
}

impl<M: Clone> ClientInvite<M> {
    /// Starts the transaction in Calling: the first action sends `request`.
    pub fn new(
        config: Config,
        reliability: Reliability,
        request: M,
        now: Instant,
    ) -> (Self, Vec<Action<M>>) {
        let config = config.sanitized();
        let timer_a = config
            .initial(TimerKind::A, reliability)
            .map(|d| Retransmit::start(now, d));
        let deadline = Deadline::after(TimerKind::B, now, config.transaction_timeout());
        let send = Action::Send {
            message: request.clone(),
            retransmission: false,
        };
        let txn = ClientInvite {
            config,
            reliability,
            state: State::Calling,
            request,
            timer_a,
            deadline: Some(deadline),
        };
        (txn, vec![send])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The INVITE this transaction sends.
    pub fn request(&self) -> &M {
        &self.request
    }

    /// When the machine next wants [`on_timer`](Self::on_timer), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        earliest([self.timer_a.map(|t| t.at), self.deadline.map(|d| d.at)])
    }

    /// A response matching this transaction arrived, with its status code.
    pub fn on_response(&mut self, now: Instant, status: u16, response: M) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match (self.state, StatusClass::of(status)) {
            (State::Calling | State::Proceeding, StatusClass::Provisional) => {
                self.state = State::Proceeding;
                self.timer_a = None;
                self.deadline = None;
                out.push(Action::PassToTu(response));
            }
            (State::Calling | State::Proceeding, StatusClass::Success) => {
                self.state = State::Accepted;
                self.timer_a = None;
                let timer_m = self.config.transaction_timeout();
                self.deadline = Some(Deadline::after(TimerKind::M, now, timer_m));
                out.push(Action::PassToTu(response));
            }
            (State::Calling | State::Proceeding, StatusClass::Failure) => {
                self.timer_a = None;
                out.push(Action::PassToTu(response.clone()));
                out.push(Action::SendAck {
                    request: self.request.clone(),
                    response,
                });
                self.state = State::Completed;
                match self.config.initial(TimerKind::D, self.reliability) {
                    Some(d) if !d.is_zero() => {
                        self.deadline = Some(Deadline::after(TimerKind::D, now, d));
                    }
                    _ => self.terminate(&mut out),
                }
            }
            (State::Completed, StatusClass::Failure) => {
                out.push(Action::SendAck {
                    request: self.request.clone(),
                    response,
                });
            }
            (State::Accepted, StatusClass::Success) => out.push(Action::PassToTu(response)),
            // Anything else (a 1xx after a final, a non-2xx in Accepted, a 2xx in Completed,
            // an invalid code, anything once Terminated) is absorbed.
            _ => {}
        }
        out
    }

    /// Fires the timers due at `now`, if any.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<M>> {
        let mut out = Vec::new();
        if let Some(deadline) = self.deadline.filter(|d| d.due(now)) {
            if deadline.kind == TimerKind::B {
                out.push(Action::Timeout(TimerKind::B));
            }
            self.terminate(&mut out);
            return out;
        }
        if let Some(timer_a) = self.timer_a.as_mut().filter(|t| t.due(now)) {
            let next = timer_a.interval * 2;
            timer_a.rearm(now, next);
            out.push(Action::Send {
                message: self.request.clone(),
                retransmission: true,
            });
        }
        out
    }

    /// The transport could not send the INVITE or the ACK (§17.1.4). In Calling and Completed
    /// the transaction ends; in Proceeding and Accepted nothing was being sent, so the TU is
    /// told and decides (for example a TCP connection lost while ringing).
    pub fn on_transport_error(&mut self) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match self.state {
            State::Terminated => {}
            State::Calling | State::Completed => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            _ => out.push(Action::TransportError),
        }
        out
    }

    fn terminate(&mut self, out: &mut Vec<Action<M>>) {
        self.state = State::Terminated;
        self.timer_a = None;
        self.deadline = None;
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

    fn ack(response: &'static str) -> Action<&'static str> {
        Action::SendAck {
            request: "INVITE",
            response,
        }
    }

    fn start(rel: Reliability) -> (ClientInvite<&'static str>, Instant) {
        let t0 = Instant::now();
        let (txn, actions) = ClientInvite::new(Config::default(), rel, "INVITE", t0);
        assert_eq!(actions, vec![send("INVITE", false)]);
        assert_eq!(txn.state(), State::Calling);
        (txn, t0)
    }

    #[test]
    fn timer_a_doubles_until_timer_b() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        let mut fired = Vec::new();
        while let Some(at) = txn.next_deadline() {
            for action in txn.on_timer(at) {
                fired.push(((at - t0).as_millis(), action));
            }
        }
        let mut expected: Vec<_> = [500, 1500, 3500, 7500, 15500, 31500]
            .into_iter()
            .map(|ms| (ms, send("INVITE", true)))
            .collect();
        expected.push((32000, Action::Timeout(TimerKind::B)));
        expected.push((32000, Action::Terminated));
        assert_eq!(fired, expected);
        assert_eq!(txn.state(), State::Terminated);
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let (mut txn, t0) = start(Reliability::Reliable);
        assert_eq!(txn.next_deadline(), Some(t0 + 32000 * MS));
        assert_eq!(txn.on_timer(t0 + 31999 * MS), vec![]);
        assert_eq!(
            txn.on_timer(t0 + 32000 * MS),
            vec![Action::Timeout(TimerKind::B), Action::Terminated]
        );
    }

    #[test]
    fn provisional_stops_timers_a_and_b() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        let actions = txn.on_response(t0 + 100 * MS, 100, "100");
        assert_eq!(actions, vec![Action::PassToTu("100")]);
        assert_eq!(txn.state(), State::Proceeding);
        assert_eq!(txn.next_deadline(), None);
        assert_eq!(txn.on_timer(t0 + 600 * MS), vec![]);
        assert_eq!(
            txn.on_response(t0 + 700 * MS, 180, "180"),
            vec![Action::PassToTu("180")]
        );
    }

    #[test]
    fn failure_is_acked_and_retransmissions_absorbed_until_timer_d() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        txn.on_response(t0 + 100 * MS, 180, "180");
        let at = t0 + 2000 * MS;
        assert_eq!(
            txn.on_response(at, 486, "486"),
            vec![Action::PassToTu("486"), ack("486")]
        );
        assert_eq!(txn.state(), State::Completed);
        assert_eq!(txn.next_deadline(), Some(at + Duration::from_secs(32)));
        // A retransmitted 486 is acknowledged again, not passed up.
        assert_eq!(txn.on_response(at + MS, 486, "486'"), vec![ack("486'")]);
        // Provisional and 2xx responses are absorbed.
        assert_eq!(txn.on_response(at + 2 * MS, 180, "180"), vec![]);
        assert_eq!(txn.on_response(at + 3 * MS, 200, "200"), vec![]);
        assert_eq!(
            txn.on_timer(at + Duration::from_secs(32)),
            vec![Action::Terminated]
        );
    }

    #[test]
    fn failure_in_calling_over_reliable_terminates_at_once() {
        let (mut txn, t0) = start(Reliability::Reliable);
        assert_eq!(
            txn.on_response(t0 + MS, 503, "503"),
            vec![Action::PassToTu("503"), ack("503"), Action::Terminated]
        );
        assert_eq!(txn.state(), State::Terminated);
        assert_eq!(txn.next_deadline(), None);
        assert_eq!(txn.on_response(t0 + 2 * MS, 503, "503"), vec![]);
    }

    #[test]
    fn success_enters_accepted_and_passes_every_2xx_until_timer_m() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        let at = t0 + 1000 * MS;
        assert_eq!(
            txn.on_response(at, 200, "200a"),
            vec![Action::PassToTu("200a")]
        );
        assert_eq!(txn.state(), State::Accepted);
        // No more INVITE retransmissions, no ACK from the transaction.
        assert_eq!(txn.next_deadline(), Some(at + Duration::from_secs(32)));
        assert_eq!(
            txn.on_response(at + MS, 200, "200b"),
            vec![Action::PassToTu("200b")]
        );
        assert_eq!(txn.on_response(at + 2 * MS, 180, "180"), vec![]);
        assert_eq!(txn.on_response(at + 3 * MS, 486, "486"), vec![]);
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(
            txn.on_timer(at + Duration::from_secs(32)),
            vec![Action::Terminated]
        );
    }

    #[test]
    fn transport_errors() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(
            txn.on_transport_error(),
            vec![Action::TransportError, Action::Terminated]
        );
        assert_eq!(txn.on_transport_error(), vec![]);

        let (mut txn, _) = start(Reliability::Unreliable);
        txn.on_response(t0 + MS, 404, "404");
        assert_eq!(
            txn.on_transport_error(),
            vec![Action::TransportError, Action::Terminated]
        );

        let (mut txn, _) = start(Reliability::Reliable);
        txn.on_response(t0 + MS, 183, "183");
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(txn.state(), State::Proceeding);
    }

    #[test]
    fn invalid_status_codes_are_ignored() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(txn.on_response(t0 + MS, 99, "x"), vec![]);
        assert_eq!(txn.on_response(t0 + MS, 700, "x"), vec![]);
        assert_eq!(txn.state(), State::Calling);
    }
}
