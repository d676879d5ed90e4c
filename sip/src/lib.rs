//! SIP messages (RFC 3261): parsing, printing and typed header access, with no I/O.
//!
//! This is the bottom layer of sipcraft's SIP core: the transports hand it bytes, the
//! transaction layer, registrar and proxy get [`Message`]s back, and send what [`build`] and
//! [`rewrite`] produce. Nothing here does I/O or keeps state between messages.
//!
//! - [`parse`] reads one datagram (or one framed stream message) without copying: it indexes
//!   the header lines once and typed accessors ([`Message::top_via`], [`Message::from`],
//!   [`Message::cseq`], [`Message::contacts`], ...) parse a header when asked.
//! - [`frame`] cuts a TCP/TLS byte stream into messages and CRLF keep-alives.
//! - [`check`] classifies a datagram the way RFC 3261 and RFC 4475 expect: accept, answer
//!   (400/416/420/505/513, with the response already buildable) or drop.
//! - [`build::ResponseBuilder`] answers a request; [`rewrite::Rewriter`] edits a request or
//!   response the way a proxy must (Via, Max-Forwards, Route, Record-Route, Request-URI).
//!
//! Also home of the transaction state machines (RFC 3261 §17), which are pure: events and
//! the current time go in, actions and the next deadline come out.
#![forbid(unsafe_code)]

pub mod build;
mod error;
mod framing;
pub mod header;
mod host;
mod lex;
mod limits;
mod message;
mod method;
mod name;
mod params;
mod parse;
pub mod rewrite;
pub mod transaction;
pub mod uri;
mod validate;

pub use error::{HeaderError, ParseError, SyntaxError};
pub use framing::{frame, looks_like_response, Frame};
pub use host::Host;
pub use lex::{unescape_quoted, unfold};
pub use limits::Limits;
pub use message::{Header, Message, RequestLine, StartLine, StatusLine, Version};
pub use method::Method;
pub use name::HeaderName;
pub use params::{unquote, Param, Params};
pub use parse::parse;
pub use uri::{SipUri, TelUri, Uri};
pub use validate::{check, Policy, Rejection, Verdict};
