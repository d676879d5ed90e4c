//! Transaction keys: how a message finds its transaction (RFC 3261 §17.1.3 and §17.2.3).
//!
//! Keys are built from plain strings the caller takes out of the message (top Via branch and
//! sent-by, CSeq method or request method), so this module does not depend on the parser.
//!
//! - **Client** ([`ClientKey`]): a response matches a client transaction when its top Via
//!   branch equals the branch of the request the transaction sent, and its CSeq method equals
//!   the request's method. The method is needed because a CANCEL carries the branch of the
//!   INVITE it cancels: the INVITE and the CANCEL are two client transactions with one branch.
//! - **Server** ([`ServerKey`]): a request matches a server transaction when the top Via branch
//!   (starting with the magic cookie `z9hG4bK`), the top Via sent-by, and the method equal the
//!   ones of the request that created it — except that an ACK matches the INVITE, so
//!   [`ServerKey::new`] files an ACK under method `INVITE`.
//! - **CANCEL** gets a key of its own (method `CANCEL`): it is a non-INVITE server transaction
//!   of its own, answered 200 by the TU. To find the INVITE it cancels (§9.2), the TU asks
//!   [`ServerKey::cancelled_invite`], which is the same branch and sent-by with method
//!   `INVITE`, and looks that up in the table.
//!
//! Branch and sent-by are compared ignoring ASCII case (a token and a host name are
//! case-insensitive, §7.3.1); the method is case-sensitive (§7.1). Requests without the magic
//! cookie (RFC 2543 elements) are refused with [`KeyError::NoMagicCookie`]; their matching on
//! Request-URI, tags, Call-ID and CSeq is not implemented.

use std::fmt;
use std::sync::Arc;

/// The prefix of every RFC 3261 branch parameter.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Why a key could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The branch is missing or empty.
    EmptyBranch,
    /// The method is missing or empty.
    EmptyMethod,
    /// The sent-by of the top Via is empty.
    EmptySentBy,
    /// The branch does not start with `z9hG4bK`: an RFC 2543 request, not supported.
    NoMagicCookie,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::EmptyBranch => "the top Via has no branch",
            KeyError::EmptyMethod => "the method is empty",
            KeyError::EmptySentBy => "the top Via has an empty sent-by",
            KeyError::NoMagicCookie => "the top Via branch does not start with z9hG4bK",
        })
    }
}

impl std::error::Error for KeyError {}

/// The parts of a key joined by single spaces in one shared allocation, each part lower-cased
/// (ASCII) when its flag says so. Built in a stack buffer first, so a key costs one allocation.
fn joined(parts: &[(&str, bool)]) -> Arc<str> {
    let len = parts
        .iter()
        .map(|(p, _)| p.len() + 1)
        .sum::<usize>()
        .saturating_sub(1);
    let mut stack = [0u8; 200];
    let mut heap = Vec::new();
    let buf: &mut [u8] = match stack.get_mut(..len) {
        Some(b) => b,
        None => {
            heap.resize(len, 0);
            &mut heap
        }
    };
    let mut at = 0;
    for (i, (part, fold)) in parts.iter().enumerate() {
        if i > 0 {
            buf[at] = b' ';
            at += 1;
        }
        let dst = &mut buf[at..at + part.len()];
        dst.copy_from_slice(part.as_bytes());
        if *fold {
            dst.make_ascii_lowercase();
        }
        at += part.len();
    }
    // Valid UTF-8 pieces joined by spaces, with ASCII letters lower-cased, stay valid.
    match std::str::from_utf8(buf) {
        Ok(s) => Arc::from(s),
        Err(_) => Arc::from(String::from_utf8_lossy(buf).as_ref()),
    }
}

/// Key of a client transaction: top Via branch + CSeq method (§17.1.3).
///
/// Held as `method SP branch` (branch lower-cased) in one shared allocation: keys are cloned
/// into the table's index and the proxy's maps, and hashed on every message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    text: Arc<str>,
    /// Where the branch starts in `text`.
    branch_at: u32,
}

impl ClientKey {
    /// The key from the branch sipcraft put in its Via and the request method; for a response,
    /// from its top Via branch and its CSeq method.
    pub fn new(branch: &str, method: &str) -> Result<ClientKey, KeyError> {
        if branch.is_empty() {
            return Err(KeyError::EmptyBranch);
        }
        if method.is_empty() {
            return Err(KeyError::EmptyMethod);
        }
        Ok(ClientKey {
            text: joined(&[(method, false), (branch, true)]),
            branch_at: method.len() as u32 + 1,
        })
    }

    /// The branch, lower-cased.
    pub fn branch(&self) -> &str {
        self.text.get(self.branch_at as usize..).unwrap_or_default()
    }

    /// The method of the request (CSeq method of the response).
    pub fn method(&self) -> &str {
        let end = (self.branch_at as usize).saturating_sub(1);
        self.text.get(..end).unwrap_or_default()
    }

    /// Whether this is the key of an INVITE client transaction.
    pub fn is_invite(&self) -> bool {
        self.method() == "INVITE"
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Key of a server transaction: top Via branch + sent-by + method, ACK filed as INVITE
/// (§17.2.3).
///
/// Held as `method SP sent-by SP branch` (sent-by and branch lower-cased) in one shared
/// allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    text: Arc<str>,
    /// Where sent-by and the branch start in `text`.
    sent_by_at: u32,
    branch_at: u32,
}

impl ServerKey {
    /// The key of a received request, from its top Via `branch` and `sent_by` (`host[:port]`
    /// as it appears in the Via) and its `method`. An ACK gets the key of the INVITE it
    /// acknowledges.
    pub fn new(branch: &str, sent_by: &str, method: &str) -> Result<ServerKey, KeyError> {
        ServerKey::from_parts(branch, sent_by, None, method)
    }

    /// Like [`ServerKey::new`], with the sent-by given as host and port as they appear in the
    /// Via (`sent_by` then holds the host alone), so no `host:port` string is made first.
    pub fn from_parts(
        branch: &str,
        host: &str,
        port: Option<u16>,
        method: &str,
    ) -> Result<ServerKey, KeyError> {
        if branch.is_empty() {
            return Err(KeyError::EmptyBranch);
        }
        let cookie = branch.get(..MAGIC_COOKIE.len());
        if !cookie.is_some_and(|c| c.eq_ignore_ascii_case(MAGIC_COOKIE)) {
            return Err(KeyError::NoMagicCookie);
        }
        if host.is_empty() {
            return Err(KeyError::EmptySentBy);
        }
        if method.is_empty() {
            return Err(KeyError::EmptyMethod);
        }
        let method = if method == "ACK" { "INVITE" } else { method };
        let mut digits = [0u8; 6];
        let port = port.map(|p| {
            let mut n = p;
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            digits[i - 1] = b':';
            std::str::from_utf8(&digits[i - 1..]).unwrap_or_default()
        });
        let text = match port {
            // `host` and `:port` are one part: joined() puts a space only between parts.
            Some(port) => {
                let mut sent_by = [0u8; 300];
                match sent_by.get_mut(..host.len() + port.len()) {
                    Some(buf) => {
                        buf[..host.len()].copy_from_slice(host.as_bytes());
                        buf[host.len()..].copy_from_slice(port.as_bytes());
                        let sent_by = std::str::from_utf8(buf).unwrap_or_default();
                        joined(&[(method, false), (sent_by, true), (branch, true)])
                    }
                    None => {
                        let sent_by = format!("{host}{port}");
                        joined(&[(method, false), (&sent_by, true), (branch, true)])
                    }
                }
            }
            None => joined(&[(method, false), (host, true), (branch, true)]),
        };
        let sent_by_at = method.len() + 1;
        let branch_at = text.len() - branch.len();
        Ok(ServerKey {
            text,
            sent_by_at: sent_by_at as u32,
            branch_at: branch_at as u32,
        })
    }

    /// For the key of a CANCEL: the key of the INVITE server transaction it cancels (same
    /// branch and sent-by, method INVITE). For any other key, the same kind of key.
    pub fn cancelled_invite(&self) -> ServerKey {
        let text = joined(&[
            ("INVITE", false),
            (self.sent_by(), false),
            (self.branch(), false),
        ]);
        let sent_by_at = "INVITE".len() + 1;
        let branch_at = text.len() - self.branch().len();
        ServerKey {
            text,
            sent_by_at: sent_by_at as u32,
            branch_at: branch_at as u32,
        }
    }

    /// The branch, lower-cased.
    pub fn branch(&self) -> &str {
        self.text.get(self.branch_at as usize..).unwrap_or_default()
    }

    /// The sent-by of the top Via, lower-cased.
    pub fn sent_by(&self) -> &str {
        let end = (self.branch_at as usize).saturating_sub(1);
        self.text
            .get(self.sent_by_at as usize..end)
            .unwrap_or_default()
    }

    /// The method; `INVITE` for a key made from an ACK.
    pub fn method(&self) -> &str {
        let end = (self.sent_by_at as usize).saturating_sub(1);
        self.text.get(..end).unwrap_or_default()
    }

    /// Whether this is the key of an INVITE server transaction.
    pub fn is_invite(&self) -> bool {
        self.method() == "INVITE"
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A key in the [`TransactionTable`](super::TransactionTable): client and server keys live
/// side by side without clashing, even for a request sipcraft forwards with the branch it got.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransactionKey {
    /// A client transaction.
    Client(ClientKey),
    /// A server transaction.
    Server(ServerKey),
}

impl From<ClientKey> for TransactionKey {
    fn from(key: ClientKey) -> Self {
        TransactionKey::Client(key)
    }
}

impl From<ServerKey> for TransactionKey {
    fn from(key: ServerKey) -> Self {
        TransactionKey::Server(key)
    }
}

impl fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionKey::Client(k) => write!(f, "client {k}"),
            TransactionKey::Server(k) => write!(f, "server {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRANCH: &str = "z9hG4bK74bf9";

    #[test]
    fn ack_matches_the_invite_server_transaction() {
        let invite = ServerKey::new(BRANCH, "pc33.atlanta.com:5060", "INVITE").unwrap();
        let ack = ServerKey::new(BRANCH, "pc33.atlanta.com:5060", "ACK").unwrap();
        assert_eq!(invite, ack);
        assert!(ack.is_invite());
    }

    #[test]
    fn cancel_has_its_own_key_and_finds_the_invite() {
        let invite = ServerKey::new(BRANCH, "pc33.atlanta.com", "INVITE").unwrap();
        let cancel = ServerKey::new(BRANCH, "pc33.atlanta.com", "CANCEL").unwrap();
        assert_ne!(invite, cancel);
        assert_eq!(cancel.cancelled_invite(), invite);

        let client_invite = ClientKey::new(BRANCH, "INVITE").unwrap();
        let client_cancel = ClientKey::new(BRANCH, "CANCEL").unwrap();
        assert_ne!(client_invite, client_cancel);
        assert!(client_invite.is_invite() && !client_cancel.is_invite());
    }

    #[test]
    fn sent_by_and_method_are_part_of_the_server_key() {
        let a = ServerKey::new(BRANCH, "10.0.0.1:5060", "REGISTER").unwrap();
        let b = ServerKey::new(BRANCH, "10.0.0.2:5060", "REGISTER").unwrap();
        let c = ServerKey::new(BRANCH, "10.0.0.1:5060", "OPTIONS").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn branch_and_host_ignore_case_method_does_not() {
        let a = ServerKey::new("z9hG4bKAbC", "Host.Example.COM", "INVITE").unwrap();
        let b = ServerKey::new("Z9HG4BKabc", "host.example.com", "INVITE").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.branch(), "z9hg4bkabc");
        assert_eq!(a.sent_by(), "host.example.com");
        let lower = ServerKey::new("z9hG4bKabc", "host.example.com", "invite").unwrap();
        assert_ne!(a, lower);
        assert_eq!(
            ClientKey::new("z9hG4bKX", "BYE").unwrap(),
            ClientKey::new("z9hg4bkx", "BYE").unwrap()
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            ServerKey::new("abc", "h", "INVITE"),
            Err(KeyError::NoMagicCookie)
        );
        assert_eq!(
            ServerKey::new("", "h", "INVITE"),
            Err(KeyError::EmptyBranch)
        );
        assert_eq!(
            ServerKey::new("z9h", "h", "INVITE"),
            Err(KeyError::NoMagicCookie)
        );
        assert_eq!(
            ServerKey::new(BRANCH, "", "INVITE"),
            Err(KeyError::EmptySentBy)
        );
        assert_eq!(ServerKey::new(BRANCH, "h", ""), Err(KeyError::EmptyMethod));
        assert_eq!(ClientKey::new("", "INVITE"), Err(KeyError::EmptyBranch));
        assert_eq!(ClientKey::new(BRANCH, ""), Err(KeyError::EmptyMethod));
        // A branch with a multi-byte character where the cookie would end must not panic.
        assert_eq!(
            ServerKey::new("z9hG4bé", "h", "INVITE"),
            Err(KeyError::NoMagicCookie)
        );
    }

    #[test]
    fn parts_read_back_and_host_port_equals_sent_by() {
        let a = ServerKey::from_parts(BRANCH, "PC33.Atlanta.com", Some(5060), "ACK").unwrap();
        let b = ServerKey::new(BRANCH, "pc33.atlanta.com:5060", "INVITE").unwrap();
        assert_eq!(a, b);
        assert_eq!(
            (a.method(), a.sent_by(), a.branch()),
            ("INVITE", "pc33.atlanta.com:5060", "z9hg4bk74bf9")
        );
        let c = ServerKey::from_parts(BRANCH, "[2001:db8::1]", Some(0), "CANCEL").unwrap();
        assert_eq!(c.sent_by(), "[2001:db8::1]:0");
        assert_eq!(c.cancelled_invite().method(), "INVITE");
        assert_eq!(c.cancelled_invite().sent_by(), "[2001:db8::1]:0");
        assert_eq!(c.cancelled_invite().branch(), "z9hg4bk74bf9");
        let long = "x".repeat(400);
        let d = ServerKey::from_parts(BRANCH, &long, Some(65535), "OPTIONS").unwrap();
        assert_eq!(d.sent_by(), format!("{long}:65535"));
        let k = ClientKey::new("z9hG4bK.Udp-0.1f", "BYE").unwrap();
        assert_eq!((k.method(), k.branch()), ("BYE", "z9hg4bk.udp-0.1f"));
    }

    #[test]
    fn client_and_server_keys_do_not_clash() {
        let c: TransactionKey = ClientKey::new(BRANCH, "INVITE").unwrap().into();
        let s: TransactionKey = ServerKey::new(BRANCH, "h", "INVITE").unwrap().into();
        assert_ne!(c, s);
        assert_eq!(c.to_string(), "client INVITE z9hg4bk74bf9");
        assert_eq!(s.to_string(), "server INVITE h z9hg4bk74bf9");
    }
}
