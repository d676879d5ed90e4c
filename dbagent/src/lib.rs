//! sipcraft dbagent.
