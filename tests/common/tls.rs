//! TLS for the tests: certificates made at run time (rcgen) and a blocking rustls client.
//!
//! A [`Pki`] is a test CA in a directory: it issues the server certificate the config
//! points at (`server.pem`, `server.key`), can re-issue it in place (for reload tests), and
//! issues client certificates for mutual TLS.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A test certificate authority and the files it wrote.
pub struct Pki {
    pub dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_der: CertificateDer<'static>,
    /// The certificate currently in `server.pem`.
    pub server_der: CertificateDer<'static>,
}

impl Pki {
    /// A CA named `name`, and a server certificate for `pbx.test` and 127.0.0.1 written to
    /// `dir/server.pem` and `dir/server.key` (the CA to `dir/ca.pem`).
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let mut pki = Pki {
            dir: dir.to_owned(),
            ca_der: ca.der().clone(),
            ca_params,
            ca_key,
            server_der: CertificateDer::from(Vec::new()),
        };
        pki.issue_server("server 1");
        pki
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A new key and server certificate (common name `cn`) in place of the old files.
    pub fn issue_server(&mut self, cn: &str) -> CertificateDer<'static> {
        let (cert, key) = self.issue(cn, &["pbx.test", "127.0.0.1"]);
        // Written beside, then renamed: a reload never sees half a file.
        let tmp = self.dir.join("server.tmp");
        std::fs::write(&tmp, cert.pem()).unwrap();
        std::fs::rename(&tmp, self.cert_path()).unwrap();
        std::fs::write(&tmp, key.serialize_pem()).unwrap();
        std::fs::rename(&tmp, self.key_path()).unwrap();
        self.server_der = cert.der().clone();
        self.server_der.clone()
    }

    /// A certificate and key signed by this CA, not written anywhere.
    pub fn issue(&self, cn: &str, names: &[&str]) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::new(self.ca_params.clone(), &self.ca_key);
        (params.signed_by(&key, &issuer).unwrap(), key)
    }

    /// A client configuration trusting this CA, TLS 1.3 and 1.2.
    pub fn client(&self) -> Arc<ClientConfig> {
        client_config(&self.ca_der, Versions::Both, None)
    }

    /// A client certificate for mutual TLS.
    pub fn client_identity(&self, cn: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let (cert, key) = self.issue(cn, &["phone.test"]);
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert.der().clone(), key)
    }
}

/// Which TLS versions a test client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Both,
    Only12,
    Only13,
}

/// A client configuration trusting `ca` only.
pub fn client_config(
    ca: &CertificateDer<'static>,
    versions: Versions,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Only12 => &[&rustls::version::TLS12],
        Versions::Only13 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// A client-side byte stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        let _ = self
            .tcp()
            .set_read_timeout(Some(t.max(Duration::from_millis(1))));
    }

    /// The server's certificate, for a TLS stream.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.conn.peer_certificates()?.first().cloned(),
        }
    }

    /// The negotiated TLS version, for a TLS stream.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => s.conn.protocol_version(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Connects and completes the TLS handshake (so a refused handshake fails here, and the
/// server's certificate can be read at once).
pub fn connect(server: SocketAddr, config: Arc<ClientConfig>) -> io::Result<Stream> {
    let mut tcp = TcpStream::connect(server)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from("pbx.test").unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    // With TLS 1.3 a server that refuses the client's certificate says so only after the
    // client finished: the refusal shows on the first read.
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

/// Plain TCP, as a [`Stream`].
pub fn connect_plain(server: SocketAddr) -> io::Result<Stream> {
    let tcp = TcpStream::connect(server)?;
    tcp.set_nodelay(true)?;
    Ok(Stream::Plain(tcp))
}
