//! TLS for `tls` and `wss` listen entries (rustls, TLS 1.2 and 1.3).
//!
//! The worker's [`Certificates`] hold the rustls server configuration that new handshakes
//! use. A reload builds a new configuration from the files and swaps it in: connections
//! already established keep the session they negotiated, new handshakes get the new
//! certificate. A configuration that cannot be built (unreadable file, key that does not
//! match the certificate, CA file without a usable certificate) is refused with a log line
//! and an alarm in `ctl status`, and the certificate already served stays.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sipcraft_config::TlsFiles;
use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    ReadFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no usable PEM private key")]
    NoKey {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no CA certificate in {path} could be used to verify clients")]
    ClientCa {
        path: String,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the key in {key} cannot be used with the certificate in {cert}")]
    KeyMismatch {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
}

/// What a certificate load produced, for logs and `ctl status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Certificates in the chain served.
    pub chain: usize,
    /// Whether clients must present a certificate (mutual TLS).
    pub client_auth: bool,
}

/// The TLS configuration new handshakes use; cloned into the accept loop, swapped on reload.
#[derive(Clone)]
pub struct Certificates {
    current: Arc<RwLock<TlsAcceptor>>,
    /// The last reload's failure, until one succeeds: shown as the worker's alarm.
    alarm: Arc<RwLock<Option<String>>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("alarm", &self.alarm())
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads the files (at worker start: failing here stops the worker with the reason).
    pub fn load(files: &TlsFiles) -> Result<(Self, Loaded), TlsError> {
        let (config, loaded) = server_config(files)?;
        let certs = Certificates {
            current: Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config)))),
            alarm: Arc::new(RwLock::new(None)),
        };
        Ok((certs, loaded))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files; on success new handshakes use them, on failure the certificate
    /// already served stays and the failure is kept as an alarm. Reads files: call it off the
    /// SIP path (see [`Certificates::reload_in_background`]).
    pub fn reload(&self, files: &TlsFiles) -> Result<Loaded, TlsError> {
        match server_config(files) {
            Ok((config, loaded)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    TlsAcceptor::from(Arc::new(config));
                *self.alarm.write().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(loaded)
            }
            Err(e) => {
                *self.alarm.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("certificate reload refused: {}", chain(&e)));
                Err(e)
            }
        }
    }

    /// [`Certificates::reload`] on the blocking pool, logging the outcome.
    pub fn reload_in_background(&self, files: TlsFiles) {
        let certs = self.clone();
        tokio::task::spawn_blocking(move || match certs.reload(&files) {
            Ok(loaded) => tracing::info!(
                cert = %files.cert.display(),
                chain = loaded.chain,
                client_auth = loaded.client_auth,
                "tls certificate reloaded: new connections get it, established ones keep theirs"
            ),
            Err(e) => tracing::error!(
                cert = %files.cert.display(),
                error = %chain(&e),
                "tls certificate reload refused; still serving the previous certificate"
            ),
        });
    }

    /// The last reload failure, while the old certificate is still being served.
    pub fn alarm(&self) -> Option<String> {
        self.alarm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A rustls server configuration from the files: TLS 1.3 and 1.2, the ring provider, and a
/// client verifier when `client_ca` is set.
pub fn server_config(files: &TlsFiles) -> Result<(ServerConfig, Loaded), TlsError> {
    let chain = read_certs(&files.cert)?;
    let key_bytes = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| TlsError::NoKey {
        path: files.key.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.3 and 1.2");
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                // Unusable entries are skipped; none usable is an error below.
                let _ = roots.add(cert);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.display().to_string(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let loaded = Loaded {
        chain: chain.len(),
        client_auth: files.client_ca.is_some(),
    };
    // with_single_cert checks that the key matches the first certificate.
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::KeyMismatch {
            cert: files.cert.display().to_string(),
            key: files.key.display().to_string(),
            source,
        })?;
    Ok((config, loaded))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The first byte of every TLS connection: a handshake record (RFC 8446 §5.1).
pub const HANDSHAKE_RECORD: u8 = 0x16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_mismatched_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let e = server_config(&files).unwrap_err();
        assert!(matches!(e, TlsError::ReadFile { .. }), "{e}");

        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        std::fs::write(&files.cert, a.cert.pem()).unwrap();
        std::fs::write(&files.key, a.signing_key.serialize_pem()).unwrap();
        let (certs, loaded) = Certificates::load(&files).unwrap();
        assert_eq!(loaded.chain, 1);

        std::fs::write(&files.key, b.signing_key.serialize_pem()).unwrap();
        let e = certs.reload(&files).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{}", chain(&e));
        assert!(certs
            .alarm()
            .unwrap()
            .starts_with("certificate reload refused"));

        std::fs::write(&files.cert, b.cert.pem()).unwrap();
        certs.reload(&files).unwrap();
        assert_eq!(certs.alarm(), None);

        let with_ca = TlsFiles {
            client_ca: Some(dir.path().join("key.pem")),
            ..files
        };
        let e = server_config(&with_ca).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    }
}
