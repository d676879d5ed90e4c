//! sipcraft SIP worker.
