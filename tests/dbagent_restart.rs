//! Registrations survive a full restart (SIGTERM, start again) with and without a
//! database, and from the database alone when the local state is lost; a journal at its
//! size limit raises the alarm, crashes nothing, and loses no registration.

mod common;

use std::time::Duration;

use common::postgres::{
    dbagent_alarm, insert_users, log_tail, restart, setup_with, start_again, users,
    wait_database_unreachable, wait_or_report, Postgres, RegisterLoad,
};
use common::sip::Phone;
use common::{wait_for, Server, Setup};

/// Registers a phone for `user`; returns it (its contact stays bound).
fn register(server: &Server, user: &str, pw: &str) -> Phone {
    let mut phone = Phone::udp(server.udp_addr(), user, pw);
    let contact = phone.contact();
    let r = phone.register(&contact, Some("MD5"));
    assert_eq!(r.status, 200, "{}", r.text);
    phone
}

/// A REGISTER without Contact from another phone of the same user: the bindings.
fn fetch(server: &Server, user: &str, pw: &str) -> Vec<String> {
    let mut other = Phone::udp(server.udp_addr(), user, pw);
    let r = other.register("", Some("MD5"));
    assert_eq!(r.status, 200, "{}", r.text);
    r.headers("Contact")
}

/// The phones are reachable without re-registering: bindings back in `ctl status`, and a
/// fetch returns each phone's contact.
fn assert_reachable(server: &Server, phones: &[(&Phone, &str)]) {
    wait_or_report(
        "bindings restored",
        Duration::from_secs(10),
        || log_tail(server, 40),
        || (server.status()["bindings"] == phones.len() as u64).then_some(()),
    );
    for (phone, pw) in phones {
        let contacts = fetch(server, &phone.user, pw);
        let want = phone.local.to_string();
        assert!(
            contacts.iter().any(|c| c.contains(&want)),
            "{}: {contacts:?} lacks {want}",
            phone.user
        );
    }
}

/// Bytes in the journal segments of a state directory.
fn journal_bytes(state: &std::path::Path) -> u64 {
    std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn full_restart_without_database_keeps_registrations() {
    let mut server = Server::start(Setup::default());
    let a = register(&server, "1001", "pw1001");
    let b = register(&server, "1002", "pw1002");
    restart(&mut server);
    server.wait_all_ready();
    assert_reachable(&server, &[(&a, "pw1001"), (&b, "pw1002")]);

    // kill -9 of every process: what was journaled is back too. The dbagent writes its
    // journal in batches (every 50 ms, with the fsync), so a kill of every process at once
    // loses at most that much, as a power cut does; a new segment's 8-byte header is
    // written at once, so the record is in the file once it has grown by more than that.
    let state = server.dir.path().join("state");
    let before = journal_bytes(&state);
    let c = register(&server, "1003", "pw1003");
    wait_for("journaled", Duration::from_secs(5), || {
        (journal_bytes(&state) > before + 8).then_some(())
    });
    // Stopped first, so the supervisor neither restarts the children nor lets the
    // parent-death signal stop them politely.
    let pids = server.child_pids();
    server.signal(nix::sys::signal::Signal::SIGSTOP);
    for (_, pid) in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    server.signal(nix::sys::signal::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(server.dir.path().join("rt"));
    start_again(&mut server);
    server.wait_all_ready();
    assert_reachable(&server, &[(&a, "pw1001"), (&b, "pw1002"), (&c, "pw1003")]);
}

/// An upgrade from a build that kept the cache as JSON (version 1, `dbagent-cache.json`) keeps
/// the registrations: the old file is read, and replaced by the binary one.
#[test]
fn an_upgrade_reads_the_json_cache_of_version_1_and_replaces_it() {
    use sipcraft_dbagent::cache;
    let mut server = Server::start(Setup::default());
    let a = register(&server, "1001", "pw1001");
    let b = register(&server, "1002", "pw1002");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(15));

    // What version 1 left: the same state as JSON, and nothing else to restore from.
    let state = server.dir.path().join("state");
    let mut old = cache::load(&state)
        .unwrap()
        .expect("a cache file after a stop");
    assert_eq!(old.bindings.len(), 2);
    old.version = 1;
    std::fs::write(
        state.join(cache::FILE_V1),
        serde_json::to_vec(&old).unwrap(),
    )
    .unwrap();
    for entry in std::fs::read_dir(&state).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == cache::FILE || name.starts_with("journal-") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }

    start_again(&mut server);
    server.wait_all_ready();
    assert_reachable(&server, &[(&a, "pw1001"), (&b, "pw1002")]);
    wait_for("the binary cache file", Duration::from_secs(10), || {
        (state.join(cache::FILE).exists() && !state.join(cache::FILE_V1).exists()).then_some(())
    });
    assert_eq!(cache::load(&state).unwrap().unwrap().bindings.len(), 2);
}

#[test]
fn full_restart_with_database_keeps_registrations_even_without_local_state() {
    let pg = Postgres::start();
    let mut server = Server::start(setup_with(&pg));
    pg.wait_schema();
    pg.psql("INSERT INTO extensions (number, password) VALUES ('3401', 'a'), ('3402', 'b')");
    wait_for("extensions published", Duration::from_secs(5), || {
        (server.status()["extensions"] == 2u64).then_some(())
    });
    let a = register(&server, "3401", "a");
    let b = register(&server, "3402", "b");
    wait_for(
        "registrations in PostgreSQL",
        Duration::from_secs(5),
        || (pg.count("SELECT count(*) FROM registrations") == 2).then_some(()),
    );

    // From the local state.
    restart(&mut server);
    server.wait_all_ready();
    assert_reachable(&server, &[(&a, "a"), (&b, "b")]);

    // From PostgreSQL alone: the state directory is gone.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(15));
    std::fs::remove_dir_all(server.dir.path().join("state")).unwrap();
    start_again(&mut server);
    server.wait_all_ready();
    assert_reachable(&server, &[(&a, "a"), (&b, "b")]);
    assert_eq!(pg.count("SELECT count(*) FROM registrations"), 2);
}

#[test]
fn journal_at_its_limit_raises_the_alarm_and_nothing_crashes() {
    const FIRST: u32 = 60000;
    const USERS: u32 = 600;
    let mut pg = Postgres::start();
    let mut setup = setup_with(&pg);
    setup.extra += "[dbagent]\njournal_max_bytes = 32768\n\n";
    let server = Server::start(setup);
    pg.wait_schema();
    let list = users(FIRST, USERS);
    insert_users(&pg, &list);
    wait_for("extensions published", Duration::from_secs(10), || {
        (server.status()["extensions"] == u64::from(USERS)).then_some(())
    });
    pg.stop();
    wait_database_unreachable(&server, "database alarm");

    let mut load = RegisterLoad::spawn(&server, &list, 150);
    load.assert_all_ok(Duration::from_secs(60));
    let alarm = wait_or_report(
        "journal alarm",
        Duration::from_secs(10),
        || log_tail(&server, 40),
        || dbagent_alarm(&server).filter(|a| a.contains("journal FULL")),
    );
    eprintln!("alarm: {alarm}");
    assert!(
        alarm.contains("of 32768 bytes"),
        "the configured limit: {alarm}"
    );
    let dbagent = server.child("dbagent");
    assert_eq!(dbagent["restarts"], 0, "{dbagent}");
    assert_eq!(dbagent["state"], "ready", "{dbagent}");
    assert!(
        server.log().contains("JOURNAL FULL"),
        "the limit is logged loudly"
    );
    let text = String::from_utf8_lossy(&server.ctl(&["status"]).stdout).into_owned();
    assert!(text.contains("journal FULL"), "{text}");

    // The database returns: every registration reaches it, and the alarm clears.
    pg.start_again();
    wait_or_report(
        "every registration in PostgreSQL",
        Duration::from_secs(30),
        || log_tail(&server, 40),
        || (pg.count("SELECT count(*) FROM registrations") == i64::from(USERS)).then_some(()),
    );
    wait_for("alarm cleared", Duration::from_secs(10), || {
        dbagent_alarm(&server).is_none().then_some(())
    });
}

/// A registration answered 200 right before a SIGTERM is persisted before the dbagent exits
/// (the worker hands it to the bus before it exits, the hub reads it to the end before it
/// stops the dbagent, and the dbagent's Stop cannot overtake it): two phones register and
/// the supervisor is stopped the moment the second 200 arrives, round after round, and
/// after every restart each phone registered so far is back.
#[test]
fn registrations_answered_just_before_a_stop_survive_it_every_time() {
    const ROUNDS: u32 = 5;
    let setup = Setup {
        extensions: (2001..=2000 + 2 * ROUNDS)
            .map(|n| (n.to_string(), format!("pw{n}")))
            .collect(),
        ..Setup::default()
    };
    let mut server = Server::start(setup);
    let mut phones: Vec<(Phone, String)> = Vec::new();
    for round in 0..ROUNDS {
        for n in [2001 + 2 * round, 2002 + 2 * round] {
            let pw = format!("pw{n}");
            phones.push((register(&server, &n.to_string(), &pw), pw));
        }
        restart(&mut server);
        server.wait_all_ready();
        let list: Vec<(&Phone, &str)> = phones.iter().map(|(p, pw)| (p, pw.as_str())).collect();
        assert_reachable(&server, &list);
    }
}
