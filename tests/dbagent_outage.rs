//! The dbagent under a steady SIPp load of REGISTERs and calls while PostgreSQL is killed,
//! then hung (SIGSTOP) for 30 s, and while the dbagent itself is killed: no REGISTER and no
//! call fails, and afterwards every registration and every call record made meanwhile is in
//! PostgreSQL exactly once.
//!
//! The calls: a SIPp caller (`uac_call_auth.xml`: INVITE, 407, INVITE with credentials,
//! 180, 200, ACK, BYE, one UDP socket per call so they spread over both UDP workers) to a
//! SIPp callee registered with sipcraft (`uas_register.xml` + `uas_answer_retrans.xml`, which
//! absorbs the INVITE and ACK retransmissions a stalled machine causes), both extensions in
//! PostgreSQL. The caller runs until the test has seen the outage through,
//! then stops placing calls (SIGUSR1) and finishes those in flight.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::postgres::{
    dbagent_alarm, insert_users, log_tail, setup_with, users, wait_or_report, Postgres,
    RegisterLoad,
};
use common::sipp::{self, Sipp, SippCmd, Transport};
use common::{wait_for, Server};

/// Calls per second of the call load: a steady, modest rate beside the REGISTERs.
const CALL_RATE: u32 = 25;
/// Upper bound of calls one load places (SIPp's `-m`); the test stops it well before.
const CALLS_MAX: u32 = 4000;

/// A SIPp caller calling a registered SIPp callee through sipcraft, at [`CALL_RATE`].
struct CallLoad {
    caller: Sipp,
    callee: Sipp,
    callee_number: String,
}

impl CallLoad {
    /// Registers the callee (its binding replicated to every worker) and starts the caller.
    /// Both extensions must be published already; passwords are `pw<number>`.
    fn start(server: &Server, caller: &str, callee: &str) -> CallLoad {
        let bindings = bindings(server);
        let callee_sipp = sipp::start_callee(
            "callee",
            server.udp_addr(),
            Transport::Udp,
            callee,
            &format!("pw{callee}"),
            "uas_answer_retrans.xml",
        );
        sipp::wait_bindings(server, bindings as u64 + 1);
        let caller_sipp = SippCmd::new("caller", "uac_call_auth.xml", server.udp_addr())
            .transport(Transport::UdpPerCall)
            .inf_line(&format!(
                "{caller};[authentication username={caller} password=pw{caller}];{callee}"
            ))
            .args(&[
                "-m",
                &CALLS_MAX.to_string(),
                "-r",
                &CALL_RATE.to_string(),
                "-l",
                "200",
                "-d",
                "200",
            ])
            // A lost message fails its call after 10 s instead of holding it; the run is
            // bounded in any case.
            .args(&[
                "-recv_timeout",
                "10000",
                "-timeout",
                "300s",
                "-timeout_error",
            ])
            // A minute of calls: the error log names failed calls; no full message trace.
            .trace_msg(false)
            .spawn();
        CallLoad {
            caller: caller_sipp,
            callee: callee_sipp,
            callee_number: callee.to_owned(),
        }
    }

    /// Calls completed so far (SIPp writes its statistics every second).
    fn completed(&self) -> u64 {
        self.caller.stats().map_or(0, |s| s.successful)
    }

    fn report(&self, server: &Server) -> String {
        sipp::failure_report(server, &self.caller, &[&self.callee])
    }

    /// Stops placing calls, lets those in flight end, and asserts that every call placed
    /// succeeded and was answered by the callee. Returns the answered Call-IDs.
    fn finish(&mut self, server: &Server) -> BTreeSet<String> {
        self.caller.stop_placing_calls();
        let status = self.caller.wait(Duration::from_secs(60));
        let stats = self.caller.stats().unwrap_or_default();
        assert!(
            status.success() && stats.failed == 0 && stats.successful == stats.created,
            "calls failed: {} created, {} succeeded, {} failed {:?} (exit {status:?})\n{}",
            stats.created,
            stats.successful,
            stats.failed,
            stats.failures,
            self.report(server)
        );
        let answered = wait_or_report(
            "the callee logged every call",
            Duration::from_secs(5),
            || self.report(server),
            || {
                let ids: BTreeSet<String> =
                    self.callee.logged_ids("ANSWERED").into_iter().collect();
                (ids.len() as u64 >= stats.successful).then_some(ids)
            },
        );
        assert_eq!(
            answered.len() as u64,
            stats.successful,
            "one answered call per call placed\n{}",
            self.report(server)
        );
        answered
    }
}

/// Seconds since the epoch, for comparing with the `timestamptz` columns.
fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Records in PostgreSQL of calls started in `[from, to)` (seconds since the epoch).
fn records_started(pg: &Postgres, from: f64, to: f64) -> i64 {
    pg.count(&format!(
        "SELECT count(*) FROM call_records \
         WHERE started_at >= to_timestamp({from}) AND started_at < to_timestamp({to})"
    ))
}

/// Waits until PostgreSQL holds a complete record (answered and ended by the BYE) of every
/// answered call, then asserts that it holds exactly those: one row per Call-ID, each 200,
/// every one complete, even for a half sent to the dbagent just before it was killed (the
/// hub keeps each record until the dbagent has it on disk, and sends it again otherwise).
fn assert_call_records_once(
    pg: &Postgres,
    server: &Server,
    load: &CallLoad,
    answered: &BTreeSet<String>,
) {
    let n = answered.len() as i64;
    let complete_sql = format!(
        "SELECT count(*) FROM call_records WHERE callee = '{}' \
         AND answered_at IS NOT NULL AND ended_at IS NOT NULL",
        load.callee_number
    );
    let complete = |pg: &Postgres| pg.count(&complete_sql);
    let missing = || {
        let rows: BTreeSet<String> = pg
            .try_psql("SELECT call_id FROM call_records")
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let lacking: Vec<&String> = answered.difference(&rows).take(10).collect();
        let incomplete_ids = pg
            .try_psql(
                "SELECT call_id FROM call_records \
                 WHERE answered_at IS NULL OR ended_at IS NULL LIMIT 3",
            )
            .unwrap_or_default();
        // The log lines of those calls, and of the dbagent coming and going.
        let ids: Vec<&str> = lacking
            .iter()
            .take(1)
            .map(|s| s.as_str())
            .chain(incomplete_ids.lines())
            .collect();
        let first = server
            .log()
            .lines()
            .filter(|l| {
                ids.iter().any(|id| l.contains(id))
                    || l.contains("local state loaded")
                    || l.contains("exited")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let incomplete = pg
            .try_psql(
                "SELECT id, call_id, started_at, answered_at, ended_at, final_status, reason, \
                 worker, seq FROM call_records \
                 WHERE answered_at IS NULL OR ended_at IS NULL ORDER BY started_at LIMIT 10",
            )
            .unwrap_or_else(|e| e);
        format!(
            "{} of {n} calls have no row; the first: {lacking:?}\nlog lines of the calls below \
             and of the dbagent's starts:\n{}\n\
             incomplete rows (no answer or no end):\n{incomplete}\n{}",
            answered.difference(&rows).count(),
            first,
            log_tail(server, 40)
        )
    };
    wait_or_report(
        "a complete record of every call in PostgreSQL",
        Duration::from_secs(60),
        missing,
        || (complete(pg) >= n).then_some(()),
    );
    let summary = pg.psql(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT call_id), min(final_status), \
         max(final_status) FROM call_records",
    );
    assert_eq!(
        summary,
        format!("{n}|{n}|{n}|200|200"),
        "rows, ids, Call-IDs, status range"
    );
    let rows: BTreeSet<String> = pg
        .psql("SELECT call_id FROM call_records")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        &rows == answered,
        "the records are the calls: {} rows not answered, {} answered without a row",
        rows.difference(answered).count(),
        answered.difference(&rows).count()
    );
}

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
fn report(server: &Server, pg: &Postgres, load: &RegisterLoad, calls: &CallLoad) -> String {
    format!(
        "status: {}\nrows: {:?}\nSIPp:\n{}\ncalls:\n{}\nlog:\n{}",
        server.try_status().map_or("none".into(), |s| s.to_string()),
        pg.try_psql("SELECT count(*) FROM registrations"),
        load.screen(),
        calls.caller.report(),
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

/// Assert that the call load completes calls while a condition holds: `n` more calls.
fn wait_calls(server: &Server, calls: &CallLoad, what: &str, n: u64, within: Duration) {
    let at = calls.completed();
    wait_or_report(
        what,
        within,
        || calls.report(server),
        || (calls.completed() >= at + n).then_some(()),
    );
}

#[test]
fn postgres_killed_then_hung_under_register_and_call_load_loses_nothing() {
    const FIRST: u32 = 40000;
    const USERS: u32 = 2400;
    const CALLER: &str = "39001";
    const CALLEE: &str = "39002";
    let mut pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    pg.wait_schema();
    let list = users(FIRST, USERS);
    insert_users(&pg, &list);
    insert_users(
        &pg,
        &[CALLER, CALLEE].map(|n| (n.to_owned(), format!("pw{n}"))),
    );
    wait_for("extensions published", Duration::from_secs(10), || {
        (server.status()["extensions"] == u64::from(USERS + 2)).then_some(())
    });
    let test_started = Instant::now();
    let mut calls = CallLoad::start(&server, CALLER, CALLEE);
    let mut load = RegisterLoad::spawn(&server, &list, 40);
    wait_or_report(
        "registrations flowing into PostgreSQL",
        Duration::from_secs(20),
        || report(&server, &pg, &load, &calls),
        || (registrations(&pg) >= 100).then_some(()),
    );
    wait_calls(
        &server,
        &calls,
        "calls flowing",
        50,
        Duration::from_secs(20),
    );
    wait_or_report(
        "call records flowing into PostgreSQL",
        Duration::from_secs(10),
        || report(&server, &pg, &load, &calls),
        || (pg.count("SELECT count(*) FROM call_records") >= 20).then_some(()),
    );

    // Killed: connections refused until it is back.
    pg.kill();
    let killed = Instant::now();
    let killed_at = epoch_s();
    let calls_at_kill = calls.completed();
    let alarm = wait_or_report(
        "database alarm",
        Duration::from_secs(10),
        || report(&server, &pg, &load, &calls),
        || dbagent_alarm(&server).filter(|a| a.contains("database unreachable")),
    );
    eprintln!("kill -9: alarm after {:?}: {alarm}", killed.elapsed());
    let at_kill = bindings(&server);
    wait_or_report(
        "registrations during the outage",
        Duration::from_secs(30),
        || report(&server, &pg, &load, &calls),
        || (bindings(&server) >= at_kill + 150).then_some(()),
    );
    wait_calls(
        &server,
        &calls,
        "calls while PostgreSQL is dead",
        100,
        Duration::from_secs(30),
    );
    pg.start_again();
    let back = Instant::now();
    let back_at = epoch_s();
    let calls_while_dead = calls.completed() - calls_at_kill;
    wait_or_report(
        "journal replayed after the kill",
        Duration::from_secs(20),
        || report(&server, &pg, &load, &calls),
        || {
            let b = bindings(&server);
            (registrations(&pg) >= b - 20 && dbagent_alarm(&server).is_none()).then_some(())
        },
    );
    eprintln!("PostgreSQL back: caught up after {:?}", back.elapsed());

    // Hung: connections open, nothing answers.
    pg.pause();
    let paused = Instant::now();
    let paused_at = epoch_s();
    let calls_at_pause = calls.completed();
    let alarm = wait_or_report(
        "database alarm while hung",
        Duration::from_secs(10),
        || report(&server, &pg, &load, &calls),
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
    let calls_while_hung = calls.completed() - calls_at_pause;
    assert_eq!(server.child("dbagent")["restarts"], 0);
    pg.resume();
    let resumed = Instant::now();
    let resumed_at = epoch_s();
    eprintln!(
        "{during} registrations and {calls_while_hung} calls while PostgreSQL was hung; \
         {calls_while_dead} calls while it was dead"
    );
    assert!(during > 500, "only {during} registrations during the hang");
    // 25 calls/s for 30 s: 750.
    assert!(
        calls_while_hung > 500,
        "only {calls_while_hung} calls during the hang\n{}",
        calls.report(&server)
    );
    // The calls go on a little after the database is back, then end.
    wait_calls(
        &server,
        &calls,
        "calls after the hang",
        50,
        Duration::from_secs(20),
    );

    load.assert_all_ok(Duration::from_secs(120));
    let answered = calls.finish(&server);
    wait_or_report(
        "every registration in PostgreSQL",
        Duration::from_secs(60),
        || report(&server, &pg, &load, &calls),
        || (registrations(&pg) == i64::from(USERS + 1)).then_some(()),
    );
    eprintln!(
        "SIGCONT: all {} registration rows after {:?}",
        USERS + 1,
        resumed.elapsed(),
    );
    assert_each_once(&pg, FIRST, USERS);
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM registrations WHERE aor = '{CALLEE}'"
        )),
        "1",
        "the callee's registration"
    );
    assert_call_records_once(&pg, &server, &calls, &answered);
    let dead = records_started(&pg, killed_at, back_at);
    let hung = records_started(&pg, paused_at, resumed_at);
    eprintln!(
        "{} calls, 0 failed, each recorded once: {dead} started while PostgreSQL was dead, \
         {hung} while it was hung; all in after {:?}; whole test {:?}",
        answered.len(),
        resumed.elapsed(),
        test_started.elapsed()
    );
    assert!(
        dead >= 50 && hung > 500,
        "records of calls made during the outages: {dead} dead, {hung} hung"
    );
    wait_or_report(
        "alarm cleared",
        Duration::from_secs(10),
        || report(&server, &pg, &load, &calls),
        || dbagent_alarm(&server).is_none().then_some(()),
    );
    eprintln!("{}", outage_lines(&server));
}

#[test]
fn dbagent_killed_under_register_and_call_load_comes_back_and_resumes_its_journal() {
    dbagent_kills_under_load(2, "");
}

/// The dbagent killed ten times a second apart under the same load: every call record is
/// complete, even a half sent to the dbagent a few milliseconds before its kill -9 (the hub
/// keeps each record until the dbagent has journaled it, and sends it again to its
/// successor).
#[test]
fn call_records_survive_repeated_dbagent_kills() {
    dbagent_kills_under_load(
        10,
        "[supervisor]\nhealthy_after_s = 1\ncrash_loop_restarts = 1000\nbackoff_max_ms = 200\n\n",
    );
}

/// `rounds` kill -9 of the dbagent under 60 REGISTERs/s and 25 calls/s: every call record
/// complete, even one sent just before a kill.
fn dbagent_kills_under_load(rounds: u32, extra: &str) {
    const FIRST: u32 = 50000;
    const USERS: u32 = 900;
    const CALLER: &str = "59001";
    const CALLEE: &str = "59002";
    let pg = Postgres::start();
    let mut setup = setup_with(&pg);
    setup.extra += extra;
    let server = Server::start(setup);
    pg.wait_schema();
    let list = users(FIRST, USERS);
    insert_users(&pg, &list);
    insert_users(
        &pg,
        &[CALLER, CALLEE].map(|n| (n.to_owned(), format!("pw{n}"))),
    );
    wait_for("extensions published", Duration::from_secs(10), || {
        (server.status()["extensions"] == u64::from(USERS + 2)).then_some(())
    });
    let mut calls = CallLoad::start(&server, CALLER, CALLEE);
    let mut load = RegisterLoad::spawn(&server, &list, 60);
    wait_or_report(
        "registrations flowing",
        Duration::from_secs(20),
        || report(&server, &pg, &load, &calls),
        || (registrations(&pg) >= 100).then_some(()),
    );
    wait_calls(
        &server,
        &calls,
        "calls flowing",
        50,
        Duration::from_secs(20),
    );
    let mut windows = Vec::new();
    for round in 0..rounds {
        let pid = server.pid_of("dbagent");
        let killed_at = epoch_s();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let killed = Instant::now();
        wait_or_report(
            "dbagent back",
            Duration::from_secs(10),
            || report(&server, &pg, &load, &calls),
            || {
                let c = server.child("dbagent");
                (c["pid"].as_u64().is_some_and(|p| p != u64::from(pid)) && c["state"] == "ready")
                    .then_some(())
            },
        );
        windows.push((killed_at, epoch_s()));
        eprintln!(
            "kill -9 #{round}: dbagent ready again after {:?}",
            killed.elapsed()
        );
        let at = bindings(&server);
        wait_or_report(
            "more registrations",
            Duration::from_secs(20),
            || report(&server, &pg, &load, &calls),
            || (bindings(&server) >= at + 200 / u64::from(rounds) as i64).then_some(()),
        );
        wait_calls(
            &server,
            &calls,
            "more calls",
            100 / u64::from(rounds),
            Duration::from_secs(20),
        );
    }
    load.assert_all_ok(Duration::from_secs(60));
    let answered = calls.finish(&server);
    wait_or_report(
        "every registration in PostgreSQL",
        Duration::from_secs(30),
        || report(&server, &pg, &load, &calls),
        || (registrations(&pg) == i64::from(USERS + 1)).then_some(()),
    );
    assert_each_once(&pg, FIRST, USERS);
    assert_call_records_once(&pg, &server, &calls, &answered);
    let while_away: Vec<i64> = windows
        .iter()
        .map(|&(from, to)| records_started(&pg, from, to))
        .collect();
    let resent = server
        .log()
        .lines()
        .filter(|l| l.contains("sending them again"))
        .count();
    eprintln!(
        "{} calls, 0 failed, each with its complete row once; started while the dbagent was \
         away: {while_away:?}; {resent} times the hub sent unacknowledged records again",
        answered.len()
    );
    eprintln!("{}", outage_lines(&server));
}
