//! sipcraft supervisor.
