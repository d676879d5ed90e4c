//! Where a proxied request goes: the bindings of an extension, a Route, or a Request-URI,
//! and the addresses that are this server's own.

use std::net::{IpAddr, SocketAddr};

use sipcraft_config::{Config, Transport};
use sipcraft_ipc::state::Binding;
use sipcraft_sip::header::Transport as ViaTransport;
use sipcraft_sip::{Host, Uri};

use crate::transport::Target;

/// The addresses this instance listens on, to recognise its own Route entries.
#[derive(Debug, Clone)]
pub struct Local {
    pub listens: Vec<(Transport, SocketAddr)>,
    /// What phones are told to reach: `listens` with wildcards replaced.
    pub advertised: Vec<(Transport, SocketAddr)>,
    pub domain: String,
}

impl Local {
    pub fn new(config: &Config) -> Self {
        Local {
            listens: config
                .listen
                .iter()
                .map(|l| (l.transport, l.address))
                .collect(),
            advertised: config
                .listen
                .iter()
                .map(|l| (l.transport, advertised(l.address)))
                .collect(),
            domain: config.server.domain.clone(),
        }
    }

    /// The address to put in Via and Record-Route for `transport`: the listen address, or
    /// for a wildcard listen address the host's primary address.
    pub fn address(&self, transport: Transport) -> SocketAddr {
        self.advertised
            .iter()
            .find(|(t, _)| *t == transport)
            .or_else(|| self.advertised.first())
            .map(|(_, a)| *a)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)))
    }

    /// A Record-Route / Route value naming this server on `transport`.
    /// `flows` are URI parameters naming the connection-oriented flows of the dialog
    /// (see [`flow_token`]), empty when both sides are on UDP.
    pub fn route_uri(&self, transport: Transport, flows: &str) -> String {
        let a = self.address(transport);
        format!(
            "<sip:{};transport={};lr{flows}>",
            host_port(a),
            transport.as_str()
        )
    }

    /// Whether `uri` names this server: one of its listen addresses, or its domain without
    /// a user part.
    pub fn is_me(&self, uri: &Uri<'_>) -> bool {
        let Some(sip) = uri.as_sip() else {
            return false;
        };
        if let Host::Domain(name) = sip.host {
            return sip.user.is_none() && name.eq_ignore_ascii_case(&self.domain);
        }
        let Some(ip) = sip.host.ip() else {
            return false;
        };
        let port = sip.port.unwrap_or(5060);
        self.listens
            .iter()
            .chain(&self.advertised)
            .any(|(_, a)| a.port() == port && (a.ip() == ip || a.ip().is_unspecified()))
    }
}

/// For a wildcard listen address (0.0.0.0, ::), the address the host would use to reach the
/// outside: found by connecting a UDP socket (which sends nothing) towards a documentation
/// address. Falls back to loopback on a host without a route.
fn advertised(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let (bind, probe): (SocketAddr, SocketAddr) = if listen.is_ipv4() {
        (([0, 0, 0, 0], 0).into(), ([192, 0, 2, 1], 9).into())
    } else {
        (
            ([0u16; 8], 0).into(),
            ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9).into(),
        )
    };
    let loopback = if listen.is_ipv4() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
    };
    let ip = std::net::UdpSocket::bind(bind)
        .and_then(|s| s.connect(probe).map(|()| s))
        .and_then(|s| s.local_addr())
        .map_or(loopback, |a| a.ip());
    SocketAddr::new(ip, listen.port())
}

/// `ip:port`, bracketed for IPv6.
pub fn host_port(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", a.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
    }
}

/// How to reach a registered phone. Over TCP: its connection (the flow it registered on,
/// owned by some worker). Over UDP: the Contact address when the phone sent from that IP
/// (no NAT in between), else the address the REGISTER came from, which is where the NAT
/// pinhole is (the nathelper habit of Kamailio operators).
pub fn binding_target(b: &Binding, me: &str) -> Target {
    if b.transport != Transport::Udp {
        let owner = (b.owner != me).then(|| b.owner.clone());
        return Target {
            transport: b.transport,
            peer: b.source,
            conn: b.connection,
            owner,
        };
    }
    let contact = Uri::parse(&b.contact).ok().and_then(|u| uri_target(&u));
    let peer = match contact {
        Some(t) if t.peer.ip() == b.source.ip() => t.peer,
        _ => b.source,
    };
    Target {
        transport: Transport::Udp,
        peer,
        conn: None,
        owner: None,
    }
}

/// The transport a Via names, as one of ours (SCTP and unknown reliable ones count as TCP).
pub fn via_transport(t: ViaTransport<'_>) -> Transport {
    match t {
        ViaTransport::Udp => Transport::Udp,
        ViaTransport::Tls => Transport::Tls,
        ViaTransport::Ws => Transport::Ws,
        ViaTransport::Wss => Transport::Wss,
        ViaTransport::Tcp | ViaTransport::Sctp | ViaTransport::Other(_) => Transport::Tcp,
    }
}

/// How to reach a URI that is not a registered contact: its host must be an IP address
/// (no DNS on the call path).
pub fn uri_target(uri: &Uri<'_>) -> Option<Target> {
    let sip = uri.as_sip()?;
    let ip = sip
        .maddr()
        .and_then(|m| m.parse().ok())
        .or_else(|| sip.host.ip())?;
    let named = sip.transport().map(|t| t.to_ascii_lowercase());
    // A sips: URI is reached over TLS whatever its transport= says (RFC 5630 §3.2).
    let transport = match (named.as_deref(), sip.secure) {
        (Some("ws"), false) => Transport::Ws,
        (Some("ws" | "wss"), _) => Transport::Wss,
        (Some("tls"), _) | (_, true) => Transport::Tls,
        (Some("tcp"), false) => Transport::Tcp,
        _ => Transport::Udp,
    };
    let port = sip.port.unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    Some(Target {
        transport,
        peer: SocketAddr::new(ip, port),
        conn: None,
        owner: None,
    })
}

/// Record-Route parameter naming the caller's flow.
pub const CALLER_FLOW: &str = "sc-a";
/// Record-Route parameter naming the callee's flow.
pub const CALLEE_FLOW: &str = "sc-b";

/// A token naming a connection-oriented flow: owning worker, connection id and transport
/// (`tcp-0~17~tcp`). Carried in our Record-Route, it routes in-dialog requests back over
/// the very connection a phone registered or called on (what RFC 5626 flow tokens do),
/// whatever its Contact says. `None` for UDP, which needs no flow.
pub fn flow_token(t: &Target, me: &str) -> Option<String> {
    let conn = t.conn?;
    let owner = t.owner.as_deref().unwrap_or(me);
    Some(format!("{owner}~{conn}~{}", t.transport.as_str()))
}

/// The flow a token names, as a target (`peer` is informational: the connection decides).
pub fn flow_target(token: &str, me: &str, peer: SocketAddr) -> Option<Target> {
    let mut parts = token.split('~');
    let owner = parts.next().filter(|o| !o.is_empty())?;
    let conn = parts.next()?.parse().ok()?;
    let transport: Transport = parts.next()?.parse().ok()?;
    if parts.next().is_some() || transport == Transport::Udp {
        return None;
    }
    let owner = (owner != me).then(|| owner.to_owned());
    Some(Target {
        transport,
        peer,
        conn: Some(conn),
        owner,
    })
}
