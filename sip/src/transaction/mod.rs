//! Transaction state machines (RFC 3261 §17).
