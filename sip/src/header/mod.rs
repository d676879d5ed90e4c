//! Typed header values. Each parser takes one value (one item of a comma list where the
//! header is a list) and borrows from it.

mod auth;
mod cseq;
mod name_addr;
mod simple;
mod via;

pub use auth::{AuthParams, Challenge, Credentials, DigestChallenge, DigestCredentials};
pub use cseq::CSeq;
pub use name_addr::{DisplayName, NameAddr};
pub use simple::{
    parse_call_id, parse_content_length, parse_expires, parse_max_forwards, parse_token_item,
    MediaType,
};
pub use via::{Transport, Via, BRANCH_MAGIC};

/// The value of the Contact headers of a message: `*` or a list of addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contacts<'a> {
    /// `Contact: *` (remove all bindings, RFC 3261 §10.2.2).
    Wildcard,
    /// The addresses, in order, across every Contact header line.
    List(Vec<NameAddr<'a>>),
}
