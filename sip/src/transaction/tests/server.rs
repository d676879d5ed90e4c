//! Server transactions on the paused clock: 100 Trying, response retransmission on Timer G,
//! the ACK wait, Accepted, and absorbing request retransmissions.

use super::{now, resends, send, timeline, Driver, Msg};
use crate::transaction::table::TIMER_J_SLACK;
use crate::transaction::{Action, Reliability, ServerKey, State, TimerKind, TransactionKey};

fn invite_key() -> ServerKey {
    ServerKey::new("z9hG4bKsrv1", "10.0.0.7:5060", "INVITE").unwrap()
}

fn register_key() -> ServerKey {
    ServerKey::new("z9hG4bKreg1", "10.0.0.7:5060", "REGISTER").unwrap()
}

fn state(driver: &Driver, key: &ServerKey) -> Option<State> {
    let key = TransactionKey::Server(key.clone());
    driver.table.get(&key).map(|t| t.state())
}

fn trying() -> Action<Msg> {
    Action::SendTrying { request: "INVITE" }
}

/// A received request: the way the transport layer routes it.
fn receive(
    driver: &mut Driver,
    key: &ServerKey,
    method: &str,
    msg: Msg,
) -> Option<Vec<Action<Msg>>> {
    driver.table.on_request(key, method, msg, now())
}

fn start(driver: &mut Driver, key: &ServerKey, rel: Reliability, request: Msg) {
    assert_eq!(
        receive(driver, key, "INVITE", request),
        None,
        "a new request"
    );
    let actions = driver
        .table
        .start_server(key.clone(), rel, request, now())
        .unwrap();
    assert_eq!(actions, vec![]);
}

#[tokio::test(start_paused = true)]
async fn invite_gets_100_trying_at_200_ms_when_the_tu_is_silent() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Unreliable, "INVITE");
    assert_eq!(d.table.counts().server_invite, 1);
    let fired = d.run_until(1000).await;
    assert_eq!(timeline(fired), vec![(200, trying())]);
    // The driver builds the 100 (it would have done so at 200 ms) and hands it back.
    assert_eq!(
        d.table.respond(&key, 100, "100", now()),
        Ok(vec![send("100", false)])
    );
    // A retransmitted INVITE gets the 100 again.
    assert_eq!(
        receive(&mut d, &key, "INVITE", "INVITE"),
        Some(vec![send("100", true)])
    );
}

#[tokio::test(start_paused = true)]
async fn no_100_trying_when_the_tu_answers_within_200_ms() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Unreliable, "INVITE");
    d.run_until(150).await;
    assert_eq!(
        d.table.respond(&key, 180, "180", now()),
        Ok(vec![send("180", false)])
    );
    assert_eq!(d.run_until(10_000).await, vec![]);
    assert_eq!(
        receive(&mut d, &key, "INVITE", "INVITE"),
        Some(vec![send("180", true)])
    );
}

#[tokio::test(start_paused = true)]
async fn failure_is_retransmitted_on_timer_g_capped_at_t2_until_timer_h() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Unreliable, "INVITE");
    d.run_until(100).await;
    assert_eq!(
        d.table.respond(&key, 486, "486", now()),
        Ok(vec![send("486", false)])
    );
    assert_eq!(state(&d, &key), Some(State::Completed));
    let mut expected = resends(
        "486",
        &[
            600, 1600, 3600, 7600, 11600, 15600, 19600, 23600, 27600, 31600,
        ],
    );
    expected.push((32100, Action::Timeout(TimerKind::H)));
    expected.push((32100, Action::Terminated));
    assert_eq!(timeline(d.run_until(60_000).await), expected);
    assert!(d.table.is_empty());
}

#[tokio::test(start_paused = true)]
async fn ack_stops_timer_g_and_timer_i_ends_confirmed() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Unreliable, "INVITE");
    d.run_until(100).await;
    d.table.respond(&key, 404, "404", now()).unwrap();
    assert_eq!(
        timeline(d.run_until(2000).await),
        resends("404", &[600, 1600])
    );
    // A retransmitted INVITE in Completed gets the final response again.
    assert_eq!(
        receive(&mut d, &key, "INVITE", "INVITE"),
        Some(vec![send("404", true)])
    );
    // The ACK carries the INVITE's key: it confirms the transaction, and is not passed up.
    let ack_key = ServerKey::new("z9hG4bKsrv1", "10.0.0.7:5060", "ACK").unwrap();
    assert_eq!(receive(&mut d, &ack_key, "ACK", "ACK"), Some(vec![]));
    assert_eq!(state(&d, &key), Some(State::Confirmed));
    // ACK and INVITE retransmissions are absorbed; Timer I (T4 = 5 s) ends it.
    d.run_until(3000).await;
    assert_eq!(receive(&mut d, &ack_key, "ACK", "ACK"), Some(vec![]));
    assert_eq!(receive(&mut d, &key, "INVITE", "INVITE"), Some(vec![]));
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![(7000, Action::Terminated)]
    );
}

#[tokio::test(start_paused = true)]
async fn failure_over_tcp_is_not_retransmitted_and_the_ack_ends_it() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Reliable, "INVITE");
    d.run_until(100).await;
    d.table.respond(&key, 480, "480", now()).unwrap();
    assert_eq!(d.run_until(10_000).await, vec![]);
    assert_eq!(
        receive(&mut d, &key, "ACK", "ACK"),
        Some(vec![Action::Terminated])
    );
    assert!(d.table.is_empty());
}

#[tokio::test(start_paused = true)]
async fn failure_over_tcp_without_ack_times_out_on_timer_h() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Reliable, "INVITE");
    d.run_until(100).await;
    d.table.respond(&key, 480, "480", now()).unwrap();
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![
            (32100, Action::Timeout(TimerKind::H)),
            (32100, Action::Terminated)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn success_is_accepted_and_absorbs_invite_retransmissions_until_timer_l() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Unreliable, "INVITE");
    d.run_until(300).await;
    d.table.respond(&key, 100, "100", now()).unwrap();
    d.run_until(3000).await;
    assert_eq!(
        d.table.respond(&key, 200, "200", now()),
        Ok(vec![send("200", false)])
    );
    assert_eq!(state(&d, &key), Some(State::Accepted));
    // The UAC had not heard the 200 yet and retransmits the INVITE: absorbed, not a new call.
    assert_eq!(receive(&mut d, &key, "INVITE", "INVITE"), Some(vec![]));
    // The TU retransmits its 2xx (§13.3.1.4) through the transaction.
    assert_eq!(d.run_until(3500).await, vec![]);
    assert_eq!(
        d.table.respond(&key, 200, "200", now()),
        Ok(vec![send("200", false)])
    );
    // An ACK matching the transaction goes to the TU.
    assert_eq!(
        receive(&mut d, &key, "ACK", "ACK"),
        Some(vec![Action::PassToTu("ACK")])
    );
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![(35000, Action::Terminated)]
    );
    // Now an INVITE with that branch would be new.
    assert_eq!(receive(&mut d, &key, "INVITE", "INVITE"), None);
}

#[tokio::test(start_paused = true)]
async fn server_invite_keeps_its_state_on_transport_error() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, &key, Reliability::Unreliable, "INVITE");
    d.run_until(100).await;
    d.table.respond(&key, 503, "503", now()).unwrap();
    assert_eq!(
        d.table.on_transport_error(&key.clone().into()),
        Some(vec![Action::TransportError])
    );
    assert_eq!(state(&d, &key), Some(State::Completed));
    let fired = timeline(d.run_until(60_000).await);
    assert_eq!(fired.first(), Some(&(600, send("503", true))));
    assert_eq!(fired.last(), Some(&(32100, Action::Terminated)));
}

#[tokio::test(start_paused = true)]
async fn non_invite_absorbs_retransmissions_and_ends_on_timer_j() {
    let mut d = Driver::new(10);
    let key = register_key();
    assert_eq!(receive(&mut d, &key, "REGISTER", "REGISTER"), None);
    d.table
        .start_server(key.clone(), Reliability::Unreliable, "REGISTER", now())
        .unwrap();
    assert_eq!(d.table.counts().server_non_invite, 1);
    // No 100 Trying for a non-INVITE; retransmissions before any response are absorbed.
    assert_eq!(d.run_until(500).await, vec![]);
    assert_eq!(receive(&mut d, &key, "REGISTER", "REGISTER"), Some(vec![]));
    d.run_until(700).await;
    assert_eq!(
        d.table.respond(&key, 100, "100", now()),
        Ok(vec![send("100", false)])
    );
    assert_eq!(state(&d, &key), Some(State::Proceeding));
    assert_eq!(
        receive(&mut d, &key, "REGISTER", "REGISTER"),
        Some(vec![send("100", true)])
    );
    d.run_until(1000).await;
    assert_eq!(
        d.table.respond(&key, 200, "200", now()),
        Ok(vec![send("200", false)])
    );
    assert_eq!(d.table.respond(&key, 500, "500", now()), Ok(vec![]));
    d.run_until(20_000).await;
    assert_eq!(
        receive(&mut d, &key, "REGISTER", "REGISTER"),
        Some(vec![send("200", true)])
    );
    // Timer J (32 s from the 200 at 1 s) fires within its slack.
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![(
            33_000 + TIMER_J_SLACK.as_millis() as u64,
            Action::Terminated
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn non_invite_over_tcp_ends_on_the_final_response() {
    let mut d = Driver::new(10);
    let key = register_key();
    d.table
        .start_server(key.clone(), Reliability::Reliable, "REGISTER", now())
        .unwrap();
    d.run_until(30).await;
    assert_eq!(
        d.table.respond(&key, 401, "401", now()),
        Ok(vec![send("401", false), Action::Terminated])
    );
    assert!(d.table.is_empty());
    assert_eq!(d.run_until(60_000).await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn non_invite_transport_error_ends_it() {
    let mut d = Driver::new(10);
    let key = register_key();
    d.table
        .start_server(key.clone(), Reliability::Unreliable, "REGISTER", now())
        .unwrap();
    d.table.respond(&key, 200, "200", now()).unwrap();
    assert_eq!(
        d.table.on_transport_error(&key.into()),
        Some(vec![Action::TransportError, Action::Terminated])
    );
    assert!(d.table.is_empty());
}
