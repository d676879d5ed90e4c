//! Client transactions on the paused clock: retransmission schedules, timeouts, and the
//! Completed and Accepted states.

use super::{now, resends, send, timeline, Driver, Msg};
use crate::transaction::{
    Action, ClientKey, Config, Kind, Reliability, State, TimerKind, TransactionKey,
};
use std::time::Duration;

fn invite_key() -> ClientKey {
    ClientKey::new("z9hG4bKinv1", "INVITE").unwrap()
}

fn bye_key() -> ClientKey {
    ClientKey::new("z9hG4bKbye1", "BYE").unwrap()
}

fn state(driver: &Driver, key: &ClientKey) -> Option<State> {
    let key = TransactionKey::Client(key.clone());
    driver.table.get(&key).map(|t| t.state())
}

fn ack(response: Msg) -> Action<Msg> {
    Action::SendAck {
        request: "INVITE",
        response,
    }
}

async fn start(driver: &mut Driver, key: ClientKey, rel: Reliability, request: Msg) {
    let actions = driver.table.start_client(key, rel, request, now()).unwrap();
    assert_eq!(actions, vec![send(request, false)]);
}

#[tokio::test(start_paused = true)]
async fn invite_over_udp_retransmits_on_timer_a_until_timer_b() {
    let mut d = Driver::new(10);
    start(&mut d, invite_key(), Reliability::Unreliable, "INVITE").await;
    assert_eq!(d.table.counts().client_invite, 1);
    let mut expected = resends("INVITE", &[500, 1500, 3500, 7500, 15500, 31500]);
    expected.push((32000, Action::Timeout(TimerKind::B)));
    expected.push((32000, Action::Terminated));
    assert_eq!(timeline(d.run_until(60_000).await), expected);
    assert!(d.table.is_empty());
    assert_eq!(d.table.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn timer_a_follows_a_configured_t1() {
    let config = Config {
        t1: Duration::from_millis(100),
        ..Config::default()
    };
    let mut d = Driver::with_config(config, 10);
    start(&mut d, invite_key(), Reliability::Unreliable, "INVITE").await;
    let mut expected = resends("INVITE", &[100, 300, 700, 1500, 3100, 6300]);
    expected.push((6400, Action::Timeout(TimerKind::B)));
    expected.push((6400, Action::Terminated));
    assert_eq!(timeline(d.run_until(10_000).await), expected);
}

#[tokio::test(start_paused = true)]
async fn invite_over_tcp_never_retransmits() {
    let mut d = Driver::new(10);
    start(&mut d, invite_key(), Reliability::Reliable, "INVITE").await;
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![
            (32000, Action::Timeout(TimerKind::B)),
            (32000, Action::Terminated)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn provisional_stops_retransmissions_and_timer_b() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, key.clone(), Reliability::Unreliable, "INVITE").await;
    assert_eq!(timeline(d.run_until(1000).await), resends("INVITE", &[500]));
    let actions = d.table.on_response(&key, 180, "180", now()).unwrap();
    assert_eq!(actions, vec![Action::PassToTu("180")]);
    // Ringing for five minutes: nothing fires, the transaction stays in Proceeding.
    assert_eq!(d.run_until(300_000).await, vec![]);
    assert_eq!(state(&d, &key), Some(State::Proceeding));
    assert_eq!(d.table.next_deadline(), None);
}

#[tokio::test(start_paused = true)]
async fn failure_is_acked_on_every_retransmission_until_timer_d() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, key.clone(), Reliability::Unreliable, "INVITE").await;
    d.run_until(200).await;
    assert_eq!(
        d.table.on_response(&key, 100, "100", now()),
        Some(vec![Action::PassToTu("100")])
    );
    d.run_until(4000).await;
    assert_eq!(
        d.table.on_response(&key, 486, "486", now()),
        Some(vec![Action::PassToTu("486"), ack("486")])
    );
    assert_eq!(state(&d, &key), Some(State::Completed));
    // The UAS did not get the ACK and retransmits the 486: ACK again, nothing to the TU.
    d.run_until(4500).await;
    assert_eq!(
        d.table.on_response(&key, 486, "486", now()),
        Some(vec![ack("486")])
    );
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![(36000, Action::Terminated)]
    );
    assert_eq!(d.table.on_response(&key, 486, "486", now()), None);
}

#[tokio::test(start_paused = true)]
async fn failure_over_tcp_ends_at_once() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, key.clone(), Reliability::Reliable, "INVITE").await;
    d.run_until(50).await;
    assert_eq!(
        d.table.on_response(&key, 404, "404", now()),
        Some(vec![
            Action::PassToTu("404"),
            ack("404"),
            Action::Terminated
        ])
    );
    assert!(d.table.is_empty());
}

#[tokio::test(start_paused = true)]
async fn success_is_accepted_and_2xx_retransmissions_reach_the_tu_until_timer_m() {
    let mut d = Driver::new(10);
    let key = invite_key();
    start(&mut d, key.clone(), Reliability::Unreliable, "INVITE").await;
    d.run_until(2000).await;
    assert_eq!(
        d.table.on_response(&key, 200, "200", now()),
        Some(vec![Action::PassToTu("200")])
    );
    assert_eq!(state(&d, &key), Some(State::Accepted));
    // The 2xx retransmissions of the UAS (and 2xx from other forks) all go to the TU, which
    // sends the ACKs; the transaction never does, and never retransmits the INVITE again.
    for at in [2500, 3500, 5500] {
        assert_eq!(d.run_until(at).await, vec![]);
        assert_eq!(
            d.table.on_response(&key, 200, "200", now()),
            Some(vec![Action::PassToTu("200")])
        );
    }
    assert_eq!(d.table.on_response(&key, 503, "503", now()), Some(vec![]));
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![(34000, Action::Terminated)]
    );
    // After Timer M a late 2xx is a stray response.
    assert_eq!(d.table.on_response(&key, 200, "200", now()), None);
}

#[tokio::test(start_paused = true)]
async fn non_invite_over_udp_retransmits_on_timer_e_capped_at_t2_until_timer_f() {
    let mut d = Driver::new(10);
    start(&mut d, bye_key(), Reliability::Unreliable, "BYE").await;
    assert_eq!(d.table.counts().client_non_invite, 1);
    let mut expected = resends(
        "BYE",
        &[
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
        ],
    );
    expected.push((32000, Action::Timeout(TimerKind::F)));
    expected.push((32000, Action::Terminated));
    assert_eq!(timeline(d.run_until(60_000).await), expected);
    assert!(d.table.is_empty());
}

#[tokio::test(start_paused = true)]
async fn non_invite_in_proceeding_retransmits_every_t2() {
    let mut d = Driver::new(10);
    let key = bye_key();
    start(&mut d, key.clone(), Reliability::Unreliable, "BYE").await;
    assert_eq!(timeline(d.run_until(600).await), resends("BYE", &[500]));
    assert_eq!(
        d.table.on_response(&key, 100, "100", now()),
        Some(vec![Action::PassToTu("100")])
    );
    let mut expected = resends(
        "BYE",
        &[1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500],
    );
    expected.push((32000, Action::Timeout(TimerKind::F)));
    expected.push((32000, Action::Terminated));
    assert_eq!(timeline(d.run_until(60_000).await), expected);
}

#[tokio::test(start_paused = true)]
async fn non_invite_final_absorbs_retransmissions_until_timer_k() {
    let mut d = Driver::new(10);
    let key = bye_key();
    start(&mut d, key.clone(), Reliability::Unreliable, "BYE").await;
    d.run_until(800).await;
    assert_eq!(
        d.table.on_response(&key, 200, "200", now()),
        Some(vec![Action::PassToTu("200")])
    );
    assert_eq!(state(&d, &key), Some(State::Completed));
    d.run_until(1000).await;
    assert_eq!(d.table.on_response(&key, 200, "200", now()), Some(vec![]));
    // No more retransmissions of the BYE; Timer K (T4 = 5 s) ends it.
    assert_eq!(
        timeline(d.run_until(60_000).await),
        vec![(5800, Action::Terminated)]
    );
}

#[tokio::test(start_paused = true)]
async fn non_invite_over_tcp_never_retransmits_and_ends_on_the_final() {
    let mut d = Driver::new(10);
    let key = bye_key();
    start(&mut d, key.clone(), Reliability::Reliable, "BYE").await;
    assert_eq!(d.run_until(20_000).await, vec![]);
    assert_eq!(
        d.table.on_response(&key, 481, "481", now()),
        Some(vec![Action::PassToTu("481"), Action::Terminated])
    );
    assert!(d.table.is_empty());
}

#[tokio::test(start_paused = true)]
async fn transport_error_ends_a_client_transaction() {
    let mut d = Driver::new(10);
    let invite = invite_key();
    let bye = bye_key();
    start(&mut d, invite.clone(), Reliability::Unreliable, "INVITE").await;
    start(&mut d, bye.clone(), Reliability::Unreliable, "BYE").await;
    assert_eq!(d.table.len(), 2);
    d.run_until(700).await;
    assert_eq!(
        d.table.on_transport_error(&invite.clone().into()),
        Some(vec![Action::TransportError, Action::Terminated])
    );
    assert_eq!(
        d.table.on_transport_error(&bye.clone().into()),
        Some(vec![Action::TransportError, Action::Terminated])
    );
    assert!(d.table.is_empty());
    assert_eq!(d.table.on_transport_error(&invite.into()), None);
    assert_eq!(d.run_until(60_000).await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn cancel_is_a_client_transaction_of_its_own() {
    let mut d = Driver::new(10);
    let invite = invite_key();
    let cancel = ClientKey::new(invite.branch(), "CANCEL").unwrap();
    start(&mut d, invite.clone(), Reliability::Unreliable, "INVITE").await;
    d.run_until(1000).await;
    d.table.on_response(&invite, 180, "180", now());
    start(&mut d, cancel.clone(), Reliability::Unreliable, "CANCEL").await;
    let kind = |k: &ClientKey| d.table.get(&k.clone().into()).map(|t| t.kind());
    assert_eq!(kind(&invite), Some(Kind::ClientInvite));
    assert_eq!(kind(&cancel), Some(Kind::ClientNonInvite));
    // The 200 to the CANCEL and the 487 to the INVITE each find their own transaction.
    d.run_until(1100).await;
    assert_eq!(
        d.table.on_response(&cancel, 200, "200/CANCEL", now()),
        Some(vec![Action::PassToTu("200/CANCEL")])
    );
    assert_eq!(
        d.table.on_response(&invite, 487, "487", now()),
        Some(vec![Action::PassToTu("487"), ack("487")])
    );
    assert_eq!(
        d.run_until(60_000).await,
        vec![
            (6100, cancel.into(), Action::Terminated),
            (33100, invite.into(), Action::Terminated)
        ]
    );
}
