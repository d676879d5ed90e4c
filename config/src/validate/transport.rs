//! The transport-specific keys of a `[[listen]]` entry: certificate files for `tls` and
//! `wss`, the Origin allow-list for `ws` and `wss`.
//!
//! The certificate files are read here, so `sipcraft config check` and a reload name a
//! missing or unreadable file with its key and line. Only the PEM structure is checked (a
//! certificate, a private key); whether the key belongs to the certificate is checked by the
//! workers when they build their TLS configuration, and a mismatch there keeps the
//! certificate they already serve.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject, SectionKind};

use crate::file::ListenFile;
use crate::model::{TlsFiles, Transport};
use crate::problem::Collector;

use super::resolve;

/// The `tls` settings of entry `key` (`listen[i]`); `None` for plain transports, or when a
/// required file is missing (reported).
pub(super) fn tls_files(
    c: &mut Collector<'_>,
    key: &str,
    entry: &ListenFile,
    transport: Option<Transport>,
    base_dir: &Path,
) -> Option<TlsFiles> {
    let secure = transport.map(Transport::is_secure);
    if secure == Some(false) {
        for (name, value) in [
            ("cert", &entry.cert),
            ("key", &entry.key),
            ("client_ca", &entry.client_ca),
        ] {
            if value.is_some() {
                c.at(
                    format!("{key}.{name}"),
                    "only tls and wss entries take certificate files",
                );
            }
        }
        return None;
    }
    let cert = file(c, &format!("{key}.cert"), entry.cert.as_deref(), base_dir);
    let private = file(c, &format!("{key}.key"), entry.key.as_deref(), base_dir);
    let client_ca = file(
        c,
        &format!("{key}.client_ca"),
        entry.client_ca.as_deref(),
        base_dir,
    );
    // An unknown transport is already reported: nothing more to say about its files.
    secure?;
    let transport = transport.map_or("", Transport::as_str);
    for (name, value) in [("cert", &cert), ("key", &private)] {
        if value.is_none() && !c.reported(&format!("{key}.{name}")) {
            let what = if name == "cert" {
                "the PEM certificate chain, server certificate first"
            } else {
                "the PEM private key of the certificate"
            };
            c.at(
                format!("{key}.{name}"),
                format!("missing: {what} ({transport} serves a certificate)"),
            );
        }
    }
    if let Some(path) = &cert {
        check_pem(c, &format!("{key}.cert"), path, Expect::Certificates);
    }
    if let Some(path) = &private {
        check_pem(c, &format!("{key}.key"), path, Expect::PrivateKey);
    }
    if let Some(path) = &client_ca {
        check_pem(c, &format!("{key}.client_ca"), path, Expect::Certificates);
    }
    Some(TlsFiles {
        cert: cert?,
        key: private?,
        client_ca,
    })
}

/// `allowed_origins` of entry `key`, each lower-cased.
pub(super) fn origins(
    c: &mut Collector<'_>,
    key: &str,
    entry: &ListenFile,
    transport: Option<Transport>,
) -> Vec<String> {
    let Some(list) = &entry.allowed_origins else {
        return Vec::new();
    };
    if transport.is_some_and(|t| !t.is_websocket()) {
        c.at(
            format!("{key}.allowed_origins"),
            "only ws and wss entries take allowed_origins",
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (j, origin) in list.iter().enumerate() {
        if is_origin(origin) {
            out.push(origin.to_ascii_lowercase());
        } else {
            c.at(
                format!("{key}.allowed_origins[{j}]"),
                format!(
                    "{origin:?} is not an origin (expected scheme://host or scheme://host:port, \
                     e.g. https://phone.example.com)"
                ),
            );
        }
    }
    out
}

/// `scheme://host[:port]`, nothing after (RFC 6454 serialisation).
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let host_ok = !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest
            .rsplit_once(':')
            .filter(|(_, port)| !port.ends_with(']'))
            .is_none_or(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    scheme_ok && host_ok
}

/// A file path from the file, resolved against the config directory.
fn file(c: &mut Collector<'_>, key: &str, value: Option<&str>, base_dir: &Path) -> Option<PathBuf> {
    let value = value?;
    if value.trim().is_empty() {
        c.at(key, "must not be empty");
        return None;
    }
    Some(resolve(base_dir, value))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Certificates,
    PrivateKey,
}

/// Reads `path` and checks it holds what `expect` says, in PEM.
pub(crate) fn check_pem(c: &mut Collector<'_>, key: &str, path: &Path, expect: Expect) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            c.at(key, format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let mut certificates = 0usize;
    let mut keys = 0usize;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        match item {
            Ok((SectionKind::Certificate, _)) => certificates += 1,
            Ok((
                SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey,
                _,
            )) => keys += 1,
            Ok(_) => {}
            Err(e) => {
                c.at(
                    key,
                    format!("{} is not valid PEM: {}", path.display(), pem_error(&e)),
                );
                return;
            }
        }
    }
    let problem = match expect {
        Expect::Certificates if certificates == 0 => Some("holds no PEM certificate"),
        Expect::PrivateKey if keys == 0 => Some(
            "holds no PEM private key (expected BEGIN PRIVATE KEY, RSA PRIVATE KEY or \
             EC PRIVATE KEY)",
        ),
        Expect::PrivateKey if keys > 1 => Some("holds more than one private key"),
        _ => None,
    };
    if let Some(problem) = problem {
        c.at(key, format!("{} {problem}", path.display()));
    }
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "bad base64 inside a section".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::is_origin;
    use crate::{apply_live, parse, restart_needed, Problem, Transport};

    /// Structure is all validation looks at: a PEM block of the right kind.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn config(dir: &Path, listen: &str) -> String {
        format!(
            "[server]\ndomain = \"pbx.test\"\nruntime_dir = \"/run/s\"\nstate_dir = \"/var/s\"\n\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:5060\"\nworkers = 1\n\n\
             [[listen]]\n{listen}\n",
        )
        .replace("DIR", &dir.display().to_string())
    }

    fn problems(text: &str, dir: &Path) -> Vec<Problem> {
        parse(text, &dir.join("sipcraft.toml"))
            .expect_err("config should be rejected")
            .into_vec()
    }

    fn files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), CERT).unwrap();
        std::fs::write(dir.path().join("key.pem"), KEY).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "hello\n").unwrap();
        dir
    }

    #[test]
    fn tls_entry_with_relative_files() {
        let dir = files();
        let text = config(
            dir.path(),
            "transport = \"tls\"\naddress = \"127.0.0.1:5061\"\nworkers = 1\n\
             cert = \"cert.pem\"\nkey = \"DIR/key.pem\"\nclient_ca = \"cert.pem\"",
        );
        let c = parse(&text, &dir.path().join("sipcraft.toml")).unwrap_or_else(|p| panic!("{p}"));
        let tls = c.listen[1].tls.as_ref().expect("tls files");
        assert_eq!(c.listen[1].transport, Transport::Tls);
        assert_eq!(tls.cert, dir.path().join("cert.pem"));
        assert_eq!(tls.key, dir.path().join("key.pem"));
        assert_eq!(
            tls.client_ca.as_deref(),
            Some(&*dir.path().join("cert.pem"))
        );
        assert!(c.listen[0].tls.is_none());
        assert_eq!(c.worker_specs()[1].name, "tls-0");
    }

    #[test]
    fn tls_problems_are_named() {
        let dir = files();
        let text = config(
            dir.path(),
            "transport = \"wss\"\naddress = \"127.0.0.1:5060\"\n\
             cert = \"junk.pem\"\nkey = \"cert.pem\"\nclient_ca = \"nowhere.pem\"\n\
             allowed_origins = [\"https://ok.example\", \"ok.example\"]\n\n\
             [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:5060\"\ncert = \"cert.pem\"\n\
             allowed_origins = []\n\n\
             [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:5061\"",
        );
        let p = problems(&text, dir.path());
        let msg = |key: &str| {
            p.iter()
                .find(|p| p.key == key)
                .unwrap_or_else(|| panic!("no problem at {key}: {p:#?}"))
                .message
                .clone()
        };
        assert!(msg("listen[1].cert").ends_with("junk.pem holds no PEM certificate"));
        assert!(msg("listen[1].key").contains("cert.pem holds no PEM private key"));
        assert!(msg("listen[1].client_ca").starts_with("cannot read "));
        assert!(msg("listen[1].allowed_origins[1]").contains("is not an origin"));
        assert_eq!(
            msg("listen[2].cert"),
            "only tls and wss entries take certificate files"
        );
        assert_eq!(
            msg("listen[2].allowed_origins"),
            "only ws and wss entries take allowed_origins"
        );
        assert_eq!(
            msg("listen[2].address"),
            "tcp 127.0.0.1:5060 is already listened on by listen[1] (line 11), a wss entry \
             (tcp, tls, ws and wss entries are all TCP sockets)"
        );
        assert_eq!(
            msg("listen[3].cert"),
            "missing: the PEM certificate chain, server certificate first (tls serves a certificate)"
        );
        assert!(msg("listen[3].key").starts_with("missing: "));
        assert_eq!(p.len(), 9, "{p:#?}");
    }

    #[test]
    fn certificates_and_origins_reload_live() {
        let dir = files();
        std::fs::copy(dir.path().join("cert.pem"), dir.path().join("new.pem")).unwrap();
        let entry = |cert: &str, origin: &str| {
            config(
                dir.path(),
                &format!(
                    "transport = \"wss\"\naddress = \"127.0.0.1:8443\"\nworkers = 1\n\
                     cert = \"{cert}\"\nkey = \"key.pem\"\nallowed_origins = [\"{origin}\"]"
                ),
            )
        };
        let load = |text: &str| parse(text, &dir.path().join("sipcraft.toml")).unwrap();
        let old = load(&entry("cert.pem", "https://a.example"));
        let new = load(&entry("new.pem", "https://B.example"));
        assert!(restart_needed(&old, &new).is_empty());
        let applied = apply_live(&old, new);
        assert_eq!(
            applied.listen[1].tls.as_ref().unwrap().cert,
            dir.path().join("new.pem")
        );
        assert_eq!(applied.listen[1].allowed_origins, ["https://b.example"]);
        let moved = load(&entry("new.pem", "https://a.example").replace("8443", "8444"));
        assert_eq!(restart_needed(&old, &moved), ["listen[1]"]);
        let applied = apply_live(&old, moved);
        assert_eq!(applied.listen, old.listen);
    }

    #[test]
    fn origins() {
        for ok in [
            "https://phone.example.com",
            "http://127.0.0.1:8080",
            "https://[::1]:443",
            "https://[::1]",
            "app://x",
        ] {
            assert!(is_origin(ok), "{ok}");
        }
        for bad in [
            "phone.example.com",
            "https://",
            "https://x/path",
            "https://x:99999",
            "1https://x",
            "https://:80",
            "*",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
