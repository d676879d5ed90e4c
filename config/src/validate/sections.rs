//! The optional sections: every key has a default and a range.

use crate::file::{
    DbAgentFile, LimitsFile, ProxyFile, RegistrarFile, SecurityFile, SupervisorFile,
};
use crate::problem::Collector;
use crate::sections::{DbAgent, IpNet, Limits, Proxy, Registrar, Security, Supervisor};

use super::extension::algorithms;
use super::{number, number32};

const DAY_S: u64 = 86_400;

/// Marks a value in a message as the default when the file did not set it.
fn default_note(set: Option<u64>) -> &'static str {
    if set.is_some() {
        ""
    } else {
        ", the default"
    }
}

pub(super) fn registrar(file: &RegistrarFile, c: &mut Collector<'_>) -> Registrar {
    let d = Registrar::default();
    let min_expires = number32(
        c,
        "registrar.min_expires",
        file.min_expires,
        d.min_expires,
        1..=DAY_S,
    );
    let max_expires = number32(
        c,
        "registrar.max_expires",
        file.max_expires,
        d.max_expires,
        1..=7 * DAY_S,
    );
    if min_expires > max_expires {
        let key = if file.max_expires.is_some() {
            "registrar.max_expires"
        } else {
            "registrar.min_expires"
        };
        c.at(
            key,
            format!(
                "min_expires ({min_expires}{}) is above max_expires ({max_expires}{})",
                default_note(file.min_expires),
                default_note(file.max_expires),
            ),
        );
    }
    // When not set, the default expiry follows the bounds the file did set.
    let default_expires = match file.default_expires {
        None => d
            .default_expires
            .clamp(min_expires.min(max_expires), max_expires),
        Some(v) => {
            let v = number32(
                c,
                "registrar.default_expires",
                Some(v),
                d.default_expires,
                1..=7 * DAY_S,
            );
            if !(min_expires..=max_expires).contains(&v) {
                c.at(
                    "registrar.default_expires",
                    format!(
                        "{v} is outside min_expires..=max_expires ({min_expires}..={max_expires})"
                    ),
                );
            }
            v
        }
    };
    let auth_algorithms = match &file.auth_algorithms {
        None => d.auth_algorithms,
        Some(list) => algorithms(c, "registrar.auth_algorithms", list).unwrap_or(d.auth_algorithms),
    };
    Registrar {
        min_expires,
        max_expires,
        default_expires,
        max_contacts_per_aor: number32(
            c,
            "registrar.max_contacts_per_aor",
            file.max_contacts_per_aor,
            d.max_contacts_per_aor,
            1..=1_000,
        ),
        auth_algorithms,
        nonce_lifetime_s: number(
            c,
            "registrar.nonce_lifetime_s",
            file.nonce_lifetime_s,
            d.nonce_lifetime_s,
            10..=DAY_S,
        ),
    }
}

pub(super) fn security(file: &SecurityFile, c: &mut Collector<'_>) -> Security {
    let d = Security::default();
    let mut trusted_ips = Vec::new();
    for (j, text) in file.trusted_ips.iter().flatten().enumerate() {
        match text.parse::<IpNet>() {
            Ok(net) => trusted_ips.push(net),
            Err(e) => c.at(
                format!("security.trusted_ips[{j}]"),
                format!("{text:?} {e}"),
            ),
        }
    }
    Security {
        auth_failures_before_ban: number32(
            c,
            "security.auth_failures_before_ban",
            file.auth_failures_before_ban,
            d.auth_failures_before_ban,
            1..=1_000_000,
        ),
        ban_window_s: number(
            c,
            "security.ban_window_s",
            file.ban_window_s,
            d.ban_window_s,
            1..=DAY_S,
        ),
        ban_time_s: number(
            c,
            "security.ban_time_s",
            file.ban_time_s,
            d.ban_time_s,
            1..=365 * DAY_S,
        ),
        requests_per_second_per_ip: number32(
            c,
            "security.requests_per_second_per_ip",
            file.requests_per_second_per_ip,
            d.requests_per_second_per_ip,
            1..=1_000_000,
        ),
        trusted_ips,
    }
}

pub(super) fn limits(file: &LimitsFile, c: &mut Collector<'_>) -> Limits {
    let d = Limits::default();
    Limits {
        max_message_bytes: number32(
            c,
            "limits.max_message_bytes",
            file.max_message_bytes,
            d.max_message_bytes,
            1_500..=1_048_576,
        ),
        max_tcp_connections: number32(
            c,
            "limits.max_tcp_connections",
            file.max_tcp_connections,
            d.max_tcp_connections,
            1..=1_000_000,
        ),
        tcp_idle_timeout_s: number(
            c,
            "limits.tcp_idle_timeout_s",
            file.tcp_idle_timeout_s,
            d.tcp_idle_timeout_s,
            1..=7 * DAY_S,
        ),
        max_transactions: number32(
            c,
            "limits.max_transactions",
            file.max_transactions,
            d.max_transactions,
            1..=10_000_000,
        ),
        udp_linger_ms: number(
            c,
            "limits.udp_linger_ms",
            file.udp_linger_ms,
            d.udp_linger_ms,
            0..=32_000,
        ),
        udp_wake_all_below: number(
            c,
            "limits.udp_wake_all_below",
            file.udp_wake_all_below,
            d.udp_wake_all_below,
            0..=10_000_000,
        ),
    }
}

pub(super) fn proxy(file: &ProxyFile, c: &mut Collector<'_>) -> Proxy {
    let d = Proxy::default();
    Proxy {
        ring_timeout_s: number(
            c,
            "proxy.ring_timeout_s",
            file.ring_timeout_s,
            d.ring_timeout_s,
            5..=1_800,
        ),
    }
}

pub(super) fn supervisor(file: &SupervisorFile, c: &mut Collector<'_>) -> Supervisor {
    let d = Supervisor::default();
    let backoff_initial_ms = number(
        c,
        "supervisor.backoff_initial_ms",
        file.backoff_initial_ms,
        d.backoff_initial_ms,
        1..=60_000,
    );
    let backoff_max_ms = number(
        c,
        "supervisor.backoff_max_ms",
        file.backoff_max_ms,
        d.backoff_max_ms,
        1..=3_600_000,
    );
    if backoff_initial_ms > backoff_max_ms {
        let key = if file.backoff_max_ms.is_some() {
            "supervisor.backoff_max_ms"
        } else {
            "supervisor.backoff_initial_ms"
        };
        c.at(
            key,
            format!(
                "backoff_initial_ms ({backoff_initial_ms}{}) is above backoff_max_ms \
                 ({backoff_max_ms}{})",
                default_note(file.backoff_initial_ms),
                default_note(file.backoff_max_ms),
            ),
        );
    }
    Supervisor {
        backoff_initial_ms,
        backoff_max_ms,
        healthy_after_s: number(
            c,
            "supervisor.healthy_after_s",
            file.healthy_after_s,
            d.healthy_after_s,
            1..=DAY_S,
        ),
        crash_loop_restarts: number32(
            c,
            "supervisor.crash_loop_restarts",
            file.crash_loop_restarts,
            d.crash_loop_restarts,
            1..=1_000,
        ),
        stop_timeout_s: number(
            c,
            "supervisor.stop_timeout_s",
            file.stop_timeout_s,
            d.stop_timeout_s,
            1..=3_600,
        ),
    }
}

pub(super) fn dbagent(file: &DbAgentFile, c: &mut Collector<'_>) -> DbAgent {
    let d = DbAgent::default();
    DbAgent {
        journal_max_bytes: number(
            c,
            "dbagent.journal_max_bytes",
            file.journal_max_bytes,
            d.journal_max_bytes,
            DbAgent::MIN_JOURNAL_BYTES..=DbAgent::MAX_JOURNAL_BYTES,
        ),
    }
}
