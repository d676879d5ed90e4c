//! Rows to and from the types on the bus: extensions read, registrations and call records
//! written (and registrations read back after the local state was lost).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipcraft_config::{AuthAlgorithm, Extension, Secret, Transport};
use sipcraft_ipc::state::Binding;
use tokio_postgres::Row;

/// Columns of `extensions` the dbagent reads, in the order [`extension`] expects.
pub const EXTENSION_COLUMNS: &str =
    "number, name, password, ha1_md5, ha1_sha256, enabled, auth_algorithms";

/// Columns of `registrations` read back, in the order [`binding`] expects.
pub const BINDING_COLUMNS: &str = "aor, binding_key, contact, source, transport, worker, \
     connection, instance, reg_id, user_agent, call_id, cseq, q, expires_at";

/// An `extensions` row as an extension, or why it cannot be one (the schema's checks make
/// this rare: a row written before a check existed, or with checks dropped).
pub fn extension(row: &Row) -> Result<Extension, String> {
    let number: String = row.try_get(0).map_err(|e| e.to_string())?;
    let bad = |why: &str| Err(format!("extension {number:?}: {why}"));
    let valid_number = !number.is_empty()
        && number.len() <= 64
        && number
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if !valid_number {
        return bad("number must be 1 to 64 of letters, digits, . - _ +");
    }
    let name: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
    let password: Option<String> = row.try_get(2).map_err(|e| e.to_string())?;
    let md5: Option<String> = row.try_get(3).map_err(|e| e.to_string())?;
    let sha256: Option<String> = row.try_get(4).map_err(|e| e.to_string())?;
    let enabled: bool = row.try_get(5).map_err(|e| e.to_string())?;
    let algorithms: Option<Vec<String>> = row.try_get(6).map_err(|e| e.to_string())?;
    let hex = |v: &Option<String>, len: usize| {
        v.as_ref()
            .is_none_or(|v| v.len() == len && v.chars().all(|c| c.is_ascii_hexdigit()))
    };
    if !hex(&md5, 32) || !hex(&sha256, 64) {
        return bad("ha1_md5 must be 32 hex digits and ha1_sha256 64");
    }
    let secret = match (password, md5, sha256) {
        (Some(p), None, None) if !p.is_empty() => Secret::Password(p),
        (None, md5, sha256) if md5.is_some() || sha256.is_some() => Secret::Ha1 {
            md5: md5.map(|v| v.to_ascii_lowercase()),
            sha256: sha256.map(|v| v.to_ascii_lowercase()),
        },
        _ => return bad("needs a password or HA1 values, not both, not neither"),
    };
    let auth_algorithms = match algorithms {
        None => None,
        Some(names) => {
            let mut list = Vec::new();
            for n in &names {
                match n.parse::<AuthAlgorithm>() {
                    Ok(a) if !list.contains(&a) => list.push(a),
                    _ => return bad("auth_algorithms must list MD5 and/or SHA-256, once each"),
                }
            }
            if list.is_empty() {
                return bad("auth_algorithms must not be empty");
            }
            Some(list)
        }
    };
    Ok(Extension {
        number,
        name,
        secret,
        enabled,
        auth_algorithms,
    })
}

/// Milliseconds since the Unix epoch as a timestamp.
pub fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A `registrations` row back as a binding (after the local state was lost).
pub fn binding(row: &Row) -> Result<Binding, String> {
    let get_err = |e: tokio_postgres::Error| e.to_string();
    let source: String = row.try_get(3).map_err(get_err)?;
    let transport: String = row.try_get(4).map_err(get_err)?;
    let connection: Option<i64> = row.try_get(6).map_err(get_err)?;
    let reg_id: Option<i64> = row.try_get(8).map_err(get_err)?;
    let cseq: i64 = row.try_get(11).map_err(get_err)?;
    let q: Option<i16> = row.try_get(12).map_err(get_err)?;
    let expires: SystemTime = row.try_get(13).map_err(get_err)?;
    Ok(Binding {
        aor: row.try_get(0).map_err(get_err)?,
        key: row.try_get(1).map_err(get_err)?,
        contact: row.try_get(2).map_err(get_err)?,
        source: source
            .parse()
            .map_err(|_| format!("source {source:?} is not an address"))?,
        transport: transport
            .parse::<Transport>()
            .map_err(|()| format!("transport {transport:?} is not known"))?,
        owner: row.try_get(5).map_err(get_err)?,
        connection: connection.map(|c| c as u64),
        instance: row.try_get(7).map_err(get_err)?,
        reg_id: reg_id.map(|r| r as u32),
        user_agent: row.try_get(9).map_err(get_err)?,
        call_id: row.try_get(10).map_err(get_err)?,
        cseq: cseq as u32,
        q: q.map(|q| q as u16),
        expires_at_ms: ms(expires),
    })
}
