//! The hub against real socket pairs: ordering, resyncs, held call records.

use super::*;
use sipcraft_config::{Extension, Secret};
use sipcraft_ipc::child::{self, LinkEvent};
use sipcraft_ipc::conn;
use sipcraft_ipc::wire::{CallRecord, Hello};

fn extension(number: usize, name_len: usize) -> Extension {
    Extension {
        number: number.to_string(),
        name: Some("n".repeat(name_len)),
        secret: Secret::Password("pw".into()),
        enabled: true,
        auth_algorithms: None,
    }
}

/// A hub on a bus socket in `dir`, whose main loop accepts every child.
fn start_hub(dir: &std::path::Path) -> (Arc<Hub>, std::path::PathBuf) {
    let config = sipcraft_config::parse(
        "[server]\ndomain = \"bus.test\"\nruntime_dir = \"rt\"\nstate_dir = \"st\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:5060\"\n",
        &dir.join("test.toml"),
    )
    .expect("test config");
    let hub = Hub::new();
    let path = conn::endpoint(dir, "bus");
    let listener = conn::listen(&path).expect("listen");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let BusEvent::Joined { reply, .. } = ev {
                let _ = reply.send(Ok((Box::new(config.clone()), vec![7; 32])));
            }
        }
    });
    let accepting = hub.clone();
    tokio::spawn(async move {
        while let Ok((reader, writer)) = conn::accept(&listener).await {
            tokio::spawn(serve(accepting.clone(), reader, writer, events_tx.clone()));
        }
    });
    (hub, path)
}

/// A child joined to the hub at `bus` (see [`child::join`]).
async fn joined(bus: &std::path::Path, role: Role, name: &str, observe: bool) -> child::Link {
    child::join(bus, role, name, observe)
        .await
        .expect("the hub accepts the child")
}

async fn next_event(link: &mut child::Link) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(20), link.events.recv())
        .await
        .expect("an event within 20 s")
        .expect("link open")
}

#[tokio::test]
async fn updates_arrive_in_order_and_one_too_big_for_a_frame_resyncs_every_child() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, bus) = start_hub(dir.path());
    hub.publish(Update::ExtensionUpserted(extension(1, 1)));
    let mut link = joined(&bus, Role::Worker, "udp-0", true).await;
    assert_eq!(link.replica.read().unwrap().seq(), 1);
    for n in 2..=300 {
        hub.publish(Update::ExtensionUpserted(extension(n, 1)));
    }
    for want in 2..=300 {
        match next_event(&mut link).await {
            LinkEvent::Applied { seq, .. } => assert_eq!(seq, want),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Over the 4 MiB frame limit: it cannot go out as one update, so a snapshot carries it.
    let all: Vec<Extension> = (0..30_000).map(|n| extension(n, 150)).collect();
    let big = hub.publish(Update::ExtensionsReplaced(all));
    match next_event(&mut link).await {
        LinkEvent::Resynced { seq } => assert_eq!(seq, big),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(link.replica.read().unwrap().extension_count(), 30_000);
    hub.publish(Update::ExtensionDeleted("5".into()));
    match next_event(&mut link).await {
        LinkEvent::Applied { seq, .. } => assert_eq!(seq, big + 1),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_workers_own_update_comes_back_in_order_with_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, bus) = start_hub(dir.path());
    let mut a = joined(&bus, Role::Worker, "udp-0", true).await;
    let mut b = joined(&bus, Role::Worker, "udp-1", true).await;
    let applied = |ev: LinkEvent| match ev {
        LinkEvent::Applied { seq, update } => (seq, update),
        other => panic!("unexpected {other:?}"),
    };
    // Alone, the echo of a's own update still comes back (after ECHO_WAIT at most).
    assert!(a.outbox.publish(Update::ExtensionUpserted(extension(1, 1))));
    assert_eq!(applied(next_event(&mut a).await).0, 1);
    assert_eq!(applied(next_event(&mut b).await).0, 1);
    // a's echo waits for b's update and both arrive in order.
    assert!(a.outbox.publish(Update::ExtensionUpserted(extension(2, 1))));
    while hub.counts().0 < 2 {
        tokio::task::yield_now().await;
    }
    assert!(b.outbox.publish(Update::ExtensionUpserted(extension(3, 1))));
    for (want, number) in [(2, "2"), (3, "3")] {
        let (seq, update) = applied(next_event(&mut a).await);
        assert_eq!(seq, want);
        assert!(matches!(update, Update::ExtensionUpserted(e) if e.number == number));
    }
    assert_eq!(a.replica.read().unwrap().seq(), 3);
}

#[tokio::test]
async fn a_lazy_update_waits_for_company_and_keeps_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, bus) = start_hub(dir.path());
    let a = joined(&bus, Role::Worker, "udp-0", false).await;
    let mut b = joined(&bus, Role::Worker, "udp-1", true).await;
    let number = |ev: LinkEvent| match ev {
        LinkEvent::Applied {
            update: Update::ExtensionUpserted(e),
            ..
        } => e.number,
        other => panic!("unexpected {other:?}"),
    };
    // Alone, a lazy update goes out when its window has passed, not before.
    let start = tokio::time::Instant::now();
    assert!(a
        .outbox
        .publish_lazy(Update::ExtensionUpserted(extension(1, 1))));
    assert_eq!(number(next_event(&mut b).await), "1");
    assert!(start.elapsed() >= child::LAZY);
    // Followed by an urgent one, it travels with it, first.
    assert!(a
        .outbox
        .publish_lazy(Update::ExtensionUpserted(extension(2, 1))));
    assert!(a.outbox.publish(Update::ExtensionUpserted(extension(3, 1))));
    assert_eq!(number(next_event(&mut b).await), "2");
    assert_eq!(number(next_event(&mut b).await), "3");
    // A flush (what a stopping child does last) writes it too.
    assert!(a
        .outbox
        .publish_lazy(Update::ExtensionUpserted(extension(4, 1))));
    assert!(a.outbox.flush(Duration::from_secs(10)).await);
    assert_eq!(number(next_event(&mut b).await), "4");
}

async fn recv(reader: &mut conn::Reader) -> ToChild {
    tokio::time::timeout(Duration::from_secs(20), reader.recv::<Envelope<ToChild>>())
        .await
        .expect("a frame within 20 s")
        .unwrap()
        .expect("open")
        .body
}

#[tokio::test]
async fn a_child_that_stops_reading_never_slows_the_hub_and_is_resynced() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, bus) = start_hub(dir.path());
    let (mut reader, mut writer) = conn::connect(&bus).await.unwrap();
    writer
        .send(&Envelope::new(FromChild::Hello(Hello::new(
            Role::Worker,
            "udp-0",
        ))))
        .await
        .unwrap();
    assert!(matches!(recv(&mut reader).await, ToChild::Welcome { .. }));
    assert!(matches!(
        recv(&mut reader).await,
        ToChild::SnapshotBegin { seq: 0 }
    ));
    assert!(matches!(recv(&mut reader).await, ToChild::SnapshotEnd));
    // The child reads nothing while far more updates than the backlog are published; the
    // hub's writer fills the socket and then waits, the publisher never does.
    let total = (UPDATE_BACKLOG * 3) as u64;
    for n in 0..total {
        hub.publish(Update::ExtensionUpserted(extension(n as usize % 1000, 100)));
        if n % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Now it reads: updates in order, a snapshot, and the stream ends at `total`.
    let mut replica = Replica::new();
    let mut snapshots = 0;
    let mut in_snapshot = false;
    while replica.seq() < total || in_snapshot {
        match recv(&mut reader).await {
            ToChild::SnapshotBegin { seq } => {
                snapshots += 1;
                in_snapshot = true;
                replica = Replica::from_snapshot(seq, []);
            }
            ToChild::Snapshot(part) => replica.absorb(&part),
            ToChild::SnapshotEnd => in_snapshot = false,
            ToChild::Update { seq, update } => replica.apply(seq, &update).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        snapshots >= 1,
        "the lagging child was resynced from a snapshot"
    );
    assert_eq!(replica.extension_count(), 1000);
}

fn record(id: &str) -> Direct {
    Direct::CallRecord(CallRecord {
        id: id.into(),
        call_id: "c".into(),
        caller: "1001".into(),
        callee: "1002".into(),
        started_ms: 1,
        answered_ms: None,
        ended_ms: Some(2),
        final_status: 486,
        reason: "Busy Here".into(),
        worker: "udp-0".into(),
    })
}

#[tokio::test]
async fn a_stop_never_overtakes_an_update_published_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, bus) = start_hub(dir.path());
    let mut link = joined(&bus, Role::DbAgent, "dbagent", true).await;
    let tx = hub.routes.read().unwrap()["dbagent"].tx.clone();
    for round in 0..20 {
        // Published, then Stop queued at once: the child's writer finds both waiting.
        let seq = hub.publish(Update::ExtensionUpserted(extension(round, 1)));
        tx.try_send(Outgoing::Msg(Box::new(ToChild::Stop))).unwrap();
        match next_event(&mut link).await {
            LinkEvent::Applied { seq: got, .. } => assert_eq!(got, seq),
            other => panic!("round {round}: {other:?} before update {seq}"),
        }
        assert!(matches!(next_event(&mut link).await, LinkEvent::Stop));
    }
}

/// The (number, id) of every call record queued on a child's link.
fn delivered(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<(u64, String)> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|o| match o {
            Outgoing::Msg(m) => match *m {
                ToChild::DeliverNumbered {
                    num,
                    msg: Direct::CallRecord(r),
                    ..
                } => (num, r.id),
                other => panic!("unexpected {other:?}"),
            },
            Outgoing::Resync => panic!("unexpected resync"),
        })
        .collect()
}

fn ids(got: &[(u64, String)]) -> Vec<&str> {
    got.iter().map(|(_, id)| id.as_str()).collect()
}

#[test]
fn call_records_are_kept_until_acknowledged_and_sent_again_to_the_next_dbagent() {
    let hub = Hub::new();
    // Away: held.
    assert!(hub.route("dbagent", "udp-0", record("a")));
    assert!(hub.route("dbagent", "udp-1", record("b")));
    let handoff = Direct::Sip(sipcraft_ipc::wire::SipHandoff {
        transport: sipcraft_config::Transport::Udp,
        peer: "127.0.0.1:5060".parse().unwrap(),
        connection: None,
        outbound: true,
        bytes: Vec::new(),
    });
    assert!(
        !hub.route("dbagent", "udp-0", handoff),
        "SIP hand-offs are not held"
    );
    // Back: delivered in order, numbered.
    let (tx, mut rx) = mpsc::channel(16);
    hub.connect("dbagent", 10, tx);
    let first = delivered(&mut rx);
    assert_eq!(ids(&first), ["a", "b"]);
    assert!(hub.route("dbagent", "udp-0", record("c")));
    let c = delivered(&mut rx);
    assert_eq!(ids(&c), ["c"]);
    // a is acknowledged (an acknowledgement from another connection counts for nothing);
    // then the dbagent dies.
    hub.acknowledge("dbagent", 9, c[0].0);
    hub.acknowledge("dbagent", 10, first[0].0);
    hub.disconnect("dbagent", 10);
    assert!(hub.route("dbagent", "udp-1", record("d")));
    // Its successor gets what was not acknowledged, then what came meanwhile, in order.
    let (tx, mut rx) = mpsc::channel(16);
    hub.connect("dbagent", 11, tx);
    let again = delivered(&mut rx);
    assert_eq!(ids(&again), ["b", "c", "d"]);
    assert!(again.windows(2).all(|w| w[0].0 < w[1].0));
    // The old connection closing late changes nothing for the new one.
    hub.disconnect("dbagent", 10);
    hub.acknowledge("dbagent", 11, again[2].0);
    assert!(hub.held.lock().unwrap()["dbagent"].queue.is_empty());
}

#[test]
fn call_records_past_the_bound_are_dropped_with_an_alarm_and_a_full_link_waits() {
    let hub = Hub::new();
    let (tx, mut rx) = mpsc::channel(4);
    hub.connect("dbagent", 1, tx);
    for n in 0..HELD_MAX {
        assert!(hub.route("dbagent", "udp-0", record(&n.to_string())));
    }
    assert!(!hub.route("dbagent", "udp-0", record("over")));
    assert_eq!(hub.dropped_records("dbagent"), 1);
    // Only what fits the link went; the rest follows each acknowledgement.
    let got = delivered(&mut rx);
    assert_eq!(got.len(), 4);
    hub.acknowledge("dbagent", 1, got[3].0);
    let next = delivered(&mut rx);
    assert_eq!(ids(&next), ["4", "5", "6", "7"]);
    assert!(hub.route("dbagent", "udp-0", record("fits")));
    assert_eq!(hub.dropped_records("dbagent"), 0, "room again");
}
