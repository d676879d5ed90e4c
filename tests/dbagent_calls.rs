//! Call records reach PostgreSQL exactly once, including those made while it was killed and
//! while it was hung (SIGSTOP). The calls are to an extension with no registration: the
//! proxy authenticates the caller, answers 480 and records the attempt.

mod common;

use std::time::Duration;

use common::attempt::call;
use common::postgres::{dbagent_alarm, log_tail, setup_with, wait_or_report, Postgres};
use common::{wait_for, Server};

fn records(pg: &Postgres) -> i64 {
    pg.count("SELECT count(*) FROM call_records")
}

#[test]
fn call_records_made_during_outages_reach_postgres_exactly_once() {
    let mut pg = Postgres::start();
    let server = Server::start(setup_with(&pg));
    pg.wait_schema();
    pg.psql("INSERT INTO extensions (number, password) VALUES ('3501', 'caller'), ('3502', 'x')");
    wait_for("extensions published", Duration::from_secs(5), || {
        (server.status()["extensions"] == 2u64).then_some(())
    });
    let report = || log_tail(&server, 40);
    let mut n = 0;
    for _ in 0..2 {
        n += 1;
        call(&server, "3501", "caller", "3502", n);
    }
    wait_or_report("records while up", Duration::from_secs(5), report, || {
        (records(&pg) == 2).then_some(())
    });

    pg.kill();
    wait_for("database alarm", Duration::from_secs(10), || {
        dbagent_alarm(&server).filter(|a| a.contains("database unreachable"))
    });
    for _ in 0..10 {
        n += 1;
        call(&server, "3501", "caller", "3502", n);
    }
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
    wait_for("database alarm while hung", Duration::from_secs(10), || {
        dbagent_alarm(&server).filter(|a| a.contains("database unreachable"))
    });
    for _ in 0..10 {
        n += 1;
        call(&server, "3501", "caller", "3502", n);
    }
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
