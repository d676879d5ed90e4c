//! The table itself: bound, duplicates, routing of unmatched messages, CANCEL finding its
//! INVITE, timers of many transactions in order, and a timer heap that stays bounded.

use super::{now, send, Driver};
use crate::transaction::{
    Action, ClientKey, Counts, Kind, Reliability, ServerKey, State, TableError, TimerKind,
    TransactionKey,
};

fn server_key(n: usize, method: &str) -> ServerKey {
    ServerKey::new(&format!("z9hG4bK{n}"), "192.0.2.1:5060", method).unwrap()
}

fn client_key(n: usize, method: &str) -> ClientKey {
    ClientKey::new(&format!("z9hG4bKc{n}"), method).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_full_table_refuses_until_a_transaction_ends() {
    let mut d = Driver::new(2);
    let udp = Reliability::Unreliable;
    d.table
        .start_server(server_key(1, "REGISTER"), udp, "R1", now())
        .unwrap();
    d.table
        .start_client(client_key(2, "OPTIONS"), udp, "O2", now())
        .unwrap();
    assert_eq!(d.table.len(), 2);
    assert_eq!(
        d.table
            .start_server(server_key(3, "INVITE"), udp, "I3", now()),
        Err(TableError::Full { max: 2 })
    );
    assert_eq!(
        d.table
            .start_client(client_key(3, "INVITE"), udp, "I3", now()),
        Err(TableError::Full { max: 2 })
    );
    assert_eq!(
        TableError::Full { max: 2 }.to_string(),
        "transaction table full (2 live)"
    );
    // The REGISTER is answered and lingers for Timer J (UDP); the OPTIONS times out on F.
    d.table
        .respond(&server_key(1, "REGISTER"), 200, "200", now())
        .unwrap();
    d.run_until(32_000).await;
    assert!(d.table.is_empty());
    d.table
        .start_server(server_key(3, "INVITE"), udp, "I3", now())
        .unwrap();
    assert_eq!(d.table.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn counts_follow_each_kind() {
    let mut d = Driver::new(100);
    let tcp = Reliability::Reliable;
    d.table
        .start_client(client_key(1, "INVITE"), tcp, "a", now())
        .unwrap();
    d.table
        .start_client(client_key(2, "BYE"), tcp, "b", now())
        .unwrap();
    d.table
        .start_client(client_key(3, "CANCEL"), tcp, "c", now())
        .unwrap();
    d.table
        .start_server(server_key(4, "INVITE"), tcp, "d", now())
        .unwrap();
    d.table
        .start_server(server_key(5, "OPTIONS"), tcp, "e", now())
        .unwrap();
    let counts = Counts {
        client_invite: 1,
        client_non_invite: 2,
        server_invite: 1,
        server_non_invite: 1,
    };
    assert_eq!(d.table.counts(), counts);
    assert_eq!(d.table.len(), 5);
    let removed = d.table.remove(&client_key(2, "BYE").into()).unwrap();
    assert_eq!(removed.kind(), Kind::ClientNonInvite);
    assert_eq!(removed.request(), &"b");
    assert_eq!(d.table.counts().client_non_invite, 1);
    assert_eq!(
        d.table
            .remove(&client_key(2, "BYE").into())
            .map(|t| t.kind()),
        None
    );
    assert_eq!(d.table.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn duplicates_and_ack_client_transactions_are_refused() {
    let mut d = Driver::new(10);
    let udp = Reliability::Unreliable;
    d.table
        .start_client(client_key(1, "INVITE"), udp, "a", now())
        .unwrap();
    assert_eq!(
        d.table
            .start_client(client_key(1, "INVITE"), udp, "a", now()),
        Err(TableError::Duplicate)
    );
    assert_eq!(
        d.table
            .start_client(client_key(9, "ACK"), udp, "ack", now()),
        Err(TableError::AckHasNoTransaction)
    );
    d.table
        .start_server(server_key(1, "INVITE"), udp, "a", now())
        .unwrap();
    assert_eq!(
        d.table
            .start_server(server_key(1, "INVITE"), udp, "a", now()),
        Err(TableError::Duplicate)
    );
    assert_eq!(d.table.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn unmatched_messages_are_left_to_the_caller() {
    let mut d = Driver::new(10);
    // A stray response, an ACK to a 2xx (its own branch), a response from an unknown TU.
    assert_eq!(
        d.table
            .on_response(&client_key(1, "INVITE"), 200, "200", now()),
        None
    );
    assert_eq!(
        d.table
            .on_request(&server_key(1, "ACK"), "ACK", "ACK", now()),
        None
    );
    assert_eq!(
        d.table.respond(&server_key(1, "INVITE"), 200, "200", now()),
        Err(TableError::NotFound)
    );
    assert_eq!(
        d.table.on_transport_error(&server_key(1, "BYE").into()),
        None
    );
    // A server transaction and a client transaction may share a branch (a proxy that
    // reuses it downstream): the keys do not clash.
    let udp = Reliability::Unreliable;
    let server = ServerKey::new("z9hG4bKshared", "h", "INVITE").unwrap();
    let client = ClientKey::new("z9hG4bKshared", "INVITE").unwrap();
    d.table
        .start_server(server.clone(), udp, "in", now())
        .unwrap();
    d.table
        .start_client(client.clone(), udp, "out", now())
        .unwrap();
    assert_eq!(d.table.len(), 2);
    let kind = |k: TransactionKey| d.table.get(&k).map(|t| t.kind());
    assert_eq!(kind(server.into()), Some(Kind::ServerInvite));
    assert_eq!(kind(client.into()), Some(Kind::ClientInvite));
}

#[tokio::test(start_paused = true)]
async fn cancel_finds_the_invite_it_cancels() {
    let mut d = Driver::new(10);
    let udp = Reliability::Unreliable;
    let invite = server_key(7, "INVITE");
    d.table
        .start_server(invite.clone(), udp, "INVITE", now())
        .unwrap();
    d.table.respond(&invite, 180, "180", now()).unwrap();
    d.run_until(5000).await;
    // The CANCEL is not a retransmission of the INVITE: it starts its own transaction.
    let cancel = server_key(7, "CANCEL");
    assert_eq!(d.table.on_request(&cancel, "CANCEL", "CANCEL", now()), None);
    d.table
        .start_server(cancel.clone(), udp, "CANCEL", now())
        .unwrap();
    // The TU finds the INVITE transaction and its request, answers 200 to the CANCEL and 487
    // to the INVITE.
    let target: TransactionKey = cancel.cancelled_invite().into();
    let txn = d.table.get(&target).unwrap();
    assert_eq!(
        (txn.kind(), txn.state(), *txn.request()),
        (Kind::ServerInvite, State::Proceeding, "INVITE")
    );
    assert_eq!(
        d.table.respond(&cancel, 200, "200", now()),
        Ok(vec![send("200", false)])
    );
    assert_eq!(
        d.table.respond(&invite, 487, "487", now()),
        Ok(vec![send("487", false)])
    );
    assert_eq!(d.table.counts().server_invite, 1);
    assert_eq!(d.table.counts().server_non_invite, 1);
}

#[tokio::test(start_paused = true)]
async fn timers_of_many_transactions_fire_in_deadline_order() {
    let mut d = Driver::new(10);
    let tcp = Reliability::Reliable;
    // Three transactions whose timeouts fall 32 s after their start: 0, 100, 250 ms.
    let keys: Vec<ClientKey> = (0..3).map(|n| client_key(n, "OPTIONS")).collect();
    d.table
        .start_client(keys[0].clone(), tcp, "0", now())
        .unwrap();
    d.run_until(100).await;
    d.table
        .start_client(keys[1].clone(), tcp, "1", now())
        .unwrap();
    d.run_until(250).await;
    d.table
        .start_client(keys[2].clone(), tcp, "2", now())
        .unwrap();
    // A server INVITE whose 100 Trying falls in between.
    d.table
        .start_server(server_key(1, "INVITE"), tcp, "I", now())
        .unwrap();
    let fired = d.run_until(60_000).await;
    let mut expected = vec![(
        450,
        server_key(1, "INVITE").into(),
        Action::SendTrying { request: "I" },
    )];
    for (ms, key) in [(32_000, &keys[0]), (32_100, &keys[1]), (32_250, &keys[2])] {
        expected.push((ms, key.clone().into(), Action::Timeout(TimerKind::F)));
        expected.push((ms, key.clone().into(), Action::Terminated));
    }
    assert_eq!(fired, expected);
    assert_eq!(d.table.len(), 1, "the server INVITE waits for its TU");
}

#[tokio::test(start_paused = true)]
async fn a_late_poll_fires_each_due_timer_once() {
    let mut d = Driver::new(10);
    let key = client_key(1, "INVITE");
    d.table
        .start_client(key.clone(), Reliability::Unreliable, "INVITE", now())
        .unwrap();
    // The worker was stalled for 40 s: one poll sees Timer A and Timer B both due. The
    // timeout wins and no burst of retransmissions goes out.
    tokio::time::advance(std::time::Duration::from_secs(40)).await;
    let fired = d.table.poll_timers(now());
    assert_eq!(
        fired,
        vec![
            (key.clone().into(), Action::Timeout(TimerKind::B)),
            (key.into(), Action::Terminated)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_timer_heap_stays_bounded_by_live_transactions() {
    let mut d = Driver::new(10_000);
    let udp = Reliability::Unreliable;
    // Each transaction changes its deadline several times (start, 1xx, final, ACK), leaving
    // stale heap entries behind.
    for n in 0..2000 {
        let key = server_key(n, "INVITE");
        d.table
            .start_server(key.clone(), udp, "INVITE", now())
            .unwrap();
        d.table.respond(&key, 180, "180", now()).unwrap();
        d.table.respond(&key, 486, "486", now()).unwrap();
        d.table.on_request(&key, "ACK", "ACK", now()).unwrap();
        assert!(d.table.queued_timers() <= 2 * d.table.len() + 64);
    }
    assert_eq!(d.table.len(), 2000);
    let fired = d.run_until(60_000).await;
    assert_eq!(fired.len(), 2000, "one Terminated each, on Timer I");
    assert!(fired
        .iter()
        .all(|(ms, _, a)| *ms == 5000 && *a == Action::Terminated));
    assert!(d.table.is_empty());
    assert_eq!(d.table.queued_timers(), 0);
}

#[tokio::test(start_paused = true)]
async fn completed_non_invite_lingers_compactly_in_timer_j_order() {
    let mut d = Driver::new(100);
    let udp = Reliability::Unreliable;
    // REGISTERs answered at 0, 10, 20 ms: each keeps its final response for Timer J, off
    // the timer heap.
    for n in 0..3 {
        let key = server_key(n, "REGISTER");
        d.table.start_server(key.clone(), udp, "R", now()).unwrap();
        assert_eq!(
            d.table.respond(&key, 401, "401", now()),
            Ok(vec![send("401", false)])
        );
        d.run_until(10 * (n as u64 + 1)).await;
    }
    assert_eq!(d.table.queued_timers(), 0);
    assert_eq!(d.table.counts().server_non_invite, 3);
    assert_eq!(d.table.len(), 3);
    // A retransmission gets the response again; a later TU response is discarded; the key
    // cannot start a second transaction while it lingers.
    let key = server_key(1, "REGISTER");
    assert_eq!(
        d.table.on_request(&key, "REGISTER", "R", now()),
        Some(vec![send("401", true)])
    );
    assert_eq!(d.table.respond(&key, 200, "200", now()), Ok(vec![]));
    assert_eq!(
        d.table.start_server(key.clone(), udp, "R", now()),
        Err(TableError::Duplicate)
    );
    // A transport error ends one at once.
    assert_eq!(
        d.table
            .on_transport_error(&server_key(0, "REGISTER").into()),
        Some(vec![Action::TransportError, Action::Terminated])
    );
    assert_eq!(d.table.len(), 2);
    // An INVITE client transaction (Timer B: 32 s from 30 ms) fires in order with them: the
    // lingering ones may wait TIMER_J_SLACK, so they go when Timer B wakes the table.
    let invite = client_key(1, "INVITE");
    d.table
        .start_client(invite.clone(), Reliability::Reliable, "I", now())
        .unwrap();
    let fired = d.run_until(40_000).await;
    assert_eq!(
        fired,
        vec![
            (32_030, key.clone().into(), Action::Terminated),
            (32_030, server_key(2, "REGISTER").into(), Action::Terminated),
            (32_030, invite.clone().into(), Action::Timeout(TimerKind::B)),
            (32_030, invite.into(), Action::Terminated),
        ]
    );
    assert!(d.table.is_empty());
    assert_eq!(d.table.next_deadline(), None);
    // Gone: the key starts anew.
    assert_eq!(d.table.on_request(&key, "REGISTER", "R", now()), None);
    assert!(d.table.remove(&key.into()).is_none());
}

#[tokio::test(start_paused = true)]
async fn lingering_transactions_are_freed_a_batch_at_a_time() {
    use crate::transaction::table::{EXPIRY_BATCH, TIMER_J_SLACK};
    let mut d = Driver::new(1000);
    let n = 2 * EXPIRY_BATCH + 5;
    for i in 0..n {
        let key = server_key(i, "REGISTER");
        d.table
            .start_server(key.clone(), Reliability::Unreliable, "R", now())
            .unwrap();
        d.table.respond(&key, 200, "200", now()).unwrap();
    }
    // All fall due together; each poll frees one batch, and while some are left over the
    // next poll is due at once, not a slack window later.
    let due = d.table.next_deadline().expect("Timer J");
    tokio::time::sleep_until(due.into()).await;
    let mut batches = Vec::new();
    loop {
        let fired = d.table.poll_timers(now());
        assert!(fired.iter().all(|(_, a)| *a == Action::Terminated));
        batches.push(fired.len());
        match d.table.next_deadline() {
            Some(at) => assert!(at <= now(), "left over, but due only in {:?}", at - now()),
            None => break,
        }
    }
    assert_eq!(batches, [EXPIRY_BATCH, EXPIRY_BATCH, 5]);
    assert!(d.table.is_empty());
    // A new one lingers with the slack again.
    let key = server_key(n, "REGISTER");
    d.table
        .start_server(key.clone(), Reliability::Unreliable, "R", now())
        .unwrap();
    d.table.respond(&key, 200, "200", now()).unwrap();
    assert_eq!(
        d.table.next_deadline(),
        Some(now() + d.table.config().timer_j + TIMER_J_SLACK)
    );
}

#[tokio::test(start_paused = true)]
async fn a_timer_due_behind_a_full_batch_still_fires() {
    use crate::transaction::table::EXPIRY_BATCH;
    let mut d = Driver::new(1000);
    for i in 0..2 * EXPIRY_BATCH {
        let key = server_key(i, "REGISTER");
        d.table
            .start_server(key.clone(), Reliability::Unreliable, "R", now())
            .unwrap();
        d.table.respond(&key, 200, "200", now()).unwrap();
    }
    // A request sent over TCP 1 ms later: its Timer F falls due just after their Timer J.
    d.run_until(1).await;
    let options = client_key(1, "OPTIONS");
    d.table
        .start_client(options.clone(), Reliability::Reliable, "O", now())
        .unwrap();
    let due = d.table.next_deadline().expect("Timer F");
    tokio::time::sleep_until(due.into()).await;
    let fired = d.table.poll_timers(now());
    let freed = fired
        .iter()
        .filter(|(k, _)| matches!(k, TransactionKey::Server(_)))
        .count();
    assert_eq!(freed, EXPIRY_BATCH, "one batch of the lingering ones");
    assert!(
        fired.contains(&(options.into(), Action::Timeout(TimerKind::F))),
        "Timer F waited behind the backlog: {fired:?}"
    );
    assert!(d.table.next_deadline().expect("the rest") <= now());
}
