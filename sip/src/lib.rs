//! SIP messages (RFC 3261): parsing, printing and typed header access, with no I/O.
