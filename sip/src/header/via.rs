//! Via (RFC 3261 §20.42, §18.2.1; `rport` RFC 3581; IPv6 `received` RFC 5118 §4.5).

use std::fmt;

use crate::error::{bad, SResult};
use crate::host::Host;
use crate::lex::{parse_u32, Cursor};
use crate::params::Params;

/// The magic cookie that starts every RFC 3261 branch.
pub const BRANCH_MAGIC: &str = "z9hG4bK";

/// Transport named in a Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS
    Tls,
    /// SCTP
    Sctp,
    /// WebSocket (RFC 7118)
    Ws,
    /// Secure WebSocket (RFC 7118)
    Wss,
    /// Anything else, as written.
    Other(&'a str),
}

impl<'a> Transport<'a> {
    /// Reads a transport token, case-insensitively.
    pub fn parse(s: &'a str) -> Transport<'a> {
        match s {
            "UDP" => return Transport::Udp,
            "TCP" => return Transport::Tcp,
            "TLS" => return Transport::Tls,
            _ => {}
        }
        const KNOWN: [(&str, Transport<'static>); 6] = [
            ("UDP", Transport::Udp),
            ("TCP", Transport::Tcp),
            ("TLS", Transport::Tls),
            ("SCTP", Transport::Sctp),
            ("WS", Transport::Ws),
            ("WSS", Transport::Wss),
        ];
        KNOWN
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map_or(Transport::Other(s), |(_, t)| *t)
    }

    /// Upper-case name.
    pub fn as_str(&self) -> &'a str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Other(s) => s,
        }
    }

    /// Whether the transport is reliable (everything but UDP).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// One Via value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name (`SIP`).
    pub protocol: &'a str,
    /// Protocol version (`2.0`).
    pub version: &'a str,
    /// Transport.
    pub transport: Transport<'a>,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by port, when written.
    pub port: Option<u16>,
    /// Via parameters.
    pub params: Params<'a>,
    /// `branch`, `received` and `rport` as read while checking the parameters.
    known: Known<'a>,
}

/// The parameters every Via lookup wants, remembered from the parsing pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Known<'a> {
    branch: Option<&'a str>,
    received: Option<&'a str>,
    rport: Option<Option<&'a str>>,
}

impl<'a> Via<'a> {
    /// Parses one Via value strictly, parameters checked.
    pub fn parse(s: &'a str) -> SResult<Via<'a>> {
        let mut c = Cursor::new(s);
        let via = Via::parse_item(&mut c)?;
        if !c.at_end() {
            return bad("unexpected text in Via");
        }
        Ok(via)
    }

    /// Reads one value of a Via list at the cursor, up to (not including) the separating `,`
    /// or the end; trailing white space is skipped.
    pub(crate) fn parse_item(c: &mut Cursor<'a>) -> SResult<Via<'a>> {
        let mut via = sent_protocol_and_by(c)?;
        let mut known = Known::default();
        via.params = Params::parse_with(c, |p| check_param(p, &mut known))?;
        via.known = known;
        c.skip_ws();
        if !c.at_end() && c.peek() != Some(b',') {
            return bad("unexpected text in Via");
        }
        Ok(via)
    }

    /// Reads only sent-protocol and sent-by, ignoring whatever follows: enough to send a 400
    /// back along a Via whose parameters are broken.
    pub fn parse_routing(s: &'a str) -> SResult<Via<'a>> {
        let mut c = Cursor::new(s);
        let via = sent_protocol_and_by(&mut c)?;
        c.skip_ws();
        match c.peek() {
            None | Some(b';') => Ok(via),
            _ => bad("unexpected text after sent-by"),
        }
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.known.branch
    }

    /// Whether the branch is an RFC 3261 transaction id: starts with the magic cookie and
    /// has something after it (RFC 4475 §3.2.1).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > BRANCH_MAGIC.len() && b.starts_with(BRANCH_MAGIC))
    }

    /// The `received` parameter, as an address.
    pub fn received(&self) -> Option<Host<'a>> {
        Host::parse_address(self.known.received?).ok()
    }

    /// The `rport` parameter: `None` when absent, `Some(None)` when present without value
    /// (the client asks for it, RFC 3581), `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.known.rport.map(|v| v.and_then(|v| v.parse().ok()))
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<Host<'a>> {
        Host::parse(self.params.value("maddr")??).ok()
    }

    /// The `ttl` parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.params.value("ttl")??.parse().ok()
    }

    /// Where a response to this Via goes over an unreliable transport (RFC 3261 §18.2.2,
    /// RFC 3581 §4): `received` (or the sent-by host) and the filled-in `rport` (or the
    /// sent-by port, or the transport's default). `maddr` multicast is left to the caller.
    pub fn response_target(&self) -> (Host<'a>, u16) {
        let host = self.received().unwrap_or(self.host);
        let port = match self.rport() {
            Some(Some(p)) => p,
            _ => self.port_or_default(),
        };
        (host, port)
    }

    /// The port to reply to when none is written: 5060, or 5061 over TLS.
    pub fn port_or_default(&self) -> u16 {
        self.port
            .unwrap_or(if matches!(self.transport, Transport::Tls) {
                5061
            } else {
                5060
            })
    }
}

/// Checks one Via parameter and remembers the ones [`Via`] looks up.
fn check_param<'a>(p: crate::params::Param<'a>, known: &mut Known<'a>) -> SResult<()> {
    let name = p.name;
    let v = p.value;
    let ok = match name.len() {
        6 if name.eq_ignore_ascii_case("branch") => {
            known.branch = known.branch.or(v);
            v.is_some_and(|v| !v.starts_with('"'))
        }
        8 if name.eq_ignore_ascii_case("received") => {
            known.received = known.received.or(v);
            v.is_some_and(|v| Host::parse_address(v).is_ok())
        }
        5 if name.eq_ignore_ascii_case("rport") => {
            known.rport = known.rport.or(Some(v));
            v.is_none_or(|v| v.parse::<u16>().is_ok())
        }
        3 if name.eq_ignore_ascii_case("ttl") => {
            v.is_some_and(|v| v.len() <= 3 && parse_u32(v).is_some_and(|t| t <= 255))
        }
        5 if name.eq_ignore_ascii_case("maddr") => v.is_some_and(|v| Host::parse(v).is_ok()),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        bad("invalid Via parameter")
    }
}

fn sent_protocol_and_by<'a>(c: &mut Cursor<'a>) -> SResult<Via<'a>> {
    c.skip_ws();
    let (protocol, version) = if c.rest().starts_with("SIP/2.0/") {
        // What every sender writes, read without the white-space dance below.
        let at = c.pos();
        c.set_pos(at + 8);
        c.skip_ws();
        (c.slice(at, at + 3), c.slice(at + 4, at + 7))
    } else {
        let protocol = c
            .token()
            .ok_or(crate::error::SyntaxError("missing protocol in Via"))?;
        if !c.eat_sep(b'/') {
            return bad("malformed sent-protocol in Via");
        }
        let version = c
            .token()
            .ok_or(crate::error::SyntaxError("missing version in Via"))?;
        if !c.eat_sep(b'/') {
            return bad("malformed sent-protocol in Via");
        }
        (protocol, version)
    };
    let transport = Transport::parse(
        c.token()
            .ok_or(crate::error::SyntaxError("missing transport in Via"))?,
    );
    if !c.skip_ws() {
        return bad("missing white space before sent-by");
    }
    let host_text = if c.peek() == Some(b'[') {
        let start = c.pos();
        c.take_while(|b| b != b']');
        if !c.eat(b']') {
            return bad("unterminated IPv6 reference in Via");
        }
        c.slice(start, c.pos())
    } else {
        c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let host = Host::parse(host_text)?;
    let port = if c.eat_sep(b':') {
        let d = c.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 5 {
            return bad("invalid port in Via");
        }
        Some(
            d.parse::<u16>()
                .map_err(|_| crate::error::SyntaxError("port out of range in Via"))?,
        )
    } else {
        None
    };
    Ok(Via {
        protocol,
        version,
        transport,
        host,
        port,
        params: Params::default(),
        known: Known::default(),
    })
}

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} {}",
            self.protocol,
            self.version,
            self.transport.as_str(),
            self.host
        )?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn p(s: &str) -> Via<'_> {
        Via::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn folded_and_spaced() {
        let v = p("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw");
        assert_eq!(v.transport, Transport::Udp);
        assert_eq!(v.host, Host::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());
        let v = p("SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8");
        assert_eq!(v.host, Host::Domain("spindle.example.com"));
        assert!(v.has_rfc3261_branch());
        assert_eq!(
            v.to_string(),
            "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8"
        );
        // White space after the last `/` is allowed on the short path too.
        let v = p("SIP/2.0/ UDP 192.0.2.2;branch=z9hG4bKx");
        assert_eq!(
            (v.protocol, v.version, v.transport),
            ("SIP", "2.0", Transport::Udp)
        );
        let v = p("SIP/2.0/\r\n TLS h.example.com");
        assert_eq!(v.transport, Transport::Tls);
    }

    #[test]
    fn params() {
        let v = p("SIP/2.0/UDP [2001:db8::9:1]:6050;received=2001:db8::9:255;rport;branch=z9hG4bKx;ttl=16;maddr=224.2.0.1");
        assert_eq!(v.port, Some(6050));
        assert_eq!(
            v.received().map(|h| h.to_string()).as_deref(),
            Some("[2001:db8::9:255]")
        );
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.ttl(), Some(16));
        assert!(v.maddr().is_some());
        let v = p("SIP/2.0/UDP h.example.com;rport=5061;received=[2001:db8::9:255]");
        assert_eq!(v.rport(), Some(Some(5061)));
        assert!(v.received().is_some());
        assert_eq!(v.response_target(), (v.received().unwrap_or(v.host), 5061));
        let v = p("SIP/2.0/TLS h.example.com");
        assert_eq!(v.response_target(), (Host::Domain("h.example.com"), 5061));
        let v = p("SIP/2.0/UDP h.example.com:5070;received=192.0.2.9;rport");
        assert_eq!(
            v.response_target(),
            (Host::V4(Ipv4Addr::new(192, 0, 2, 9)), 5070)
        );
        assert_eq!(Transport::parse("unknown"), Transport::Other("unknown"));
        assert_eq!(Transport::parse("tls"), Transport::Tls);
    }

    #[test]
    fn rejects() {
        for s in [
            "SIP/2.0/UDP 192.0.2.15;;,;,,",
            "SIP/2.0/UDP",
            "SIP/2.0/UDP host;received=example.com",
            "SIP/2.0/UDP host;rport=x",
            "SIP/2.0/UDP host;ttl=300",
            "SIP/2.0UDP host",
            "SIP/2.0/UDPhost",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP [::1",
            "SIP/2.0/UDP host junk",
        ] {
            assert!(Via::parse(s).is_err(), "{s}");
        }
        assert!(Via::parse_routing("SIP/2.0/UDP 192.0.2.15;;,;,,").is_ok());
    }
}
