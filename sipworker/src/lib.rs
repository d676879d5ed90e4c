//! sipcraft SIP worker (`sipcraft worker`, started by the supervisor).
//!
//! A worker owns its sockets, its transactions and its connections, and keeps a full
//! replica of extensions and registrations, so the call path never waits on another
//! process. Any worker can die at any moment; the others keep serving.

#![deny(unsafe_code)]

#[cfg(unix)]
mod inherit;

use std::path::PathBuf;
use std::time::Duration;

use sipcraft_config::Transport;
use sipcraft_ipc::child::{self, LinkEvent};
use sipcraft_ipc::wire::{FromChild, Health, Role};

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
    let _socket = open_socket(&args, listen.transport, listen.address).await?;
    tracing::info!(transport = listen.transport.as_str(), address = %listen.address, "worker serving");
    link.outbox.send(FromChild::Ready);

    let mut health_tick = tokio::time::interval(Duration::from_secs(1));
    let mut draining = false;
    loop {
        tokio::select! {
            _ = health_tick.tick() => {
                link.outbox.send(FromChild::Health(Health::default()));
            }
            ev = link.events.recv() => match ev {
                Some(LinkEvent::Drain) => {
                    if !draining {
                        tracing::info!("draining");
                    }
                    draining = true;
                }
                Some(LinkEvent::Stop) => break,
                Some(LinkEvent::Reload(config)) => {
                    tracing::info!(domain = %config.server.domain, "configuration reloaded");
                    link.config = *config;
                }
                Some(LinkEvent::Closed) | None => {
                    tracing::warn!("bus closed: the supervisor is gone; exiting");
                    break;
                }
                Some(_) => {}
            },
            _ = child::stop_signal() => break,
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}

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
        Transport::Tcp => Expect::Listener,
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
        Transport::Tcp => {
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
        Transport::Tcp => tokio::net::TcpListener::bind(address)
            .await
            .map(Socket::Tcp),
    }
    .map_err(Error::Socket)
}

/// A worker's listen socket.
#[derive(Debug)]
pub enum Socket {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpListener),
}
