//! sipcraft SIP worker (`sipcraft worker`, started by the supervisor).
//!
//! A worker owns its sockets, its transactions and its connections, and keeps a full
//! replica of extensions and registrations, so the call path never waits on another
//! process. Any worker can die at any moment; the others keep serving.

#![deny(unsafe_code)]

pub mod auth;
pub mod core;
#[cfg(unix)]
mod inherit;
pub mod proxy;
pub mod registrar;
pub mod security;
pub mod transport;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipcraft_config::Transport;
use sipcraft_ipc::child::{self, LinkEvent};
use sipcraft_ipc::wire::{FromChild, Health, Role};
use tokio::sync::mpsc;

use crate::core::Core;
use crate::transport::tcp::{Accept, ConnEvent, Layer};
use crate::transport::Target;

/// How the supervisor started this worker.
#[derive(Debug, Clone)]
pub struct Args {
    pub name: String,
    pub bus: PathBuf,
    pub parent: u32,
    /// Index of the `[[listen]]` entry this worker serves.
    pub listen: usize,
    /// The inherited listen socket (Unix); Windows workers bind their own.
    pub fd: Option<i32>,
    /// A UDP listen socket shared with a UDP worker, for a TCP worker to send to UDP phones
    /// from the server's port. Never read here: the UDP workers receive.
    pub udp_fd: Option<i32>,
    /// The claim table of the UDP workers that share this worker's socket (Linux).
    pub claims_fd: Option<i32>,
    /// This worker's mailbox, for a UDP worker that shares its socket (Linux).
    pub mailbox_fd: Option<i32>,
    /// The other workers sharing the socket, and the descriptor that posts to each one's
    /// mailbox.
    pub peers: Vec<(String, i32)>,
    /// Hands freed heap memory back to the system (the allocator is the executable's
    /// choice): called on the health tick once a second has passed without work after some.
    pub give_back: fn(),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the supervisor (pid {0}) is gone")]
    Orphaned(u32),
    #[error("could not join the bus")]
    Join(#[from] child::LinkError),
    #[error("listen entry {0} is not in the configuration")]
    NoListen(usize),
    #[error("could not take over the listen socket")]
    Socket(#[source] std::io::Error),
    #[error("could not map the claim table")]
    Claims(#[source] std::io::Error),
    #[error("could not take over the mail links to the other UDP workers")]
    Mail(#[source] std::io::Error),
    #[error("could not load the TLS certificate")]
    Tls(#[from] transport::tls::TlsError),
}

/// Runs a SIP worker until it is told to stop or loses the supervisor.
pub async fn run(args: Args) -> Result<(), Error> {
    if !child::guard_parent(args.parent) {
        return Err(Error::Orphaned(args.parent));
    }
    let mut link = child::join(&args.bus, Role::Worker, &args.name, false).await?;
    let listen = link
        .config
        .listen
        .get(args.listen)
        .cloned()
        .ok_or(Error::NoListen(args.listen))?;
    let socket = open_socket(&args, listen.transport, listen.address).await?;
    let mut core = Core::new(
        args.name.clone(),
        link.config.clone(),
        &link.secret,
        link.replica.clone(),
        link.outbox.clone(),
    );

    core.claims = claims(&args)?;
    let mut mailbox = mailbox(&args)?;
    #[cfg(target_os = "linux")]
    if let Some(c) = &core.claims {
        let counts = crate::core::SourceCounts(c.table.clone());
        core.guard.share(Arc::new(counts));
    }

    let (conn_tx, mut conn_rx) = mpsc::channel::<ConnEvent>(4096);
    let open_conns = Arc::new(AtomicUsize::new(0));
    let receives_udp = matches!(socket, Socket::Udp(_));
    let layer = Layer::new(&listen)?;
    let (udp, udp_out) = match socket {
        Socket::Udp(s) => {
            // Sends go through a second descriptor of the socket, without the runtime:
            // a UDP send never waits (a full send buffer drops the datagram, as the
            // network may), so the runtime need not watch for the socket being writable.
            let out = sender(&s).map_err(Error::Socket)?;
            (Some(s), Some(out))
        }
        Socket::Tcp(listener) => {
            let accept = Accept {
                layer: layer.clone(),
                limits: core.limits,
                idle: Duration::from_secs(core.config.limits.tcp_idle_timeout_s),
                max: core.config.limits.max_tcp_connections as usize,
                open: open_conns.clone(),
            };
            tokio::spawn(transport::tcp::accept_loop(
                listener,
                conn_tx.clone(),
                accept,
            ));
            (None, shared_udp(&args)?)
        }
    };
    let mut wake = wake_up(&core, udp.as_ref().filter(|_| receives_udp))?;
    tracing::info!(transport = listen.transport.as_str(), address = %listen.address, "worker serving");
    link.outbox.send(FromChild::Ready);

    let mut health_tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = vec![0u8; 65_536];
    // One timer for the whole loop, re-armed only when the next deadline moves to another
    // TIMER_TICK slot: every transaction has deadlines of its own (thousands a second under
    // load), and a wake-up per deadline costs more than the timers' work. A deadline already
    // past (work left over for the next turn) is armed as it is.
    let epoch = Instant::now();
    let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(epoch));
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    let stop = child::stop_signal();
    tokio::pin!(stop);
    // Why the loop ended, when it ended on an error: returned after the last flush, so what
    // this worker answered is still published.
    let mut failed = None;
    // Whether anything but the health tick woke the loop since the last tick, and whether
    // anything did since memory was last given back.
    let (mut busy, mut worked) = (false, false);
    loop {
        let mut ticked = false;
        // A deadline already past (a backlog of work left for the next turn) is not rounded.
        let deadline = core.next_deadline().map(|d| {
            if d <= Instant::now() {
                d
            } else {
                tick_after(epoch, d)
            }
        });
        if deadline != armed {
            if let Some(d) = deadline {
                timer.as_mut().reset(tokio::time::Instant::from_std(d));
            }
            armed = deadline;
        }
        let out = tokio::select! {
            r = recv(udp.as_ref().filter(|_| receives_udp), &mut buf) => match r {
                Ok((n, peer)) => {
                    let now = Instant::now();
                    let out = core.on_message(&buf[..n], Target::udp(peer), now);
                    let response = sipcraft_sip::looks_like_response(&buf[..n]);
                    failed = read_one(&mut wake, udp.as_ref(), now, response).err();
                    out
                }
                Err(e) => {
                    tracing::warn!(error = %e, "udp receive failed");
                    Vec::new()
                }
            },
            mail = recv_mail(mailbox.as_mut()) => core.on_handoff(&mail.from, mail.handoff, Instant::now()),
            Some(ev) = conn_rx.recv() => match ev {
                ConnEvent::Opened { id, tx, .. } => {
                    core.conns.insert(id, tx);
                    Vec::new()
                }
                ConnEvent::Message { id, peer, bytes } => {
                    let from = Target { transport: listen.transport, peer, conn: Some(id), owner: None };
                    core.on_message(&bytes, from, Instant::now())
                }
                ConnEvent::Closed { id } => {
                    core.conns.remove(&id);
                    Vec::new()
                }
            },
            _ = &mut timer, if armed.is_some() => {
                armed = None;
                Vec::new()
            }
            _ = health_tick.tick() => {
                ticked = true;
                let health = Health {
                    transactions: core.txns.len() as u64,
                    connections: open_conns.load(Ordering::Relaxed) as u64,
                    dropped: core.counters.dropped,
                    handed_requests: core.counters.handed_requests,
                    alarm: layer.alarm(),
                    generation: core.replica.read().unwrap_or_else(|p| p.into_inner()).seq(),
                };
                link.outbox.send(FromChild::Health(health));
                core.replica.write().unwrap_or_else(|p| p.into_inner()).purge_expired(now_ms());
                // Quiet for a whole tick after work (Timer J's expiries included): what the
                // work freed goes back to the system now rather than whenever this worker
                // next allocates.
                if !busy && worked {
                    (args.give_back)();
                    worked = false;
                }
                worked |= busy;
                busy = false;
                Vec::new()
            }
            ev = link.events.recv() => match ev {
                Some(LinkEvent::Drain) => {
                    if !core.draining {
                        tracing::info!("draining: new calls and registrations get 503");
                    }
                    core.draining = true;
                    Vec::new()
                }
                Some(LinkEvent::Stop) => break,
                Some(LinkEvent::Reload(config)) => {
                    tracing::info!("configuration reloaded");
                    if let Some(l) = config.listen.get(args.listen) {
                        layer.reload(l);
                    }
                    #[cfg(target_os = "linux")]
                    if let Some(w) = &mut wake {
                        w.reload(config.limits.udp_wake_all_below);
                    }
                    core.reload(*config);
                    Vec::new()
                }
                Some(LinkEvent::Closed) | None => {
                    tracing::warn!("bus closed: the supervisor is gone; exiting");
                    break;
                }
                Some(LinkEvent::Deliver { from, msg: sipcraft_ipc::wire::Direct::Sip(h) }) => {
                    core.on_handoff(&from, h, Instant::now())
                }
                Some(_) => Vec::new(),
            },
            _ = &mut stop => break,
        };
        busy |= !ticked;
        // What this wake-up's message made goes out first; then the timers that fell due
        // meanwhile run (the timer branch above only wakes an idle loop).
        for msg in out {
            send(&core, udp_out.as_ref(), msg);
        }
        let now = Instant::now();
        if core.next_deadline().is_some_and(|d| d <= now) {
            for msg in core.poll_timers(now) {
                send(&core, udp_out.as_ref(), msg);
            }
        }
        if failed.is_some() {
            break;
        }
    }
    // Out of the shared socket's wait queue first: an exclusive waiter that no longer reads
    // would take the wake-ups of the workers that do.
    drop(udp);
    // What this worker published (a binding it answered 200 for) and its call records must
    // reach the hub before the process (and its bus writer task) is gone.
    if !link.outbox.flush(Duration::from_secs(1)).await {
        tracing::warn!("could not hand the last messages to the bus before exiting");
    }
    if let Some(e) = failed {
        return Err(e);
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn recv(
    udp: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr)> {
    match udp {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// How a datagram on `udp`, the socket this worker reads, wakes the workers sharing it
/// (`transport::exclusive`). A socket this worker reads alone is registered read-only: its
/// sends wake nobody.
#[cfg(target_os = "linux")]
fn wake_up(
    core: &Core,
    udp: Option<&tokio::net::UdpSocket>,
) -> Result<Option<transport::exclusive::Wake>, Error> {
    use transport::exclusive::{NotExclusive, Registration, Wake};
    let Some(socket) = udp else {
        return Ok(None);
    };
    let taken = match &core.claims {
        Some(c) => Wake::new(
            socket,
            c.table.clone(),
            core.config.limits.udp_wake_all_below,
        )
        .map(Some),
        None => Registration::take(socket, true).map(|_| None),
    };
    match taken {
        Ok(wake) => Ok(wake),
        Err(NotExclusive::Lost(e)) => Err(Error::Socket(e)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "every datagram wakes every idle UDP worker (could not register the socket anew)"
            );
            Ok(None)
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn wake_up(_core: &Core, _udp: Option<&tokio::net::UdpSocket>) -> Result<Option<()>, Error> {
    Ok(None)
}

/// This worker read a datagram from `udp` at `now`: the wake-up mode may change.
#[cfg(target_os = "linux")]
fn read_one(
    wake: &mut Option<transport::exclusive::Wake>,
    udp: Option<&tokio::net::UdpSocket>,
    now: Instant,
    response: bool,
) -> Result<(), Error> {
    use transport::exclusive::NotExclusive;
    let (Some(w), Some(socket)) = (wake.as_mut(), udp) else {
        return Ok(());
    };
    match w.read(socket, now, response) {
        Ok(()) => Ok(()),
        Err(NotExclusive::Lost(e)) => Err(Error::Socket(e)),
        Err(e) => {
            tracing::warn!(error = %e, "could not change how datagrams wake the UDP workers");
            *wake = None;
            Ok(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn read_one(
    _wake: &mut Option<()>,
    _udp: Option<&tokio::net::UdpSocket>,
    _now: Instant,
    _response: bool,
) -> Result<(), Error> {
    Ok(())
}

/// The next mail from another UDP worker; never, without a mailbox.
#[cfg(target_os = "linux")]
async fn recv_mail(mailbox: Option<&mut transport::mail::Mailbox>) -> sipcraft_ipc::mail::Mail {
    match mailbox {
        Some(m) => m.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(target_os = "linux"))]
async fn recv_mail(_mailbox: Option<&mut ()>) -> sipcraft_ipc::mail::Mail {
    std::future::pending().await
}

/// How late a transaction or proxy timer may fire so that the deadlines of many
/// transactions share one wake-up (RFC 3261 timers are at least their value; the shortest,
/// the 100 Trying delay, is 200 ms).
const TIMER_TICK: Duration = Duration::from_millis(10);

/// The end of the TIMER_TICK slot (counted from `epoch`) that `at` falls in.
fn tick_after(epoch: Instant, at: Instant) -> Instant {
    let tick = TIMER_TICK.as_nanos();
    let since = at.saturating_duration_since(epoch).as_nanos();
    let slots = since.div_ceil(tick);
    epoch + Duration::from_nanos(u64::try_from(slots * tick).unwrap_or(u64::MAX))
}

/// A descriptor of `socket` to send from, outside the runtime.
fn sender(socket: &tokio::net::UdpSocket) -> std::io::Result<std::net::UdpSocket> {
    #[cfg(unix)]
    let owned = std::os::fd::AsFd::as_fd(socket).try_clone_to_owned()?;
    #[cfg(windows)]
    let owned = std::os::windows::io::AsSocket::as_socket(socket).try_clone_to_owned()?;
    let sender = std::net::UdpSocket::from(owned);
    // Already so on Unix (one open file, shared); a duplicated Windows socket starts out
    // blocking.
    sender.set_nonblocking(true)?;
    Ok(sender)
}

fn send(core: &Core, udp: Option<&std::net::UdpSocket>, msg: transport::Out) {
    if let Some(owner) = msg.target.owner.as_ref().filter(|o| **o != core.name) {
        // The flow belongs to another worker: it sends.
        let h = sipcraft_ipc::wire::SipHandoff {
            transport: msg.target.transport,
            peer: msg.target.peer,
            connection: msg.target.conn,
            outbound: true,
            bytes: msg.bytes.to_vec(),
        };
        core.outbox.send(FromChild::Send {
            to: owner.clone(),
            msg: sipcraft_ipc::wire::Direct::Sip(h),
        });
        return;
    }
    match (msg.target.conn, udp) {
        (Some(id), _) => match core.conns.get(&id) {
            Some(tx) => {
                if tx.try_send(msg.bytes).is_err() {
                    tracing::debug!(
                        conn = id,
                        "connection write queue full or closed; message dropped"
                    );
                }
            }
            None => tracing::debug!(conn = id, "connection gone; message dropped"),
        },
        (None, _)
            if matches!(
                msg.target.transport,
                Transport::Tls | Transport::Ws | Transport::Wss
            ) =>
        {
            // Never in plaintext over UDP what was meant for TLS or a WebSocket: sipcraft
            // opens no connections; these peers are reached through the ones they opened.
            tracing::debug!(
                peer = %msg.target.peer,
                transport = msg.target.transport.as_str(),
                "no connection to this peer; message dropped"
            )
        }
        (None, Some(sock)) => {
            if let Err(e) = sock.send_to(&msg.bytes, msg.target.peer) {
                tracing::debug!(peer = %msg.target.peer, error = %e, "udp send failed");
            }
        }
        (None, None) => {
            tracing::debug!(peer = %msg.target.peer, "no UDP socket in this worker; message dropped")
        }
    }
}

pub use sipcraft_ipc::state::now_ms;

/// The listen socket: inherited from the supervisor on Unix, bound here on Windows.
#[cfg(unix)]
async fn open_socket(
    args: &Args,
    transport: Transport,
    _address: std::net::SocketAddr,
) -> Result<Socket, Error> {
    use inherit::Expect;
    let fd = args
        .fd
        .ok_or_else(|| Error::Socket(std::io::Error::other("no --fd given")))?;
    let expect = match transport {
        Transport::Udp => Expect::Datagram,
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => Expect::Listener,
    };
    let owned = inherit::take_socket(fd, expect).map_err(Error::Socket)?;
    match transport {
        Transport::Udp => {
            let std_socket = std::net::UdpSocket::from(owned);
            std_socket.set_nonblocking(true).map_err(Error::Socket)?;
            tokio::net::UdpSocket::from_std(std_socket)
                .map(Socket::Udp)
                .map_err(Error::Socket)
        }
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
            let std_listener = std::net::TcpListener::from(owned);
            std_listener.set_nonblocking(true).map_err(Error::Socket)?;
            tokio::net::TcpListener::from_std(std_listener)
                .map(Socket::Tcp)
                .map_err(Error::Socket)
        }
    }
}

#[cfg(not(unix))]
async fn open_socket(
    _args: &Args,
    transport: Transport,
    address: std::net::SocketAddr,
) -> Result<Socket, Error> {
    match transport {
        Transport::Udp => tokio::net::UdpSocket::bind(address).await.map(Socket::Udp),
        Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
            tokio::net::TcpListener::bind(address)
                .await
                .map(Socket::Tcp)
        }
    }
    .map_err(Error::Socket)
}

/// The claim table, for a UDP worker that shares its socket with others (see
/// [`Args::claims_fd`]), and this worker's number in it (`udp-N` is N).
#[cfg(target_os = "linux")]
fn claims(args: &Args) -> Result<Option<crate::core::Claimer>, Error> {
    let Some(fd) = args.claims_fd else {
        return Ok(None);
    };
    let me = args
        .name
        .strip_prefix("udp-")
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|&n| n < u8::MAX)
        .ok_or_else(|| Error::Claims(std::io::Error::other("only udp-0 to udp-254 claim")))?;
    let owned = inherit::take_memory(fd).map_err(Error::Claims)?;
    let table = sipcraft_ipc::claims::Claims::open(&owned).map_err(Error::Claims)?;
    let post = transport::mail::Post::open(&args.peers).map_err(Error::Mail)?;
    Ok(Some(crate::core::Claimer {
        table: Arc::new(table),
        me,
        listen: args.listen.to_string(),
        post,
    }))
}

/// This worker's mailbox (see [`Args::mailbox_fd`]).
#[cfg(target_os = "linux")]
fn mailbox(args: &Args) -> Result<Option<transport::mail::Mailbox>, Error> {
    args.mailbox_fd
        .map(transport::mail::Mailbox::open)
        .transpose()
        .map_err(Error::Mail)
}

#[cfg(not(target_os = "linux"))]
fn mailbox(_args: &Args) -> Result<Option<()>, Error> {
    Ok(None)
}

#[cfg(not(target_os = "linux"))]
fn claims(_args: &Args) -> Result<Option<crate::core::Claimer>, Error> {
    Ok(None)
}

/// The UDP socket a TCP worker sends from (see [`Args::udp_fd`]).
#[cfg(unix)]
fn shared_udp(args: &Args) -> Result<Option<std::net::UdpSocket>, Error> {
    let Some(fd) = args.udp_fd else {
        return Ok(None);
    };
    let owned = inherit::take_socket(fd, inherit::Expect::Datagram).map_err(Error::Socket)?;
    let std_socket = std::net::UdpSocket::from(owned);
    std_socket.set_nonblocking(true).map_err(Error::Socket)?;
    Ok(Some(std_socket))
}

#[cfg(not(unix))]
fn shared_udp(_args: &Args) -> Result<Option<std::net::UdpSocket>, Error> {
    Ok(None)
}

/// A worker's listen socket.
#[derive(Debug)]
pub enum Socket {
    Udp(tokio::net::UdpSocket),
    /// TCP, and TLS and WebSocket over it.
    Tcp(tokio::net::TcpListener),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_round_up_to_the_end_of_their_tick() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(tick_after(epoch, epoch), epoch);
        assert_eq!(tick_after(epoch, epoch + ms(1)), epoch + ms(10));
        assert_eq!(tick_after(epoch, epoch + ms(10)), epoch + ms(10));
        assert_eq!(tick_after(epoch, epoch + ms(32_001)), epoch + ms(32_010));
        // Before the epoch (a deadline already due): at once.
        assert_eq!(tick_after(epoch + ms(5), epoch), epoch + ms(5));
    }
}
