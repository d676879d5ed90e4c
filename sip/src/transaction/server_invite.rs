//! The INVITE server transaction (RFC 3261 §17.2.1, with RFC 6026 §7.1).
//!
//! ```text
//!   Proceeding ──300-699 from TU──▶ Completed ──ACK──▶ Confirmed ──Timer I──▶ Terminated
//!       │                               └──Timer H (timeout)──────────────────▶ Terminated
//!       └──2xx from TU──▶ Accepted ──Timer L──▶ Terminated
//! ```
//!
//! - Proceeding: the INVITE went to the TU when the transaction was created. If the TU has
//!   sent nothing after 200 ms the machine asks for a 100 (Trying) ([`Action::SendTrying`]).
//!   A retransmitted INVITE gets the latest provisional response again (or, before any, a
//!   request for a 100 at once).
//! - Completed: the non-2xx final is retransmitted on Timer G (T1, doubling, capped at T2;
//!   unreliable only) and on every retransmitted INVITE, until the ACK arrives or Timer H
//!   (64*T1) gives up and reports [`Action::Timeout`].
//! - Confirmed: ACK retransmissions are absorbed until Timer I (T4; 0 on reliable).
//! - Accepted (RFC 6026): the 2xx was sent. The transaction does not retransmit it: the TU
//!   (UAS core, or a proxy forwarding 2xx retransmissions from downstream) does, through
//!   [`respond`](ServerInvite::respond), and the machine sends them. Retransmitted INVITEs are
//!   absorbed; ACKs are passed to the TU. Timer L (64*T1) ends it.
//! - Transport errors are reported to the TU and the state is kept (RFC 6026 §7.1: a server
//!   INVITE transaction must not drop its state on a transport error; its timers end it).

use std::time::Instant;

use super::timers::{earliest, Config, Deadline, Retransmit, TimerKind};
use super::{Action, Reliability, State, StatusClass};

/// An INVITE server transaction. States: Proceeding, Completed, Confirmed, Accepted,
/// Terminated.
#[derive(Debug, Clone)]
pub struct ServerInvite<M> {
    config: Config,
    reliability: Reliability,
    state: State,
    request: M,
    /// The latest provisional response the TU sent, for INVITE retransmissions.
    provisional: Option<M>,
    /// The non-2xx final response, for Timer G and INVITE retransmissions.
    final_response: Option<M>,
    /// When to ask for a 100 (Trying), until the TU sends anything.
    trying: Option<Instant>,
    /// Timer G, in Completed over unreliable transports.
    timer_g: Option<Retransmit>,
    /// Timer H in Completed, I in Confirmed, L in Accepted.
    deadline: Option<Deadline>,
}

impl<M: Clone> ServerInvite<M> {
    /// Creates the transaction for a newly received INVITE, in Proceeding. The caller passes
    /// the INVITE to the TU itself. The only possible action is [`Action::SendTrying`], when
    /// the configured Trying delay is zero.
    pub fn new(
        config: Config,
        reliability: Reliability,
        request: M,
        now: Instant,
    ) -> (Self, Vec<Action<M>>) {
        let config = config.sanitized();
        let mut out = Vec::new();
        let trying = match config.initial(TimerKind::Trying, reliability) {
            Some(d) if !d.is_zero() => Some(now + d),
            _ => {
                out.push(Action::SendTrying {
                    request: request.clone(),
                });
                None
            }
        };
        let txn = ServerInvite {
            config,
            reliability,
            state: State::Proceeding,
            request,
            provisional: None,
            final_response: None,
            trying,
            timer_g: None,
            deadline: None,
        };
        (txn, out)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The INVITE that created the transaction.
    pub fn request(&self) -> &M {
        &self.request
    }

    /// When the machine next wants [`on_timer`](Self::on_timer), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        earliest([
            self.trying,
            self.timer_g.map(|t| t.at),
            self.deadline.map(|d| d.at),
        ])
    }

    /// The TU sends a response with this status code. Responses the state does not allow (a
    /// provisional or non-2xx after a final, a second non-2xx) are discarded (§17.2.1).
    pub fn respond(&mut self, now: Instant, status: u16, response: M) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match (self.state, StatusClass::of(status)) {
            (State::Proceeding, StatusClass::Provisional) => {
                self.trying = None;
                self.provisional = Some(response.clone());
                out.push(send(response, false));
            }
            (State::Proceeding, StatusClass::Success) => {
                self.trying = None;
                self.state = State::Accepted;
                let timer_l = self.config.transaction_timeout();
                self.deadline = Some(Deadline::after(TimerKind::L, now, timer_l));
                out.push(send(response, false));
            }
            (State::Proceeding, StatusClass::Failure) => {
                self.trying = None;
                self.state = State::Completed;
                self.final_response = Some(response.clone());
                self.timer_g = self
                    .config
                    .initial(TimerKind::G, self.reliability)
                    .map(|d| Retransmit::start(now, d));
                let timer_h = self.config.transaction_timeout();
                self.deadline = Some(Deadline::after(TimerKind::H, now, timer_h));
                out.push(send(response, false));
            }
            // A 2xx retransmission (or another 2xx, for a forking proxy) from the TU.
            (State::Accepted, StatusClass::Success) => out.push(send(response, false)),
            _ => {}
        }
        out
    }

    /// A retransmission of the INVITE arrived.
    pub fn on_invite(&mut self) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match self.state {
            State::Proceeding => match &self.provisional {
                Some(provisional) => out.push(send(provisional.clone(), true)),
                None => {
                    // The UAC is retransmitting because it has heard nothing: a 100 now.
                    self.trying = None;
                    out.push(Action::SendTrying {
                        request: self.request.clone(),
                    });
                }
            },
            State::Completed => {
                if let Some(response) = &self.final_response {
                    out.push(send(response.clone(), true));
                }
            }
            // Confirmed and Accepted absorb it.
            _ => {}
        }
        out
    }

    /// An ACK matching this transaction arrived.
    pub fn on_ack(&mut self, now: Instant, ack: M) -> Vec<Action<M>> {
        let mut out = Vec::new();
        match self.state {
            State::Completed => {
                self.timer_g = None;
                self.state = State::Confirmed;
                match self.config.initial(TimerKind::I, self.reliability) {
                    Some(d) if !d.is_zero() => {
                        self.deadline = Some(Deadline::after(TimerKind::I, now, d));
                    }
                    _ => self.terminate(&mut out),
                }
            }
            State::Accepted => out.push(Action::PassToTu(ack)),
            // An ACK before any final response, or a retransmitted one in Confirmed.
            _ => {}
        }
        out
    }

    /// Fires the timers due at `now`, if any.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action<M>> {
        let mut out = Vec::new();
        if let Some(deadline) = self.deadline.filter(|d| d.due(now)) {
            if deadline.kind == TimerKind::H {
                out.push(Action::Timeout(TimerKind::H));
            }
            self.terminate(&mut out);
            return out;
        }
        if self.trying.is_some_and(|at| at <= now) {
            self.trying = None;
            out.push(Action::SendTrying {
                request: self.request.clone(),
            });
        }
        let t2 = self.config.t2;
        if let Some(timer_g) = self.timer_g.as_mut().filter(|t| t.due(now)) {
            let next = (timer_g.interval * 2).min(t2);
            timer_g.rearm(now, next);
            if let Some(response) = &self.final_response {
                out.push(send(response.clone(), true));
            }
        }
        out
    }

    /// The transport could not send a response (§17.2.4). The TU is told; the state is kept,
    /// so retransmitted INVITEs are still recognised (RFC 6026 §7.1).
    pub fn on_transport_error(&mut self) -> Vec<Action<M>> {
        if self.state == State::Terminated {
            Vec::new()
        } else {
            vec![Action::TransportError]
        }
    }

    fn terminate(&mut self, out: &mut Vec<Action<M>>) {
        self.state = State::Terminated;
        self.trying = None;
        self.timer_g = None;
        self.deadline = None;
        out.push(Action::Terminated);
    }
}

fn send<M>(message: M, retransmission: bool) -> Action<M> {
    Action::Send {
        message,
        retransmission,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    type Txn = ServerInvite<&'static str>;

    fn start(rel: Reliability) -> (Txn, Instant) {
        let t0 = Instant::now();
        let (txn, actions) = ServerInvite::new(Config::default(), rel, "INVITE", t0);
        assert_eq!(actions, vec![]);
        assert_eq!(txn.state(), State::Proceeding);
        (txn, t0)
    }

    fn run(txn: &mut Txn, t0: Instant) -> Vec<(u128, Action<&'static str>)> {
        let mut fired = Vec::new();
        while let Some(at) = txn.next_deadline() {
            for action in txn.on_timer(at) {
                fired.push(((at - t0).as_millis(), action));
            }
        }
        fired
    }

    fn trying() -> Action<&'static str> {
        Action::SendTrying { request: "INVITE" }
    }

    #[test]
    fn asks_for_100_trying_after_200_ms() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(txn.next_deadline(), Some(t0 + 200 * MS));
        assert_eq!(txn.on_timer(t0 + 199 * MS), vec![]);
        assert_eq!(txn.on_timer(t0 + 200 * MS), vec![trying()]);
        assert_eq!(txn.next_deadline(), None);
        // The driver builds the 100 and hands it back; INVITE retransmissions get it again.
        assert_eq!(
            txn.respond(t0 + 200 * MS, 100, "100"),
            vec![send("100", false)]
        );
        assert_eq!(txn.on_invite(), vec![send("100", true)]);
    }

    #[test]
    fn no_100_trying_when_the_tu_answers_first() {
        let (mut txn, t0) = start(Reliability::Reliable);
        assert_eq!(
            txn.respond(t0 + 150 * MS, 180, "180"),
            vec![send("180", false)]
        );
        assert_eq!(txn.next_deadline(), None);
        assert_eq!(txn.on_timer(t0 + 200 * MS), vec![]);
        assert_eq!(
            txn.respond(t0 + 300 * MS, 183, "183"),
            vec![send("183", false)]
        );
        assert_eq!(txn.on_invite(), vec![send("183", true)]);
    }

    #[test]
    fn early_retransmission_gets_100_trying_at_once() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(txn.on_invite(), vec![trying()]);
        assert_eq!(txn.next_deadline(), None);
        assert_eq!(txn.on_timer(t0 + 200 * MS), vec![]);
    }

    #[test]
    fn zero_trying_delay_asks_at_creation() {
        let config = Config {
            trying_delay: Duration::ZERO,
            ..Config::default()
        };
        let (txn, actions) =
            ServerInvite::new(config, Reliability::Unreliable, "INVITE", Instant::now());
        assert_eq!(actions, vec![trying()]);
        assert_eq!(txn.next_deadline(), None);
    }

    #[test]
    fn failure_is_retransmitted_on_timer_g_until_timer_h() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(txn.respond(t0, 486, "486"), vec![send("486", false)]);
        assert_eq!(txn.state(), State::Completed);
        let mut expected: Vec<_> = [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
        ]
        .into_iter()
        .map(|ms| (ms, send("486", true)))
        .collect();
        expected.push((32000, Action::Timeout(TimerKind::H)));
        expected.push((32000, Action::Terminated));
        assert_eq!(run(&mut txn, t0), expected);
    }

    #[test]
    fn ack_confirms_and_timer_i_ends() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        txn.respond(t0, 404, "404");
        assert_eq!(txn.on_invite(), vec![send("404", true)]);
        assert_eq!(txn.respond(t0 + MS, 500, "500"), vec![]);
        assert_eq!(txn.respond(t0 + MS, 180, "180"), vec![]);
        assert_eq!(txn.on_timer(t0 + 500 * MS), vec![send("404", true)]);
        let at = t0 + 800 * MS;
        assert_eq!(txn.on_ack(at, "ACK"), vec![]);
        assert_eq!(txn.state(), State::Confirmed);
        // Timer G stopped; ACK and INVITE retransmissions are absorbed.
        assert_eq!(txn.next_deadline(), Some(at + Duration::from_secs(5)));
        assert_eq!(txn.on_ack(at + MS, "ACK"), vec![]);
        assert_eq!(txn.on_invite(), vec![]);
        assert_eq!(run(&mut txn, t0), vec![(5800, Action::Terminated)]);
    }

    #[test]
    fn reliable_transport_never_retransmits_and_skips_confirmed() {
        let (mut txn, t0) = start(Reliability::Reliable);
        txn.respond(t0, 603, "603");
        assert_eq!(txn.next_deadline(), Some(t0 + 32000 * MS));
        assert_eq!(txn.on_ack(t0 + MS, "ACK"), vec![Action::Terminated]);
        assert_eq!(txn.state(), State::Terminated);

        let (mut txn, t0) = start(Reliability::Reliable);
        txn.respond(t0, 603, "603");
        assert_eq!(
            run(&mut txn, t0),
            vec![
                (32000, Action::Timeout(TimerKind::H)),
                (32000, Action::Terminated)
            ]
        );
    }

    #[test]
    fn success_enters_accepted_until_timer_l() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        txn.respond(t0 + 10 * MS, 180, "180");
        let at = t0 + 1000 * MS;
        assert_eq!(txn.respond(at, 200, "200"), vec![send("200", false)]);
        assert_eq!(txn.state(), State::Accepted);
        assert_eq!(txn.next_deadline(), Some(at + Duration::from_secs(32)));
        // The transaction does not retransmit the 2xx; the TU does, through it.
        assert_eq!(txn.on_timer(at + 500 * MS), vec![]);
        assert_eq!(
            txn.respond(at + 500 * MS, 200, "200"),
            vec![send("200", false)]
        );
        // INVITE retransmissions are absorbed; ACKs and transport errors go to the TU.
        assert_eq!(txn.on_invite(), vec![]);
        assert_eq!(txn.on_ack(at + MS, "ACK"), vec![Action::PassToTu("ACK")]);
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(txn.state(), State::Accepted);
        assert_eq!(txn.respond(at + MS, 486, "486"), vec![]);
        assert_eq!(run(&mut txn, t0), vec![(33000, Action::Terminated)]);
    }

    #[test]
    fn transport_error_keeps_the_state() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        txn.respond(t0, 180, "180");
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(txn.state(), State::Proceeding);
        txn.respond(t0, 480, "480");
        assert_eq!(txn.on_transport_error(), vec![Action::TransportError]);
        assert_eq!(txn.state(), State::Completed);
        assert_eq!(txn.on_invite(), vec![send("480", true)]);
    }

    #[test]
    fn ack_before_a_final_response_is_ignored() {
        let (mut txn, t0) = start(Reliability::Unreliable);
        assert_eq!(txn.on_ack(t0, "ACK"), vec![]);
        assert_eq!(txn.state(), State::Proceeding);
        assert_eq!(txn.respond(t0, 42, "bad"), vec![]);
    }
}
