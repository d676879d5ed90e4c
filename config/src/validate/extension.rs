//! `[[extension]]` entries and digest algorithm lists.

use crate::file::ExtensionFile;
use crate::model::{AuthAlgorithm, Extension, Secret};
use crate::problem::Collector;
use crate::sections::Registrar;

use super::{line_note, required, FirstUse};

pub(super) fn extensions(
    entries: &[ExtensionFile],
    registrar: &Registrar,
    c: &mut Collector<'_>,
) -> Vec<Extension> {
    let mut numbers = FirstUse::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = format!("extension[{i}]");
        let number_key = format!("{key}.number");
        let number = required(
            c,
            &number_key,
            entry.number.as_ref(),
            "the extension's number, e.g. \"1001\"",
        )
        .unwrap_or_default()
        .to_string();
        if entry.number.is_some() {
            if !is_user_part(&number) {
                c.at(
                    &number_key,
                    format!(
                        "{number:?} is not an extension number (use letters, digits, \
                         '.', '-', '_', '+')"
                    ),
                );
            } else if let Some(first) = numbers.insert(&number, i) {
                let there = format!("extension[{first}]");
                let note = line_note(c, &format!("{there}.number"));
                c.at(
                    &number_key,
                    format!("{number:?} is already used by {there}{note}"),
                );
            }
        }
        let secret = secret(entry, &key, c);
        let auth_algorithms = entry
            .auth_algorithms
            .as_ref()
            .and_then(|list| algorithms(c, &format!("{key}.auth_algorithms"), list));
        let extension = Extension {
            number,
            name: entry.name.clone(),
            secret,
            enabled: entry.enabled.unwrap_or(true),
            auth_algorithms,
        };
        check_challenge(c, &key, &extension, registrar);
        out.push(extension);
    }
    out
}

/// Characters allowed in an extension number: a subset of the SIP user part that needs no
/// escaping anywhere (URIs, digest user names, file names, SQL).
fn is_user_part(number: &str) -> bool {
    !number.is_empty()
        && number.len() <= 64
        && number
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | '+'))
}

fn secret(entry: &ExtensionFile, key: &str, c: &mut Collector<'_>) -> Secret {
    let has_ha1 = entry.ha1_md5.is_some() || entry.ha1_sha256.is_some();
    match (&entry.password, has_ha1) {
        (Some(_), true) => c.at(
            key,
            "has both password and ha1_md5/ha1_sha256: give one or the other",
        ),
        (None, false) => {
            let dropped = ["password", "ha1_md5", "ha1_sha256"]
                .iter()
                .any(|k| c.reported(&format!("{key}.{k}")));
            if !dropped {
                c.at(
                    key,
                    "has no secret: set password, ha1_md5 or ha1_sha256 \
                     (HA1 = hex digest of \"number:domain:password\")",
                );
            }
        }
        (Some(password), false) if password.is_empty() => {
            c.at(format!("{key}.password"), "must not be empty");
        }
        _ => {}
    }
    match &entry.password {
        Some(password) => Secret::Password(password.clone()),
        None => Secret::Ha1 {
            md5: ha1(
                c,
                &format!("{key}.ha1_md5"),
                entry.ha1_md5.as_deref(),
                32,
                "MD5",
            ),
            sha256: ha1(
                c,
                &format!("{key}.ha1_sha256"),
                entry.ha1_sha256.as_deref(),
                64,
                "SHA-256",
            ),
        },
    }
}

/// Checks an HA1 value's length and digits; returns it in lowercase.
fn ha1(
    c: &mut Collector<'_>,
    key: &str,
    value: Option<&str>,
    digits: usize,
    algorithm: &str,
) -> Option<String> {
    let value = value?;
    if value.len() != digits || !value.chars().all(|ch| ch.is_ascii_hexdigit()) {
        c.at(
            key,
            format!(
                "must be {digits} hex digits ({algorithm} of \"number:domain:password\"), \
                 found {} characters{}",
                value.chars().count(),
                if value.chars().all(|ch| ch.is_ascii_hexdigit()) {
                    ""
                } else {
                    " with non-hex ones"
                }
            ),
        );
    }
    Some(value.to_ascii_lowercase())
}

/// Parses a list of algorithm names: known, unique, not empty. `None` if anything is wrong.
pub(super) fn algorithms(
    c: &mut Collector<'_>,
    key: &str,
    names: &[String],
) -> Option<Vec<AuthAlgorithm>> {
    if names.is_empty() {
        c.at(key, "must list at least one of \"MD5\", \"SHA-256\"");
        return None;
    }
    let mut out = Vec::with_capacity(names.len());
    let mut ok = true;
    for (j, name) in names.iter().enumerate() {
        match name.parse::<AuthAlgorithm>() {
            Ok(a) if out.contains(&a) => {
                c.at(format!("{key}[{j}]"), format!("{name:?} is listed twice"));
                ok = false;
            }
            Ok(a) => out.push(a),
            Err(()) => {
                c.at(
                    format!("{key}[{j}]"),
                    format!("{name:?} is not a digest algorithm (expected \"MD5\" or \"SHA-256\")"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// An HA1-only extension must be able to answer its challenges.
fn check_challenge(c: &mut Collector<'_>, key: &str, ext: &Extension, registrar: &Registrar) {
    let Secret::Ha1 { md5, sha256 } = &ext.secret else {
        return;
    };
    if md5.is_none() && sha256.is_none() {
        return; // already reported: no secret
    }
    if let Some(list) = &ext.auth_algorithms {
        for (j, algorithm) in list.iter().enumerate() {
            if !ext.secret.supports(*algorithm) {
                let field = match algorithm {
                    AuthAlgorithm::Md5 => "ha1_md5",
                    AuthAlgorithm::Sha256 => "ha1_sha256",
                };
                c.at(
                    format!("{key}.auth_algorithms[{j}]"),
                    format!(
                        "{:?} needs {field} (or a password) on this extension",
                        algorithm.as_str()
                    ),
                );
            }
        }
    } else if ext.challenge_algorithms(registrar).is_empty() {
        c.at(
            key,
            "none of registrar.auth_algorithms can be answered with this extension's \
             ha1_* values; add the matching HA1 or set auth_algorithms here",
        );
    }
}
