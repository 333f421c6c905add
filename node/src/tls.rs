//! TLS for every listener (REST, gRPC, RESP) and between nodes (rustls,
//! ring as the crypto provider).
//!
//! One node certificate and key (`--tls-cert`, `--tls-key`) serve all three
//! listeners, and the same pair is the node's client certificate when it
//! dials a peer. `--peer-ca` is the authority whose certificates make a
//! caller a peer: on a listener, a client that presents a certificate must
//! present one it signed (a client may also present none: applications and
//! the CLI talk to the same gRPC port as peers do); the peer API then
//! refuses any call whose connection presented none (`is_peer`). A node
//! dialling a peer checks the peer's certificate against the same
//! authority and the name it dials.
//!
//! What this module does not do: client authentication for applications
//! (access tokens, [`crate::auth`], a separate layer), certificate
//! revocation, OCSP.
//!
//! Reload: [`Tls::reload`] reads the files again and swaps the
//! configurations in; a connection made after it uses the new ones, open
//! connections keep theirs. SIGHUP calls it, and so does
//! [`Tls::reload_if_changed`] when a file's modification time or size
//! changed (`ringkv server` looks every [`FILE_CHECK_INTERVAL`]: a
//! Kubernetes Secret or cert-manager renewal is picked up without a
//! signal). A file that does not load is reported once per change, and
//! the configurations in use stay.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use crate::config::TlsFiles;

/// How long a client may take over its TLS handshake before its
/// connection is dropped (a half-open connection holds nothing longer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshakes finished, waiting for a listener's accept.
const ACCEPTED_QUEUE: usize = 128;

/// The protocol a listener speaks, for ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Rest,
    Grpc,
    Resp,
}

struct Configs {
    rest: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
    resp: Arc<ServerConfig>,
    /// For dialling peers: their authority, this node's certificate.
    peer_client: Arc<ClientConfig>,
}

/// A node's TLS state (see the module doc).
pub struct Tls {
    files: TlsFiles,
    configs: RwLock<Arc<Configs>>,
    /// The files' modification times and sizes when last read.
    stamps: std::sync::Mutex<Vec<Option<(std::time::SystemTime, u64)>>>,
}

/// How often `ringkv server` looks whether the TLS files changed.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Each file's modification time and size (`None`: unreadable).
fn stamps(files: &TlsFiles) -> Vec<Option<(std::time::SystemTime, u64)>> {
    [&files.cert, &files.key, &files.peer_ca]
        .iter()
        .map(|f| {
            // Follows symbolic links: a mounted Secret swaps a link.
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        path.display()
    );
    Ok(certs)
}

fn load(files: &TlsFiles) -> anyhow::Result<Configs> {
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.peer_ca)? {
        roots
            .add(ca)
            .map_err(|e| anyhow::anyhow!("{}: {e}", files.peer_ca.display()))?;
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.peer_ca.display()))?;
    let server = |alpn: &[&[u8]]| -> anyhow::Result<Arc<ServerConfig>> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} and {} do not make a certificate and its key: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(c))
    };
    let mut peer_client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(|e| anyhow::anyhow!("{}: {e}", files.key.display()))?;
    peer_client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        rest: server(&[b"h2", b"http/1.1"])?,
        grpc: server(&[b"h2"])?,
        resp: server(&[])?,
        peer_client: Arc::new(peer_client),
    })
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let seen = stamps(&files);
        let configs = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            configs: RwLock::new(Arc::new(configs)),
            stamps: std::sync::Mutex::new(seen),
        }))
    }

    /// Reads the files again; on an error the configurations in use stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.files);
        let configs = load(&self.files)?;
        *self.configs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(configs);
        Ok(())
    }

    /// Reads the files again if any changed since they were last read
    /// (`None`: none did). A change that does not load is reported once:
    /// the next attempt waits for the next change.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<()>> {
        let now = stamps(&self.files);
        if *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return None;
        }
        Some(self.reload())
    }

    fn configs(&self) -> Arc<Configs> {
        self.configs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn server(&self, listener: Listener) -> Arc<ServerConfig> {
        let c = self.configs();
        match listener {
            Listener::Rest => c.rest.clone(),
            Listener::Grpc => c.grpc.clone(),
            Listener::Resp => c.resp.clone(),
        }
    }

    /// Accepts on `tcp` and runs each handshake in a task of its own (a
    /// slow client holds up nobody); connections that finished it come out
    /// of the returned queue. Handshake failures are logged at debug.
    pub fn accept(
        self: &Arc<Self>,
        tcp: TcpListener,
        listener: Listener,
    ) -> mpsc::Receiver<TlsConn> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(?listener, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.server(listener));
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(TlsConn { stream, remote }).await;
                        }
                        Ok(Err(e)) if presented_a_bad_certificate(&e) => {
                            // Someone tried to be a peer with a certificate
                            // the peers' authority did not sign.
                            tracing::warn!(%remote, ?listener, "refused a TLS client certificate: {e}")
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, ?listener, "TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!(%remote, ?listener, "TLS handshake timed out"),
                    }
                });
            }
        });
        rx
    }

    /// The configuration a peer is dialled with now (reloads swap it): the
    /// peers' authority as roots, this node's certificate presented.
    pub fn peer_client(&self) -> Arc<ClientConfig> {
        self.configs().peer_client.clone()
    }
}

/// A TLS connection to `host:port` (an IPv6 host in brackets or not),
/// its certificate checked against `config`'s roots and `host`.
/// A tower connector (what tonic's `connect_with_connector` takes) that
/// opens a TLS connection to `host:port` with the configuration `config()`
/// gives at each connect, whatever URI tonic asks for (it is the
/// endpoint's own). Peers pass the node's current peer configuration,
/// client commands their fixed trust.
pub fn connector<F>(
    config: F,
    host: String,
    port: u16,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<ClientStream>,
    Error = io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static
where
    F: Fn() -> Arc<ClientConfig> + Clone + Send + 'static,
{
    tower::service_fn(move |_: tonic::transport::Uri| {
        let (config, host) = (config(), host.clone());
        async move {
            let stream = dial(config, &host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

pub async fn dial(config: Arc<ClientConfig>, host: &str, port: u16) -> io::Result<ClientStream> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?
        .to_owned();
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// What a client (the CLI) trusts: the authority in `ca` (PEM), for gRPC
/// (ALPN h2). It presents no certificate.
pub fn client_config(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether a handshake failed on the client's certificate (not on, say, a
/// plain-text client or a port scan).
fn presented_a_bad_certificate(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}

/// A client-side TLS stream.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A connection whose TLS handshake finished.
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
    pub remote: SocketAddr,
}

impl TlsConn {
    /// Whether the other side presented a certificate of the peers'
    /// authority (rustls accepts only those that verify).
    pub fn is_peer(&self) -> bool {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty())
    }
}

/// What a gRPC handler can learn of its connection
/// (`request.extensions().get::<ConnInfo>()`).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The caller presented a certificate of the peers' authority.
    pub peer: bool,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            remote: self.remote,
            peer: self.is_peer(),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// REST over TLS: the accepted connections as an axum listener.
pub struct RestListener {
    pub accepted: mpsc::Receiver<TlsConn>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for RestListener {
    type Io = TlsConn;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.accepted.recv().await {
            Some(conn) => {
                let remote = conn.remote;
                (conn, remote)
            }
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A development authority and node certificates (`ringkv certs`).
pub mod certs {
    use std::fs;
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    /// What [`issue`] wrote.
    pub struct Issued {
        pub ca_cert: PathBuf,
        /// Whether the authority was made now (else it was in `dir`).
        pub ca_created: bool,
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    /// In `dir`: the authority (`ca.pem`, `ca.key`; made if absent, else
    /// reused), and `NAME.pem`/`NAME.key` signed by it for `hosts` (DNS
    /// names or IPs), usable both as a server and as a client (a node is
    /// both to its peers). Keys are written readable by the owner only.
    pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> anyhow::Result<Issued> {
        anyhow::ensure!(!hosts.is_empty(), "give at least one host name or IP");
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "the certificate's file name {name:?} must be letters, digits, '-', '_' or '.'"
        );
        fs::create_dir_all(dir)?;
        let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let ca_created = !ca_cert.exists();
        let ca_key_pair = if ca_created {
            anyhow::ensure!(
                !ca_key.exists(),
                "{} exists without {}",
                ca_key.display(),
                ca_cert.display()
            );
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::CommonName, "ringkv development CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key)?;
            write(&ca_cert, &cert.pem(), false)?;
            write(&ca_key, &key.serialize_pem(), true)?;
            key
        } else {
            KeyPair::from_pem(&fs::read_to_string(&ca_key)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ca_key.display()))?
        };
        let issuer = Issuer::from_ca_cert_pem(&fs::read_to_string(&ca_cert)?, &ca_key_pair)
            .map_err(|e| anyhow::anyhow!("{}: {e}", ca_cert.display()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(h.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        write(&cert_path, &cert.pem(), false)?;
        write(&key_path, &key.serialize_pem(), true)?;
        Ok(Issued {
            ca_cert,
            ca_created,
            cert: cert_path,
            key: key_path,
        })
    }

    fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut f = options
            .open(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_load_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let issued = certs::issue(dir.path(), "node", &hosts).unwrap();
        assert!(issued.ca_created);
        let files = TlsFiles {
            cert: issued.cert.clone(),
            key: issued.key.clone(),
            peer_ca: issued.ca_cert.clone(),
        };
        let tls = Tls::load(files.clone()).unwrap();
        tls.reload().unwrap();
        // A second certificate from the same authority reuses it.
        let again = certs::issue(dir.path(), "node2", &hosts).unwrap();
        assert!(!again.ca_created);
        // A key that is not the certificate's: refused, with both names.
        let mixed = TlsFiles {
            key: again.key.clone(),
            ..files.clone()
        };
        assert!(Tls::load(mixed).is_err());
        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            ..files
        };
        let e = Tls::load(missing).err().unwrap().to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}
