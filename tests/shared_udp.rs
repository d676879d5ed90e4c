//! The UDP workers of one address share one socket (Linux): whichever worker is free reads
//! the next datagram, and the claim table sends a transaction's retransmissions, its ACK
//! and its CANCEL to the worker that holds it, as a response goes to the worker its branch
//! names: straight to that worker's mailbox.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;

use common::ua::Ua;
use common::{Server, Setup};

const WAIT: Duration = Duration::from_secs(5);

/// The worker named in a response's `Server:` header (`sipcraft/0.1.0 (udp-1)`).
fn answering_worker(response: &str) -> Option<String> {
    let line = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("server:"))?;
    let open = line.rfind('(')?;
    Some(line[open + 1..].trim_end_matches(')').to_owned())
}

/// Sends OPTIONS number `n` of a series named `what` from `socket` to the server `to`.
fn send_options(socket: &UdpSocket, to: std::net::SocketAddr, what: &str, n: usize) {
    let local = socket.local_addr().expect("address");
    let options = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{what}-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{what}@pbx.test>;tag={what}{n}\r\nTo: <sip:{to}>\r\n\
         Call-ID: {what}-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    );
    socket.send_to(options.as_bytes(), to).expect("send");
}

#[test]
fn requests_from_one_phone_socket_are_read_by_every_udp_worker() {
    let server = Server::start(Setup::default());
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut seen = BTreeSet::new();
    let mut buf = vec![0u8; 65_536];
    // With one socket per worker the kernel would send every one of these to one worker.
    // Sent in bursts of 8: one at a time, the same worker would often read them all (the
    // first to get a CPU), while a burst finds it busy and goes to the other.
    for burst in 0..50 {
        for i in 0..8 {
            let n = burst * 8 + i;
            send_options(&socket, server.udp_addr(), "probe", n);
        }
        for _ in 0..8 {
            let (len, _) = socket.recv_from(&mut buf).expect("a response to OPTIONS");
            let response = String::from_utf8_lossy(&buf[..len]);
            assert!(response.starts_with("SIP/2.0 200"), "{response}");
            seen.extend(answering_worker(&response));
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["udp-0".to_owned(), "udp-1".to_owned()]),
        "400 requests from one socket, in bursts, were all answered by one worker"
    );
}

/// Bob (1002) registered and known to every worker; alice (1001) calling him, her INVITE
/// challenged and sent again with credentials (the 407's ACK must reach the worker holding
/// the challenge, or the 407 would come again).
fn alice_calls_bob(server: &Server) -> (Ua, Ua, common::ua::Invite) {
    let mut bob = Ua::udp("bob", server.udp_addr(), "1002");
    assert_eq!(bob.register(3600).status(), Some(200), "{}", bob.dump());
    server.wait_replicated();
    let mut alice = Ua::udp("alice", server.udp_addr(), "1001");
    let inv = alice.invite("1002");
    (alice, bob, inv)
}

#[test]
fn retransmissions_and_the_cancel_of_a_call_reach_the_worker_that_holds_it() {
    let server = Server::start(Setup::default());
    let (mut alice, mut bob, inv) = alice_calls_bob(&server);
    let ringing = bob.ringing();
    alice.expect_status(180, "INVITE");
    // Each copy of the INVITE, whichever worker reads it, is answered by the transaction
    // with its last provisional response: never forwarded again, never answered anew. The
    // copies go four at a time: one at a time, the same idle worker would often read them
    // all, while a burst finds it busy.
    for round in 0..10 {
        for _ in 0..4 {
            alice.resend_last();
        }
        for n in 0..4 {
            let again = alice.recv(WAIT).unwrap_or_else(|| {
                panic!("no answer to copy {n} of round {round}\n{}", alice.dump())
            });
            assert_eq!(
                (again.status(), again.cseq()),
                (Some(180), (inv.cseq, "INVITE".to_owned())),
                "round {round}, copy {n}: {}\n{}",
                again.first_line(),
                alice.dump()
            );
        }
    }
    // Some requests of the call were read by the worker that does not hold it, and handed
    // over by the claim table (each worker reports its count in `ctl status` once a
    // second; without the table none would be).
    common::wait_for("a request handed between the workers", WAIT, || {
        let status = server.try_status()?;
        let handed: u64 = status["children"]
            .as_array()?
            .iter()
            .filter(|c| c["role"] == "worker")
            .map(|c| c["health"]["handed_requests"].as_u64().unwrap_or(0))
            .sum();
        (handed > 0).then_some(())
    });
    alice.cancel(&inv);
    bob.cancelled(&ringing);
    alice.cancel_done(&inv);
    let invites = bob.dump().matches("<<< bob received:\nINVITE ").count();
    assert_eq!(invites, 1, "{}", bob.dump());
}

/// The `events` mask of the epoll registration of descriptor `target` in process `pid`.
fn epoll_events(pid: u32, target: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd list") {
        let entry = entry.expect("fd entry");
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]");
        if !is_epoll {
            continue;
        }
        let name = entry.file_name();
        let info =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
                .unwrap_or_default();
        for line in info.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() > 3 && words[0] == "tfd:" && words[1] == target {
                found.push(u32::from_str_radix(words[3], 16).expect("hex events"));
            }
        }
    }
    found
}

/// The wake-up modes of the workers' registrations of their UDP socket: for each worker,
/// whether every listing is exclusive; `None` while a worker's registration is being
/// remade (or is not readable). No listing may ask for EPOLLOUT: sends wake nobody.
fn wake_modes(server: &Server) -> Option<Vec<bool>> {
    const EPOLLOUT: u32 = 0x004;
    const EPOLLEXCLUSIVE: u32 = 1 << 28;
    let mut modes = Vec::new();
    for name in ["udp-0", "udp-1"] {
        let pid = server.pid_of(name);
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&str> = cmdline.split('\0').collect();
        let fd = args
            .iter()
            .position(|a| *a == "--fd")
            .and_then(|i| args.get(i + 1))
            .expect("--fd on the worker's command line");
        // The runtime holds its epoll under two descriptors (a clone of its registry), so
        // one registration may be listed twice.
        let events = epoll_events(pid, fd);
        if events.is_empty() {
            return None;
        }
        for e in &events {
            assert_eq!(e & EPOLLOUT, 0, "{name}: {events:x?}");
        }
        let exclusive = events.iter().all(|e| e & EPOLLEXCLUSIVE != 0);
        if !exclusive && events.iter().any(|e| e & EPOLLEXCLUSIVE != 0) {
            return None;
        }
        modes.push(exclusive);
    }
    Some(modes)
}

/// Both workers wait on the one socket. While datagrams are few, each wakes every idle
/// worker (the first to get a CPU answers); above `udp_wake_all_below` a second, one idle
/// worker (EPOLLEXCLUSIVE); when the rate drops again, every idle worker once more.
#[test]
fn datagrams_wake_every_idle_worker_when_few_and_one_when_many() {
    let setup = Setup {
        extra:
            "[limits]\nudp_wake_all_below = 100\n\n[security]\ntrusted_ips = [\"127.0.0.0/8\"]\n"
                .into(),
        ..Setup::default()
    };
    let server = Server::start(setup);
    common::wait_for("both workers registered on the socket", WAIT, || {
        (wake_modes(&server)? == [false, false]).then_some(())
    });
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = vec![0u8; 65_536];
    let mut sent = 0;
    // Bursts of 8, answers awaited: thousands a second, far above 100.
    let deadline = std::time::Instant::now() + 2 * WAIT;
    while wake_modes(&server) != Some(vec![true, true]) {
        assert!(
            std::time::Instant::now() < deadline && sent < 20_000,
            "{sent} requests and still {:?}",
            wake_modes(&server)
        );
        for _ in 0..8 {
            send_options(&socket, server.udp_addr(), "load", sent);
            sent += 1;
        }
        for _ in 0..8 {
            socket.recv_from(&mut buf).expect("an answer");
        }
    }
    // Now a request every 20 ms or so: 50 a second, below the line.
    common::wait_for("every idle worker woken again", 2 * WAIT, || {
        send_options(&socket, server.udp_addr(), "quiet", sent);
        sent += 1;
        socket.recv_from(&mut buf).expect("an answer");
        (wake_modes(&server)? == [false, false]).then_some(())
    });
}

/// The per-source rate limit holds for a source whichever worker reads its requests: the
/// workers spend from one bucket per source in the shared table. With 20 requests a second
/// (a burst of 40), 200 requests sent at once from one socket get about 40 answers, not
/// up to 40 from each worker.
#[test]
fn a_flood_from_one_socket_gets_one_burst_across_the_workers() {
    let setup = Setup {
        extra: "[security]\nrequests_per_second_per_ip = 20\n".into(),
        ..Setup::default()
    };
    let server = Server::start(setup);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let started = std::time::Instant::now();
    for n in 0..200 {
        send_options(&socket, server.udp_addr(), "flood", n);
    }
    // Every answer comes at once; half a second of silence ends the count.
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = vec![0u8; 65_536];
    let mut answered = 0u32;
    let mut workers = BTreeSet::new();
    while let Ok((len, _)) = socket.recv_from(&mut buf) {
        answered += 1;
        workers.extend(answering_worker(&String::from_utf8_lossy(&buf[..len])));
    }
    // The bucket refills at 20 a second while the answers are counted.
    let refill = (started.elapsed().as_secs_f64() * 20.0).ceil() as u32;
    assert!(
        (40..=40 + refill).contains(&answered),
        "{answered} answers (refill {refill}), from {workers:?}"
    );
}

/// Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:`port`.
fn udp_rx_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) {
            return None;
        }
        let (_, rx) = cols.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// Whether process `pid` is stopped (SIGSTOP).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

/// Stops processes with SIGSTOP and lets them go on again when dropped, even when the test
/// fails halfway.
struct Paused(Vec<u32>);

impl Paused {
    fn pause(&mut self, pid: u32) {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
        self.0.push(pid);
        common::wait_for("the process stopped", WAIT, || stopped(pid).then_some(()));
    }

    fn resume(&mut self, pid: u32) {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGCONT).expect("SIGCONT");
        self.0.retain(|&p| p != pid);
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            self.resume(pid);
        }
    }
}

/// A response read by the worker that does not hold its transaction goes straight to the
/// one that does, through its mailbox: not through the supervisor. Here the supervisor is
/// stopped the whole time, and so is the worker holding the call while the callee's 180
/// arrives, so only the other worker can read it; the caller still gets its 180.
#[test]
fn a_response_read_by_the_other_worker_is_handed_over_without_the_supervisor() {
    let server = Server::start(Setup::default());
    let (mut alice, mut bob, inv) = alice_calls_bob(&server);
    let forwarded = bob.expect_request("INVITE");
    let top_via = forwarded.values("Via").into_iter().next().expect("a Via");
    let branch = common::ua::header_param(&top_via, "branch").expect("a branch");
    // Our branch ids name the worker holding the client transaction: z9hG4bK.udp-1.2a
    let holder = branch
        .split('.')
        .nth(1)
        .expect("worker in the branch")
        .to_owned();
    let holder_pid = server.pid_of(&holder);

    let mut paused = Paused(Vec::new());
    paused.pause(server.supervisor_pid());
    paused.pause(holder_pid);
    bob.respond(&forwarded, 180, "Ringing", Some("ttbob"));
    // The holder is stopped: once the 180 has left the socket's queue, the other worker
    // read it.
    common::wait_for("the 180 read by the other worker", WAIT, || {
        (udp_rx_queue(server.udp_addr().port())? == 0).then_some(())
    });
    paused.resume(holder_pid);
    let ringing = alice.expect_status(180, "INVITE");
    assert_eq!(ringing.cseq(), (inv.cseq, "INVITE".to_owned()));
    assert!(
        stopped(server.supervisor_pid()),
        "the supervisor ran meanwhile"
    );
    drop(paused);

    alice.cancel(&inv);
    bob.cancelled(&forwarded);
    alice.cancel_done(&inv);
}
