//! The supervisor as PID 1 (containers) and under systemd's notify protocol.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{alive, wait_for, Server, Setup};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Parent pid and command name of a process, from /proc.
fn stat(pid: u32) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let ppid = text[close + 2..].split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, comm))
}

fn children_of(parent: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            stat(pid)
                .filter(|(ppid, _)| *ppid == parent)
                .map(|(_, comm)| (pid, comm))
        })
        .collect()
}

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    let mut server = Server::spawn_with(Setup::default(), |cmd| {
        let mut wrapped = Command::new("unshare");
        wrapped.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
        wrapped.arg(cmd.get_program()).args(cmd.get_args());
        wrapped.stdin(std::process::Stdio::null());
        wrapped
            .stderr(std::fs::File::create(std::env::temp_dir().join("sipcraft-pid1.log")).unwrap());
        wrapped
    });
    let status = server.wait_all_ready();
    assert_eq!(
        status["supervisor_pid"], 1,
        "the supervisor is PID 1 in its namespace"
    );

    // The supervisor's pid as seen from here: the child of `unshare`.
    let unshare = server.supervisor_pid();
    let sup = wait_for("supervisor under unshare", Duration::from_secs(5), || {
        children_of(unshare)
            .into_iter()
            .find(|(_, c)| c == "sipcraft")
            .map(|(p, _)| p)
    });

    // A process inside the namespace starts a grandchild and exits: the orphan is
    // re-parented to the namespace's init, our supervisor.
    let out = Command::new("nsenter")
        .args([
            "-t",
            &sup.to_string(),
            "-p",
            "--",
            "sh",
            "-c",
            "sleep 300 </dev/null >/dev/null 2>&1 & exit 0",
        ])
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "nsenter: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let orphan = wait_for(
        "orphan adopted by the supervisor",
        Duration::from_secs(5),
        || {
            children_of(sup)
                .into_iter()
                .find(|(_, c)| c == "sleep")
                .map(|(p, _)| p)
        },
    );
    kill(Pid::from_raw(orphan as i32), Signal::SIGKILL).unwrap();
    wait_for(
        "orphan reaped, no zombie left",
        Duration::from_secs(5),
        || (!std::path::Path::new(&format!("/proc/{orphan}")).exists()).then_some(()),
    );

    let workers: Vec<u32> = children_of(sup).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        workers.len(),
        server.children_count(),
        "dbagent and workers run under PID 1"
    );
    kill(Pid::from_raw(sup as i32), Signal::SIGTERM).unwrap();
    let exit = server.wait_exit(Duration::from_secs(5));
    assert!(
        exit.success(),
        "unshare reports the supervisor's exit status: {exit:?}"
    );
    for pid in workers {
        assert!(!alive(pid), "child {pid} left behind");
    }
}

#[test]
fn systemd_gets_ready_after_the_children_and_a_steady_watchdog() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let setup = Setup {
        env: vec![
            ("NOTIFY_SOCKET".into(), sock_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
            // stderr is a file here, but the processes log as they would into the journal.
            ("JOURNAL_STREAM".into(), "8:12345".into()),
        ],
        ..Setup::default()
    };
    let server = Server::spawn(setup);

    let mut buf = [0u8; 4096];
    let mut messages = Vec::new();
    let mut ready_seen_with = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == "READY=1") && ready_seen_with.is_none() {
            // At READY=1, every child must already be ready.
            ready_seen_with = Some(server.status());
        }
        messages.push(msg);
        let watchdogs = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
        if ready_seen_with.is_some() && watchdogs >= 4 {
            break;
        }
    }
    let status = ready_seen_with.unwrap_or_else(|| panic!("no READY=1; got {messages:?}"));
    for c in status["children"].as_array().unwrap() {
        assert_eq!(c["state"], "ready", "READY=1 came before {c}");
    }
    assert!(
        messages.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 4,
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("STATUS=")),
        "{messages:?}"
    );
    // Children never talk to systemd themselves.
    assert!(
        messages.iter().all(|m| !m.contains("MAINPID")),
        "{messages:?}"
    );

    // Under the journal every line carries its syslog priority and no timestamp of its own:
    // the workers' start lines are info (<6>).
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>") && l.contains("worker serving")),
        "{log}"
    );
    for line in log.lines().filter(|l| !l.is_empty()) {
        let level = line.get(3..).unwrap_or("").split_whitespace().next();
        let expected = match level {
            Some("ERROR") => "<3>",
            Some("WARN") => "<4>",
            Some("INFO") => "<6>",
            _ => "<7>",
        };
        assert!(line.starts_with(expected), "{line:?} in\n{log}");
    }

    server.signal(Signal::SIGTERM);
    wait_for("STOPPING=1", Duration::from_secs(5), || {
        let n = sock.recv(&mut buf).ok()?;
        String::from_utf8_lossy(&buf[..n])
            .contains("STOPPING=1")
            .then_some(())
    });
}
