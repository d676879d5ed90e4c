//! SIPp registers 1000 distinct extensions with MD5 digest, over UDP and over TCP, against
//! the real supervisor running 2 UDP workers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_for, Server, Setup};

const USERS: u32 = 1000;

fn setup() -> Setup {
    Setup {
        extensions: (0..USERS)
            .map(|i| ((10000 + i).to_string(), format!("secret{i}")))
            .collect(),
        // SIPp sends from one address at a high rate: it is trusted, not rate limited.
        extra: "[security]\ntrusted_ips = [\"127.0.0.0/8\"]\n".into(),
        ..Setup::default()
    }
}

fn run_sipp(server: &Server, transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for i in 0..USERS {
        let n = 10000 + i;
        text += &format!("{n};[authentication username={n} password=secret{i}];pbx.test\n");
    }
    std::fs::write(&csv, text).unwrap();
    let scenario = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sipp/register_digest.xml"
    );
    let out = Command::new("sipp")
        .current_dir(dir.path())
        .args(["-sf", scenario, "-inf"])
        .arg(&csv)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-t",
            transport,
            "-m",
            &USERS.to_string(),
        ])
        .args([
            "-r",
            "200",
            "-l",
            "100",
            "-timeout",
            "60s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ])
        .arg(format!("127.0.0.1:{}", server.port))
        .output()
        .expect("sipp is installed (make test-deps)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let errors = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("errors"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        out.status.success(),
        "sipp {transport} failed ({:?}):\n{}\n{}\nerrors:\n{}",
        out.status,
        stdout.lines().rev().take(40).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr),
        errors.chars().take(4000).collect::<String>()
    );
}

#[test]
fn sipp_registers_1000_extensions_over_udp() {
    let server = Server::start(setup());
    run_sipp(&server, "u1");
    wait_for("1000 bindings replicated", Duration::from_secs(5), || {
        (server.status()["bindings"] == u64::from(USERS)).then_some(())
    });
}

#[test]
fn sipp_registers_1000_extensions_over_tcp() {
    let server = Server::start(setup());
    run_sipp(&server, "t1");
    wait_for("1000 bindings replicated", Duration::from_secs(5), || {
        (server.status()["bindings"] == u64::from(USERS)).then_some(())
    });
}
