//! A full disk under the state directory loses no call record. The state directory is a
//! small tmpfs in a mount namespace of the server's own (so nothing stays mounted if the test
//! dies), filled up from outside through `/proc/<pid>/root`. Needs root, as CI runs.
//!
//! With PostgreSQL away as well, the records of calls made while the disk is full live only
//! in the dbagent's buffer and in the supervisor's unacknowledged queue: the dbagent is
//! killed meanwhile, its successor gets them again, and once the disk and the database are
//! back every one of them is in PostgreSQL, once.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::attempt::{records, Attempts};
use common::postgres::{
    dbagent_alarm, log_tail, setup_with, wait_database_unreachable, wait_or_report, Postgres,
};
use common::Server;

/// Runs the supervisor in a mount namespace of its own with a 512 KiB tmpfs on its state
/// directory.
fn in_small_tmpfs(cmd: Command) -> Command {
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let config = PathBuf::from(&args[2]);
    let dir = config.parent().unwrap();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("sipcraft.log"))
        .unwrap();
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mkdir -p \"$0\" && mount -t tmpfs -o size=512k,mode=0700 tmpfs \"$0\" && exec \"$@\"")
        .arg(dir.join("state"))
        .arg(cmd.get_program())
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stderr(log);
    wrapped
}

/// Fills the server's state directory (seen through its mount namespace) until the disk
/// refuses more; returns the filler's path.
fn fill_disk(server: &Server) -> PathBuf {
    let state = server.dir.path().join("state");
    let inside = Path::new("/proc")
        .join(server.supervisor_pid().to_string())
        .join("root")
        .join(state.strip_prefix("/").unwrap());
    let path = inside.join("filler");
    let mut f = std::fs::File::create(&path).expect("the state directory, through /proc");
    let chunk = vec![0u8; 16 << 10];
    let err = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            break e;
        }
    };
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::StorageFull,
        "filled to the brim: {err}"
    );
    path
}

/// These tests mount a tmpfs in a mount namespace: root with CAP_SYS_ADMIN, as CI has.
fn require_mount() {
    let can_mount = Command::new("unshare")
        .args(["--mount", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        nix::unistd::geteuid().is_root() && can_mount,
        "this test mounts a tmpfs in a mount namespace: run it as root with CAP_SYS_ADMIN, \
         as CI does"
    );
}

/// Waits until the dbagent reports its journal writes failing.
fn wait_journal_failing(server: &Server) {
    wait_or_report(
        "journal writes failing",
        Duration::from_secs(5),
        || log_tail(server, 40),
        || dbagent_alarm(server).filter(|a| a.contains("journal writes FAILING")),
    );
}

/// Removes the filler and waits until the dbagent's journal writes work again.
fn free_disk(server: &Server, filler: &Path) {
    std::fs::remove_file(filler).unwrap();
    wait_or_report(
        "journal writes again",
        Duration::from_secs(5),
        || log_tail(server, 40),
        || {
            let alarm = dbagent_alarm(server).unwrap_or_default();
            (!alarm.contains("FAILING")).then_some(())
        },
    );
}

/// The call records the supervisor holds for the dbagent, unacknowledged.
fn held_for_dbagent(server: &Server) -> Option<u64> {
    let status = server.try_status()?;
    status["children"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "dbagent")?["held_records"]
        .as_u64()
}

#[test]
fn call_records_survive_a_full_disk_a_killed_dbagent_and_a_dead_database() {
    require_mount();
    let mut pg = Postgres::start();
    let mut setup = setup_with(&pg);
    // Segments of 8 KiB: the calls below pass one while the disk is full.
    setup.extra += "[dbagent]\njournal_max_bytes = 65536\n\n";
    let server = Server::spawn_with(setup, in_small_tmpfs);
    server.wait_all_ready();
    let mut calls = Attempts::publish(&server, &pg, "3601", "3602");
    let report = || log_tail(&server, 40);
    calls.make(2);
    wait_or_report("records while up", Duration::from_secs(5), report, || {
        (records(&pg) == 2).then_some(())
    });

    pg.kill();
    wait_database_unreachable(&server, "database alarm");
    let filler = fill_disk(&server);
    calls.make(60);
    wait_journal_failing(&server);

    // The records are in no file yet: a new dbagent gets them from the supervisor again.
    let old = server.pid_of("dbagent");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_or_report(
        "a new dbagent, failing too",
        Duration::from_secs(15),
        report,
        || {
            let alarm = dbagent_alarm(&server)?;
            let status = server.try_status()?;
            let child = status["children"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "dbagent")?;
            let pid = child["pid"].as_u64().unwrap_or(0) as u32;
            (pid != 0 && pid != old && alarm.contains("journal writes FAILING")).then_some(())
        },
    );

    free_disk(&server, &filler);
    pg.start_again();
    wait_or_report(
        "every record in PostgreSQL",
        Duration::from_secs(20),
        report,
        || (records(&pg) == 62).then_some(()),
    );
    let summary = pg.psql(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT call_id), min(callee), \
         max(callee) FROM call_records",
    );
    assert_eq!(summary, "62|62|62|3602|3602", "{}", report());
    let log = server.log();
    for wrong in ["CALL RECORDS DROPPED", "JOURNAL FULL", "cannot encode"] {
        assert!(!log.contains(wrong), "{wrong}:\n{}", report());
    }
    assert!(
        log.contains("No space left on device"),
        "the disk was full:\n{}",
        report()
    );
}

/// With PostgreSQL up, a full disk holds back no call record the database has: the
/// supervisor stops holding the records of calls made while journal writes fail once
/// PostgreSQL took them. (It held them until the disk had room again, and past 10,000 it
/// dropped new ones although the database had every one.)
#[test]
fn a_full_disk_holds_back_no_call_record_the_database_has() {
    require_mount();
    let pg = Postgres::start();
    let server = Server::spawn_with(setup_with(&pg), in_small_tmpfs);
    server.wait_all_ready();
    let mut calls = Attempts::publish(&server, &pg, "3611", "3612");
    let report = || log_tail(&server, 40);
    let filler = fill_disk(&server);
    let mut made = 30;
    calls.make(made);
    wait_journal_failing(&server);
    wait_or_report(
        "every record in PostgreSQL",
        Duration::from_secs(10),
        report,
        || (records(&pg) == i64::from(made)).then_some(()),
    );
    wait_or_report(
        "nothing held for the dbagent",
        Duration::from_secs(5),
        || format!("held: {:?}\n{}", held_for_dbagent(&server), report()),
        || (held_for_dbagent(&server) == Some(0)).then_some(()),
    );
    // The disk still refuses writes: the database let them go, not the journal.
    assert!(
        dbagent_alarm(&server).is_some_and(|a| a.contains("journal writes FAILING")),
        "{}",
        report()
    );

    free_disk(&server, &filler);
    calls.make(1);
    made += 1;
    wait_or_report(
        "the record made after",
        Duration::from_secs(10),
        report,
        || (records(&pg) == i64::from(made) && held_for_dbagent(&server) == Some(0)).then_some(()),
    );
    let summary = pg.psql("SELECT count(*) = count(DISTINCT id) FROM call_records");
    assert_eq!(summary, "t", "each record once\n{}", report());
}
