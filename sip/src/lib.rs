//! SIP messages (RFC 3261): parsing, printing and typed header access, with no I/O.
//!
//! Also home of the transaction state machines (RFC 3261 §17), which are pure: events and
//! the current time go in, actions and the next deadline come out.

pub mod transaction;
