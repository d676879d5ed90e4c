//! The non-INVITE client transaction (RFC 3261 §17.1.2).
//!
//! ```text
//!   Trying ──1xx──▶ Proceeding ──200-699──▶ Completed ──Timer K──▶ Terminated
//!     └──────200-699───────────────────────────▲
//!   Trying / Proceeding ──Timer F / transport error──▶ Terminated
//! ```
//!
//! - Trying: the request is retransmitted on Timer E (T1, doubling, capped at T2; unreliable
//!   transports only). Timer F (64*T1) ends the transaction with a timeout.
//! - Proceeding: Timer E goes on, re-armed at T2 each time it fires; Timer F still runs.
//! - Completed: the final response went to the TU; its retransmissions are absorbed until
//!   Timer K (T4; 0 on reliable transports).

use std::time::Instant;

use super::timers::{earliest, Config, Deadline, Retransmit, TimerKind};
use super::{Action, Reliability, State, StatusClass};

/// A non-INVITE client transaction. States: Trying, Proceeding, Completed, Terminated.
#[derive(Debug, Clone)]
pub struct ClientNonInvite<M> {
    config: Config,
    reliability: Reliability,
    state: State,
    request: M,
    /// Timer E, in Trying and Proceeding over unreliable transports.
    timer_e: Option<Retransmit>,
    /// Timer F in Trying and Proceeding, K in Completed.
    deadline: Option<Deadline>,
}

impl<M: Clone> ClientNonInvite<M> {
    /// Starts the transaction in Trying: the first action sends `request`.
    pub fn new(
        config: Config,
        reliability: Reliability,
        request: M,
        now: Instant,
    ) -> (Self, Vec<Action<M>>) {
        let config = config.sanitized();
        let timer_e = config
            .initial(TimerKind::E, reliability)
            .map(|d| Retransmit::start(now, d));
        let deadline = Deadline::after(TimerKind::F, now, config.transaction_timeout());
        let send = Action::Send {
            message: request.clone(),
            retransmission: false,
        };
        let txn = ClientNonInvite {
            config,
            reliability,
            state: State::Trying,
            request,
            timer_e,
            deadline: Some(deadline),
        };
        (txn, vec![send])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The request this transaction sends.
    pub fn request(&self) -> &M {
        &self.request
    }

    /// When the machine next wants [`on_timer`](Self::on_timer), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        earliest([self.timer_e.map(|t| t.at), self.deadline.map(|d| d.at)])
    }

    /// A response matching this transaction arrived, with its status code.
    pub fn on_response(&mut self, now: Instant, status: u16, response: M) -> Vec<Action<M>> {
        let mut out = Vec::new();
        let waiting = matches!(self.state, State::Trying | State::Proceeding);
        match StatusClass::of(status) {
            StatusClass::Provisional if waiting => {
                self.state = State::Proceeding;
                out.push(Action::PassToTu(response));
            }
            StatusClass::Success | StatusClass::Failure if waiting => {
                self.timer_e = None;
                self.state = State::Completed;
                out.push(Action::PassToTu(response));
                match self.config.initial(TimerKind::K, self.reliability) {
                    Some(d) if !d.is_zero() => {
                        self.deadline = Some(Deadline::after(TimerKind::K, now, d));
                    }
                    _ => self.terminate(&mut out),
                }
            }
            // Retransmitted finals in Completed, invalid codes, anything once Terminated.
            _ => {}
        }
        out
    }

    /// Fires the timers due at `now`, if any.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<M>> {
        let mut out = Vec::new();
        if let Some(deadline) = self.deadline.filter(|d| d.due(now)) {
            if deadline.kind == TimerKind::F {
                out.push(Action::Timeout(TimerKind::F));
            }
            self.terminate(&mut out);
            return out;
        }
        let t2 = self.config.t2;
        let proceeding = self.state == State::Proceeding;
        if let Some(timer_e) = self.timer_e.as_mut().filter(|t| t.due(now)) {
            let next = if proceeding {
                t2
            } else {
                (timer_e.interval * 2).min(t2)
            };
            timer_e.rearm(now, next);
            out.push(Action::Send {
                message: self.request.clone(),
                retransmission: true,
            });
        }
        out
    }

    /// The transport could not send the request (§17.1.4): in Trying and Proceeding the
    /// transaction ends; in Completed the TU is only told.
    pub fn on_transport_error(&mut self) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match self.state {
            State::Terminated => {}
            State::Trying | State::Proceeding => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            _ => out.push(Action::TransportError),
        }
        out
    }

    fn terminate(&mut self, out: &mut Vec<Action<M>>) {
        self.state = State::Terminated;
        self.timer_e = None;
        self.deadline = None;
        out.push(Action::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn send(retransmission: bool) -> Action<&'static str> {
        Action::Send {
            message: "BYE",
            retransmission,
        }
    }

    fn start(rel: Reliability) -> (ClientNonInvite<&'static str>, Instant) {
        let t0 = Instant::now();
        let (txn, actions) = ClientNonInvite::new(Config::default(), rel, "BYE", t0);
        assert_eq!(actions, vec![send(false)]);
        assert_eq!(txn.state(), State::Trying);
        (txn, t0)
    }

    /// Runs every timer until the machine has none left, with the elapsed milliseconds.
    fn run(
        txn: &mut ClientNonInvite<&'static str>,
        t0: Instant,
    ) -> Vec<(u128, Action<&'static str>)> {
        let mut fired = Vec::new();
        while let Some(at) = txn.next_deadline() {
            for action in txn.on_timer(at) {
                fired.push(((at - t0).as_millis(), action));
            }
        }
        fired
    }

    #[test]
    fn timer_e_doubles_to_t2_until_timer_f() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        let mut expected: Vec<_> = [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
        ]
        .into_iter()
        .map(|ms| (ms, send(true)))
        .collect();
        expected.push((32000, Action::Timeout(TimerKind::F)));
        expected.push((32000, Action::Terminated));
        assert_eq!(run(&mut txn, t0), expected);
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(txn.on_timer(t0 + 500 * MS), vec![send(true)]);
        assert_eq!(
            txn.on_response(t0 + 1000 * MS, 100, "100"),
            vec![Action::PassToTu("100")]
        );
        assert_eq!(txn.state(), State::Proceeding);
        // The running Timer E fires at 1.5 s, then every T2 = 4 s; Timer F still ends it.
        let mut expected: Vec<_> = [1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500]
            .into_iter()
            .map(|ms| (ms, send(true)))
            .collect();
        expected.push((32000, Action::Timeout(TimerKind::F)));
        expected.push((32000, Action::Terminated));
        assert_eq!(run(&mut txn, t0), expected);
    }

    #[test]
    fn final_response_absorbs_retransmissions_until_timer_k() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        let at = t0 + 700 * MS;
        assert_eq!(
            txn.on_response(at, 200, "200"),
            vec![Action::PassToTu("200")]
        );
        assert_eq!(txn.state(), State::Completed);
        assert_eq!(txn.next_deadline(), Some(at + Duration::from_secs(5)));
        assert_eq!(txn.on_response(at + MS, 200, "200"), vec![]);
        assert_eq!(txn.on_response(at + MS, 180, "180"), vec![]);
        assert_eq!(txn.on_timer(at + 4999 * MS), vec![]);
        assert_eq!(run(&mut txn, t0), vec![(5700, Action::Terminated)]);
    }

    #[test]
    fn reliable_transport_never_retransmits_and_skips_completed() {
        let (mut txn, t0) = start(Reliability::Reliable);
        assert_eq!(txn.next_deadline(), Some(t0 + 32000 * MS));
        assert_eq!(
            txn.on_response(t0 + MS, 404, "404"),
            vec![Action::PassToTu("404"), Action::Terminated]
        );
        assert_eq!(txn.state(), State::Terminated);
        assert_eq!(txn.next_deadline(), None);

        let (mut txn, t0) = start(Reliability::Reliable);
        assert_eq!(
            run(&mut txn, t0),
            vec![
                (32000, Action::Timeout(TimerKind::F)),
                (32000, Action::Terminated)
            ]
        );
    }

    #[test]
    fn transport_errors() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(
            txn.on_transport_error(),
            vec![Action::TransportError, Action::Terminated]
        );
        let (mut txn, _) = start(Reliability::Unreliable);
        txn.on_response(t0 + MS, 180, "180");
        assert_eq!(
            txn.on_transport_error(),
            vec![Action::TransportError, Action::Terminated]
        );
        let (mut txn, _) = start(Reliability::Unreliable);
        txn.on_response(t0 + MS, 200, "200");
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(txn.state(), State::Completed);
    }
}
