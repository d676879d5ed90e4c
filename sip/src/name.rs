//! Header names: the ones this crate knows (with their compact forms, RFC 3261 §7.3.3 and
//! later RFCs), and any other token.

use std::fmt;

macro_rules! header_names {
    ($( $variant:ident => $canon:literal, $lower:literal $(, $compact:literal)? ; )*) => {
        #[derive(Clone, Copy)]
        #[allow(dead_code)]
        enum Kind { $( $variant, )* }

        /// A header field name. Known names are matched case-insensitively, compact forms
        /// included; anything else is [`HeaderName::Other`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HeaderName<'a> {
            $(
                #[doc = $canon]
                $variant,
            )*
            /// Any other header name, as written.
            Other(&'a str),
        }

        /// Number of known names (the size of the per-message lookup table).
        pub(crate) const KNOWN: usize = [$( $canon ),*].len();

        /// Canonical spelling of a known name with a `'static` lifetime; `"extension"` for
        /// any other name.
        pub(crate) fn canonical_static(n: HeaderName<'_>) -> &'static str {
            match n {
                $( HeaderName::$variant => $canon, )*
                HeaderName::Other(_) => "extension",
            }
        }

        impl<'a> HeaderName<'a> {
            /// Canonical (long) spelling; for `Other`, the name as written.
            pub fn as_str(&self) -> &'a str {
                match self {
                    $( HeaderName::$variant => $canon, )*
                    HeaderName::Other(s) => s,
                }
            }

            /// Index in the per-message table of first occurrences, for known names.
            pub(crate) fn index(&self) -> Option<usize> {
                match self {
                    $( HeaderName::$variant => Some(Kind::$variant as usize), )*
                    HeaderName::Other(_) => None,
                }
            }

            /// Reads a header name (case-insensitive, compact forms allowed).
            pub fn parse(s: &'a str) -> HeaderName<'a> {
                // Most senders use the canonical spelling: try it first, exactly.
                match s {
                    $( $canon => return HeaderName::$variant, )*
                    _ => {}
                }
                let mut buf = [0u8; 24];
                let Some(dst) = buf.get_mut(..s.len()) else {
                    return HeaderName::Other(s);
                };
                dst.copy_from_slice(s.as_bytes());
                dst.make_ascii_lowercase();
                match &*dst {
                    $(
                        $lower => HeaderName::$variant,
                        $( [c] if *c == $compact => HeaderName::$variant, )?
                    )*
                    _ => HeaderName::Other(s),
                }
            }
        }
    };
}

header_names! {
    Via => "Via", b"via", b'v';
    From => "From", b"from", b'f';
    To => "To", b"to", b't';
    CallId => "Call-ID", b"call-id", b'i';
    CSeq => "CSeq", b"cseq";
    Contact => "Contact", b"contact", b'm';
    MaxForwards => "Max-Forwards", b"max-forwards";
    Expires => "Expires", b"expires";
    MinExpires => "Min-Expires", b"min-expires";
    Route => "Route", b"route";
    RecordRoute => "Record-Route", b"record-route";
    Path => "Path", b"path";
    Authorization => "Authorization", b"authorization";
    ProxyAuthorization => "Proxy-Authorization", b"proxy-authorization";
    WwwAuthenticate => "WWW-Authenticate", b"www-authenticate";
    ProxyAuthenticate => "Proxy-Authenticate", b"proxy-authenticate";
    AuthenticationInfo => "Authentication-Info", b"authentication-info";
    Require => "Require", b"require";
    ProxyRequire => "Proxy-Require", b"proxy-require";
    Supported => "Supported", b"supported", b'k';
    Unsupported => "Unsupported", b"unsupported";
    Allow => "Allow", b"allow";
    Accept => "Accept", b"accept";
    ContentLength => "Content-Length", b"content-length", b'l';
    ContentType => "Content-Type", b"content-type", b'c';
    ContentEncoding => "Content-Encoding", b"content-encoding", b'e';
    ContentDisposition => "Content-Disposition", b"content-disposition";
    UserAgent => "User-Agent", b"user-agent";
    Server => "Server", b"server";
    Subject => "Subject", b"subject", b's';
    Event => "Event", b"event", b'o';
    AllowEvents => "Allow-Events", b"allow-events", b'u';
    ReferTo => "Refer-To", b"refer-to", b'r';
    ReferredBy => "Referred-By", b"referred-by", b'b';
    SessionExpires => "Session-Expires", b"session-expires", b'x';
    AcceptContact => "Accept-Contact", b"accept-contact", b'a';
    RejectContact => "Reject-Contact", b"reject-contact", b'j';
    RequestDisposition => "Request-Disposition", b"request-disposition", b'd';
    Identity => "Identity", b"identity", b'y';
    Date => "Date", b"date";
    Timestamp => "Timestamp", b"timestamp";
    Warning => "Warning", b"warning";
    RetryAfter => "Retry-After", b"retry-after";
}

impl fmt::Display for HeaderName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_compact_and_other() {
        assert_eq!(HeaderName::parse("MaX-fOrWaRdS"), HeaderName::MaxForwards);
        assert_eq!(HeaderName::parse("v"), HeaderName::Via);
        assert_eq!(HeaderName::parse("V"), HeaderName::Via);
        assert_eq!(HeaderName::parse("i"), HeaderName::CallId);
        assert_eq!(HeaderName::parse("l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::parse("k"), HeaderName::Supported);
        assert_eq!(
            HeaderName::parse("C%6Fntact"),
            HeaderName::Other("C%6Fntact")
        );
        assert_eq!(
            HeaderName::parse("a-very-long-extension-header-name"),
            HeaderName::Other("a-very-long-extension-header-name")
        );
        assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
        assert_eq!(HeaderName::Via.index(), Some(0));
        assert_eq!(HeaderName::Other("x").index(), None);
        const { assert!(KNOWN > 30) };
    }
}
