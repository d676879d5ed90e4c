//! Call records reach PostgreSQL exactly once, including those made while it was killed and
//! while it was hung (SIGSTOP). The calls are to an extension with no registration: the
//! proxy authenticates the caller, answers 480 and records the attempt.

mod common;

use std::time::Duration;

use common::attempt::{records, Attempts};
use common::postgres::{
    dbagent_alarm, log_tail, setup_with, wait_database_unreachable, wait_or_report, Postgres,
};
use common::{wait_for, Server};

#[test]
fn call_records_made_during_outages_reach_postgres_exactly_once() {
    let mut pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    let mut calls = Attempts::publish(&server, &pg, "3501", "3502");
    let report = || log_tail(&server, 40);
    calls.make(2);
    wait_or_report("records while up", Duration::from_secs(5), report, || {
        (records(&pg) == 2).then_some(())
    });

    pg.kill();
    wait_database_unreachable(&server, "database alarm");
    calls.make(10);
    pg.start_again();
    wait_or_report(
        "records after the kill",
        Duration::from_secs(15),
        report,
        || (records(&pg) == 12).then_some(()),
    );

    wait_for("alarm cleared", Duration::from_secs(10), || {
        dbagent_alarm(&server).is_none().then_some(())
    });
    pg.pause();
    wait_database_unreachable(&server, "database alarm while hung");
    calls.make(10);
    pg.resume();
    wait_or_report(
        "records after the hang",
        Duration::from_secs(15),
        report,
        || (records(&pg) == 22).then_some(()),
    );
    let summary = pg.psql(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT call_id), min(final_status), \
         max(final_status), min(caller), max(callee) FROM call_records",
    );
    assert_eq!(summary, "22|22|22|480|480|3501|3502");
}
