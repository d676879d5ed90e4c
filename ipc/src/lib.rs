//! sipcraft IPC: wire types, framing codec and local-socket transport.
