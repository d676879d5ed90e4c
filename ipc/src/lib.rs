//! sipcraft IPC: the contract between the processes of one sipcraft instance.
//!
//! - [`codec`]: frames (`u32` little-endian length, postcard body), no I/O.
//! - [`wire`]: every message type, one enum per direction, in an envelope.
//! - [`state`]: the replicated state and its reducer, the same code in every process.
//! - [`bindings`]: the compact table every replica keeps its bindings in.
//! - [`conn`]: framed connections over local sockets (Unix sockets, Windows named pipes).
//! - [`mail`]: one handed-over SIP message per datagram, between UDP workers sharing a socket.
//! - `claims` (Linux): which UDP worker holds a transaction, in memory the UDP workers share.

#![deny(unsafe_code)]

pub mod bindings;
pub mod child;
#[cfg(target_os = "linux")]
pub mod claims;
pub mod codec;
pub mod conn;
pub mod mail;
pub mod state;
pub mod wire;

pub use interprocess::local_socket::tokio::Listener;

pub use wire::PROTOCOL_VERSION;
