//! The dbagent with a real PostgreSQL: extensions inserted, changed and deleted in the
//! database reach every worker within a second; a schema newer than the build is refused;
//! started while PostgreSQL is down, the workers serve the cached extensions at once and
//! the changes made meanwhile are picked up when it returns.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{
    dbagent_alarm, restart, setup_with, start_again, wait_database_unreachable, Postgres,
};
use common::sip::Phone;
use common::{wait_for, Server};

/// Registers until the response is `want`, within `within`; returns how long it took.
fn register_until(server: &Server, user: &str, pw: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut phone = Phone::udp(server.udp_addr(), user, pw);
        let contact = phone.contact();
        let last = phone.register(&contact, Some("MD5")).status;
        if last == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{user}: REGISTER answered {last}, not {want}, for {within:?}; log:\n{}",
            server.log()
        );
    }
}

fn status_of(server: &Server, user: &str, pw: &str) -> u16 {
    let mut phone = Phone::udp(server.udp_addr(), user, pw);
    let contact = phone.contact();
    phone.register(&contact, Some("MD5")).status
}

#[test]
fn extension_changes_in_postgres_reach_workers_within_a_second() {
    let pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    pg.wait_schema();

    // Insert with (number, password) alone.
    pg.psql("INSERT INTO extensions (number, password) VALUES ('3001', 'first')");
    let took = register_until(&server, "3001", "first", 200, Duration::from_secs(1));
    eprintln!("insert -> registrable after {took:?}");

    // A changed password applies; the old one stops working.
    pg.psql("UPDATE extensions SET password = 'second' WHERE number = '3001'");
    let took = register_until(&server, "3001", "second", 200, Duration::from_secs(1));
    eprintln!("password change -> applied after {took:?}");
    // The 200 came from one worker; the old password must fail on every one, so the check
    // waits until they all hold the change (a second worker may apply it a moment later).
    server.wait_replicated();
    assert_ne!(status_of(&server, "3001", "first"), 200);

    // Disabled: known but refused.
    pg.psql("UPDATE extensions SET enabled = false WHERE number = '3001'");
    let took = register_until(&server, "3001", "second", 403, Duration::from_secs(1));
    eprintln!("disable -> refused after {took:?}");

    // HA1 only: MD5("3002:pbx.test:ha1pw").
    let ha1 = md5_hex("3002:pbx.test:ha1pw");
    pg.psql(&format!(
        "INSERT INTO extensions (number, ha1_md5) VALUES ('3002', '{ha1}')"
    ));
    register_until(&server, "3002", "ha1pw", 200, Duration::from_secs(1));

    // Deleted: cannot register, and its bindings go.
    pg.psql("DELETE FROM extensions WHERE number = '3002'");
    let took = register_until(&server, "3002", "ha1pw", 401, Duration::from_secs(1));
    eprintln!("delete -> refused after {took:?}");

    // The schema refuses rows the dbagent could not use.
    assert!(pg
        .try_psql("INSERT INTO extensions (number) VALUES ('3003')")
        .is_err());
    assert!(pg
        .try_psql("INSERT INTO extensions (number, password) VALUES ('bad number', 'x')")
        .is_err());

    // Migrations are idempotent: a restarted dbagent finds the schema as it is.
    let pid = server.pid_of("dbagent");
    server.ctl(&["restart", "dbagent"]);
    wait_for("dbagent back", Duration::from_secs(10), || {
        let c = server.child("dbagent");
        (c["pid"].as_u64() != Some(u64::from(pid)) && c["state"] == "ready").then_some(())
    });
    assert_eq!(pg.count("SELECT count(*) FROM sipcraft_schema"), 1);
    pg.psql("UPDATE extensions SET enabled = true WHERE number = '3001'");
    register_until(&server, "3001", "second", 200, Duration::from_secs(3));
    assert!(dbagent_alarm(&server).is_none());
}

#[test]
fn a_schema_newer_than_the_build_is_refused_with_an_alarm() {
    let pg = Postgres::start();
    let mut server = Server::start(setup_with(&pg));
    pg.wait_schema();
    pg.psql("INSERT INTO extensions (number, password) VALUES ('3101', 'pw')");
    register_until(&server, "3101", "pw", 200, Duration::from_secs(2));
    pg.psql("INSERT INTO sipcraft_schema (version, description) VALUES (999, 'from the future')");
    restart(&mut server);
    server.wait_all_ready();
    let alarm = wait_for("schema alarm", Duration::from_secs(10), || {
        dbagent_alarm(&server).filter(|a| a.contains("newer"))
    });
    assert!(alarm.contains("999"), "{alarm}");
    // The cache keeps serving.
    assert_eq!(status_of(&server, "3101", "pw"), 200);
}

#[test]
fn started_while_postgres_is_down_serves_the_cache_then_catches_up() {
    let mut pg = Postgres::start();
    let mut server = Server::start(setup_with(&pg));
    pg.wait_schema();
    pg.psql(
        "INSERT INTO extensions (number, password) VALUES \
         ('3201', 'a'), ('3202', 'b'), ('3203', 'c')",
    );
    register_until(&server, "3203", "c", 200, Duration::from_secs(2));

    // Changes while sipcraft is stopped, then PostgreSQL goes away too.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(15));
    pg.psql("INSERT INTO extensions (number, password) VALUES ('3204', 'd')");
    pg.psql("DELETE FROM extensions WHERE number = '3202'");
    pg.psql("UPDATE extensions SET password = 'c2' WHERE number = '3203'");
    pg.stop();

    let started = Instant::now();
    start_again(&mut server);
    server.wait_all_ready();
    let ready = started.elapsed();
    eprintln!("ready with PostgreSQL down after {ready:?}");
    assert!(ready < Duration::from_secs(2), "took {ready:?}");
    // The cached extensions, as they were.
    assert_eq!(status_of(&server, "3201", "a"), 200);
    assert_eq!(status_of(&server, "3202", "b"), 200);
    assert_eq!(status_of(&server, "3203", "c"), 200);
    assert_ne!(status_of(&server, "3204", "d"), 200);
    wait_database_unreachable(&server, "database alarm");

    pg.start_again();
    let took = register_until(&server, "3204", "d", 200, Duration::from_secs(15));
    eprintln!("PostgreSQL back -> changes picked up after {took:?}");
    server.wait_replicated();
    assert_ne!(status_of(&server, "3202", "b"), 200);
    assert_eq!(status_of(&server, "3203", "c2"), 200);
    wait_for("alarm cleared", Duration::from_secs(5), || {
        dbagent_alarm(&server).is_none().then_some(())
    });
}

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
