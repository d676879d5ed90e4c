//! Call load through sipcraft's stateful proxy (issue 4): SIPp caller -> sipcraft -> SIPp
//! callee (registered), 1000 calls with 0 failures over UDP<->UDP, UDP<->TCP, TCP<->UDP and
//! TCP<->TCP with 2 UDP workers; and kill -9 of one UDP worker under a steady call load.
//!
//! Each call: INVITE, 407, ACK, INVITE with Proxy-Authorization, 100, 180, 200, ACK and BYE
//! along the Record-Route, 200 (tests/sipp/uac_call_auth.xml, uas_answer_retrans.xml: the
//! callee absorbs the INVITE retransmissions a stalled machine causes). The UDP caller
//! uses one socket per call (SIPp `-t un`). Both UDP workers read the shared socket, so
//! about half of the responses land on the worker that does not hold the call and are
//! handed over, and so are retransmissions and ACKs that land there.
//! The tests here run one at a time (they load the machine); loopback only.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::sipp::{self, SippCmd, Transport};
use common::{Server, Setup};

const CALLS: u64 = 1000;

/// One load test at a time.
static LOAD: Mutex<()> = Mutex::new(());

fn setup() -> Setup {
    Setup {
        udp_workers: 2,
        tcp_workers: 1,
        // SIPp sends from one address at a high rate: it is trusted, not rate limited.
        extra: "[security]\ntrusted_ips = [\"127.0.0.0/8\"]\n".into(),
        ..Setup::default()
    }
}

fn caller_transport(t: Transport) -> Transport {
    match t {
        Transport::Udp => Transport::UdpPerCall,
        other => other,
    }
}

/// 1000 calls from 1001 to 1002 at 100 calls/s, at most 100 at once, each held 100 ms;
/// every call completes, the callee answered every one, and afterwards no transaction is
/// left alive (over UDP they linger by Timer J, 32 s).
fn thousand_calls(caller_tp: Transport, callee_tp: Transport) {
    let _one = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(setup());
    let callee = sipp::start_callee(
        "callee",
        server.udp_addr(),
        callee_tp,
        "1002",
        "pw1002",
        "uas_answer_retrans.xml",
    );
    sipp::wait_bindings(&server, 1);
    let started = Instant::now();
    let mut caller = SippCmd::new("caller", "uac_call_auth.xml", server.udp_addr())
        .transport(caller_transport(caller_tp))
        .inf_line("1001;[authentication username=1001 password=pw1001];1002")
        .args(&[
            "-m",
            &CALLS.to_string(),
            "-r",
            "100",
            "-l",
            "100",
            "-d",
            "100",
        ])
        .args(&[
            "-recv_timeout",
            "10000",
            "-timeout",
            "90s",
            "-timeout_error",
        ])
        .run(Duration::from_secs(100));
    let took = started.elapsed();
    sipp::assert_calls(&server, &mut caller, &[&callee], CALLS);
    let deadline = Instant::now() + Duration::from_secs(5);
    while (callee.count_logs("ANSWERED") as u64) < CALLS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        callee.count_logs("ANSWERED") as u64,
        CALLS,
        "the callee answered and saw ACK and BYE of every call\n{}",
        sipp::failure_report(&server, &caller, &[&callee])
    );
    eprintln!(
        "{CALLS} calls {caller_tp:?} -> {callee_tp:?}: 0 failed, {:?}, {} retransmissions",
        took,
        caller.stats().unwrap_or_default().retransmissions
    );
    // Answered INVITE transactions stay in RFC 6026's Accepted state for 64*T1 (Timers L
    // and M: 32 s) on every transport, to absorb retransmitted 2xx; then they must be gone.
    sipp::wait_idle(&server, Duration::from_secs(40));
}

#[test]
fn thousand_calls_udp_to_udp() {
    thousand_calls(Transport::Udp, Transport::Udp);
}

#[test]
fn thousand_calls_udp_to_tcp() {
    thousand_calls(Transport::Udp, Transport::Tcp);
}

#[test]
fn thousand_calls_tcp_to_udp() {
    thousand_calls(Transport::Tcp, Transport::Udp);
}

#[test]
fn thousand_calls_tcp_to_tcp() {
    thousand_calls(Transport::Tcp, Transport::Tcp);
}

/// kill -9 of udp-1 during a steady load of 50 calls/s (each held 500 ms, so about 30 in
/// flight, half of them on each worker): the calls keep completing through udp-0 and the
/// restarted udp-1; only calls in flight at the kill may fail (the test prints how many);
/// udp-1 is back, ready, in under 1 s.
#[test]
fn kill_udp_worker_during_call_load() {
    let _one = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(setup());
    let callee = sipp::start_callee(
        "callee",
        server.udp_addr(),
        Transport::Udp,
        "1002",
        "pw1002",
        "uas_answer_retrans.xml",
    );
    sipp::wait_bindings(&server, 1);
    let mut caller = SippCmd::new("caller", "uac_call_auth.xml", server.udp_addr())
        .transport(Transport::UdpPerCall)
        .inf_line("1001;[authentication username=1001 password=pw1001];1002")
        .args(&[
            "-m",
            &CALLS.to_string(),
            "-r",
            "50",
            "-l",
            "200",
            "-d",
            "500",
        ])
        // A call that lost its transaction times out on its next receive, fails, and SIPp
        // moves on; the run itself is bounded.
        .args(&[
            "-recv_timeout",
            "8000",
            "-timeout",
            "120s",
            "-timeout_error",
        ])
        // 20 s of calls: the message trace stays off, the error log names failed calls.
        .trace_msg(false)
        .spawn();

    // Steady load: 200 calls completed (SIPp writes its statistics every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = caller.stats().map_or(0, |s| s.successful);
        if done >= 200 {
            break;
        }
        if caller.try_wait().is_some() || Instant::now() >= deadline {
            panic!(
                "no steady call load before the kill ({done} calls completed)\n{}",
                sipp::failure_report(&server, &caller, &[&callee])
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rows_at_kill = caller.stat_rows().len();
    let before = caller.stats().unwrap_or_default();
    let old = server.pid_of("udp-1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    let back = loop {
        let child = server.try_status().and_then(|s| {
            s["children"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "udp-1")
                .cloned()
        });
        if let Some(c) = child {
            let pid = c["pid"].as_u64().unwrap_or(0) as u32;
            if pid != 0 && pid != old && c["state"] == "ready" {
                break killed.elapsed();
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "udp-1 not back within 10 s\n{}",
            sipp::last_lines(&server.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(10));
    };

    let status = caller.wait(Duration::from_secs(130));
    let stats = caller.stats().unwrap_or_default();
    // Calls in flight around the kill: the most SIPp counted at once from the second before
    // the kill to two seconds after it (calls started while udp-1 was down included).
    let rows = caller.stat_rows();
    let in_flight = rows
        .iter()
        .skip(rows_at_kill.saturating_sub(1))
        .take(4)
        .filter_map(|r| r.iter().find(|(n, _)| n == "CurrentCall"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(before.current)
        .max(before.current);
    eprintln!(
        "kill -9 udp-1 under {CALLS} calls at 50/s: {} completed, {} failed {:?}; \
         {} completed before the kill, about {in_flight} in flight at it; \
         udp-1 back and ready in {back:?}",
        stats.successful, stats.failed, stats.failures, before.successful
    );
    let report = || sipp::failure_report(&server, &caller, &[&callee]);
    assert!(
        status.code().is_some(),
        "SIPp ended by itself ({status:?})\n{}",
        report()
    );
    assert_eq!(
        stats.successful + stats.failed,
        CALLS,
        "every call ended\n{}",
        report()
    );
    assert!(
        stats.successful > before.successful + (CALLS - before.successful) / 2,
        "calls kept completing after the kill\n{}",
        report()
    );
    assert!(
        stats.failed <= in_flight,
        "only calls in flight at the kill may fail: {} failed, {in_flight} were in flight\n{}",
        stats.failed,
        report()
    );
    assert!(
        back < Duration::from_secs(1),
        "udp-1 back in {back:?}, not under 1 s"
    );
}
