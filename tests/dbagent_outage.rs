//! The dbagent under a steady SIPp REGISTER load while PostgreSQL is killed, then hung
//! (SIGSTOP) for 30 s, and while the dbagent itself is killed: no REGISTER fails, and
//! afterwards every registration made meanwhile is in PostgreSQL exactly once.

mod common;

use std::time::{Duration, Instant};

use common::postgres::{
    dbagent_alarm, insert_users, log_tail, setup_with, users, wait_or_report, Postgres,
    RegisterLoad,
};
use common::{wait_for, Server};

fn registrations(pg: &Postgres) -> i64 {
    pg.count("SELECT count(*) FROM registrations")
}

fn bindings(server: &Server) -> i64 {
    server.status()["bindings"].as_i64().unwrap_or(0)
}

/// Every user has exactly one row, written from its latest REGISTER (SIPp's CSeq 2).
fn assert_each_once(pg: &Postgres, first: u32, count: u32) {
    let rows = pg.psql(&format!(
        "SELECT count(*), count(DISTINCT aor), min(cseq), max(cseq) FROM registrations \
         WHERE aor::bigint BETWEEN {first} AND {}",
        first + count - 1
    ));
    assert_eq!(
        rows,
        format!("{count}|{count}|2|2"),
        "rows, users, cseq range"
    );
}

/// Lines of the dbagent's log that tell how the outage went.
fn report(server: &Server, pg: &Postgres, load: &RegisterLoad) -> String {
    format!(
        "status: {}\nrows: {:?}\nSIPp:\n{}\nlog:\n{}",
        server.try_status().map_or("none".into(), |s| s.to_string()),
        pg.try_psql("SELECT count(*) FROM registrations"),
        load.screen(),
        log_tail(server, 60)
    )
}

fn outage_lines(server: &Server) -> String {
    server
        .log()
        .lines()
        .filter(|l| {
            l.contains("dbagent")
                && (l.contains("replay")
                    || l.contains("database lost")
                    || l.contains("database up")
                    || l.contains("already in the database")
                    || l.contains("ALARM"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn postgres_killed_then_hung_under_register_load_loses_nothing() {
    const FIRST: u32 = 40000;
    const USERS: u32 = 2400;
    let mut pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    pg.wait_schema();
    let list = users(FIRST, USERS);
    insert_users(&pg, &list);
    wait_for("extensions published", Duration::from_secs(10), || {
        (server.status()["extensions"] == u64::from(USERS)).then_some(())
    });
    let test_started = Instant::now();
    let mut load = RegisterLoad::spawn(&server, &list, 40);
    wait_or_report(
        "registrations flowing into PostgreSQL",
        Duration::from_secs(20),
        || report(&server, &pg, &load),
        || (registrations(&pg) >= 100).then_some(()),
    );

    // Killed: connections refused until it is back.
    pg.kill();
    let killed = Instant::now();
    let alarm = wait_or_report(
        "database alarm",
        Duration::from_secs(10),
        || report(&server, &pg, &load),
        || dbagent_alarm(&server).filter(|a| a.contains("database unreachable")),
    );
    eprintln!("kill -9: alarm after {:?}: {alarm}", killed.elapsed());
    let at_kill = bindings(&server);
    wait_or_report(
        "registrations during the outage",
        Duration::from_secs(30),
        || report(&server, &pg, &load),
        || (bindings(&server) >= at_kill + 150).then_some(()),
    );
    pg.start_again();
    let back = Instant::now();
    wait_or_report(
        "journal replayed after the kill",
        Duration::from_secs(20),
        || report(&server, &pg, &load),
        || {
            let b = bindings(&server);
            (registrations(&pg) >= b - 20 && dbagent_alarm(&server).is_none()).then_some(())
        },
    );
    eprintln!("PostgreSQL back: caught up after {:?}", back.elapsed());

    // Hung: connections open, nothing answers.
    pg.pause();
    let paused = Instant::now();
    let alarm = wait_or_report(
        "database alarm while hung",
        Duration::from_secs(10),
        || report(&server, &pg, &load),
        || dbagent_alarm(&server).filter(|a| a.contains("database unreachable")),
    );
    eprintln!("SIGSTOP: alarm after {:?}: {alarm}", paused.elapsed());
    let at_pause = bindings(&server);
    // The outage lasts 30 s; meanwhile the supervisor still sees a healthy dbagent.
    while paused.elapsed() < Duration::from_secs(30) {
        let dbagent = server.child("dbagent");
        assert_eq!(dbagent["state"], "ready", "{dbagent}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = bindings(&server) - at_pause;
    assert_eq!(server.child("dbagent")["restarts"], 0);
    pg.resume();
    let resumed = Instant::now();
    eprintln!("{during} registrations while PostgreSQL was hung");
    assert!(during > 500, "only {during} registrations during the hang");

    load.assert_all_ok(Duration::from_secs(120));
    wait_or_report(
        "every registration in PostgreSQL",
        Duration::from_secs(60),
        || report(&server, &pg, &load),
        || (registrations(&pg) == i64::from(USERS)).then_some(()),
    );
    eprintln!(
        "SIGCONT: all {USERS} rows after {:?}; whole test {:?}",
        resumed.elapsed(),
        test_started.elapsed()
    );
    assert_each_once(&pg, FIRST, USERS);
    wait_or_report(
        "alarm cleared",
        Duration::from_secs(10),
        || report(&server, &pg, &load),
        || dbagent_alarm(&server).is_none().then_some(()),
    );
    eprintln!("{}", outage_lines(&server));
}

#[test]
fn dbagent_killed_under_load_comes_back_and_resumes_its_journal() {
    const FIRST: u32 = 50000;
    const USERS: u32 = 900;
    let pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    pg.wait_schema();
    let list = users(FIRST, USERS);
    insert_users(&pg, &list);
    wait_for("extensions published", Duration::from_secs(10), || {
        (server.status()["extensions"] == u64::from(USERS)).then_some(())
    });
    let mut load = RegisterLoad::spawn(&server, &list, 60);
    wait_or_report(
        "registrations flowing",
        Duration::from_secs(20),
        || report(&server, &pg, &load),
        || (registrations(&pg) >= 100).then_some(()),
    );
    for round in 0..2 {
        let pid = server.pid_of("dbagent");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed = Instant::now();
        wait_or_report(
            "dbagent back",
            Duration::from_secs(10),
            || report(&server, &pg, &load),
            || {
                let c = server.child("dbagent");
                (c["pid"].as_u64().is_some_and(|p| p != u64::from(pid)) && c["state"] == "ready")
                    .then_some(())
            },
        );
        eprintln!(
            "kill -9 #{round}: dbagent ready again after {:?}",
            killed.elapsed()
        );
        let at = bindings(&server);
        wait_or_report(
            "more registrations",
            Duration::from_secs(20),
            || report(&server, &pg, &load),
            || (bindings(&server) >= at + 100).then_some(()),
        );
    }
    load.assert_all_ok(Duration::from_secs(60));
    wait_or_report(
        "every registration in PostgreSQL",
        Duration::from_secs(30),
        || report(&server, &pg, &load),
        || (registrations(&pg) == i64::from(USERS)).then_some(()),
    );
    assert_each_once(&pg, FIRST, USERS);
    eprintln!("{}", outage_lines(&server));
}
