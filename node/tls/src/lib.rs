//! Mutual TLS on every mesh link (server → replicant, gateway → replicant,
//! replicant ↔ replicant, operator → replicant Admin).
//!
//! The material is a folder laid out like a `kubernetes.io/tls` Secret plus the CA:
//! `tls.crt` (this member's certificate chain), `tls.key` and `ca.crt` (the mesh CA; during a
//! CA rotation it holds the old and the new one). Every member presents its certificate and
//! accepts only a peer whose certificate chains to a CA in `ca.crt`; clients check the server
//! against the fixed mesh name [`MESH_SERVER_NAME`], not the address they dialled (pods are
//! reached by cluster IPs that no certificate could list).
//!
//! Rotation without downtime: the folder is re-read every few seconds ([`MeshTls::watch`]);
//! when its contents change and they make a valid pair, new handshakes use them. Connections
//! already open keep their session: TLS keys are per connection, so nothing is interrupted.
//! A half-written or mismatched set is ignored (logged) and the previous one kept.
//!
//! Its own crate because both ends of the Admin link use it: the node and the operator.

pub mod dev;

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};

/// The name every mesh certificate carries (SAN) and every client checks.
pub const MESH_SERVER_NAME: &str = "starmesh-mesh";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";
/// How often the folder is re-read. A mounted Secret changes within the kubelet's sync
/// period (about a minute), so a few seconds more is nothing.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A peer that opens TCP and never finishes the handshake is dropped after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The three files' contents, as read.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
}

impl std::fmt::Debug for Material {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("ca_pem_bytes", &self.ca_pem.len())
            .finish_non_exhaustive()
    }
}

impl Material {
    pub fn read(dir: &Path) -> io::Result<Material> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display())))
        };
        Ok(Material {
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
            ca_pem: read(CA_FILE)?,
        })
    }
}

/// Server and client configurations built from one [`Material`].
#[derive(Clone)]
pub struct Configs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    Ok(certs)
}

/// Builds both configurations; no I/O. Fails on anything unusable (no CA, a key that does
/// not match the certificate), so a bad set never replaces a good one.
pub fn build(m: &Material) -> Result<Configs, String> {
    let chain = certs(&m.cert_pem, CERT_FILE)?;
    let key = PrivateKeyDer::from_pem_slice(&m.key_pem)
        .map_err(|e| format!("{KEY_FILE}: no usable private key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&m.ca_pem, CA_FILE)? {
        roots.add(ca).map_err(|e| format!("{CA_FILE}: {e}"))?;
    }
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("{CERT_FILE}/{KEY_FILE}: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{CERT_FILE}/{KEY_FILE}: {e}"))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs { server: Arc::new(server), client: Arc::new(client) })
}

/// What a poll of the folder should do, given what is loaded and what was read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadDecision {
    Unchanged,
    Replace,
}

pub fn decide(loaded: &Material, read: &Material) -> ReloadDecision {
    if loaded == read { ReloadDecision::Unchanged } else { ReloadDecision::Replace }
}

/// The mesh TLS material of this process, reloaded when its folder changes.
pub struct MeshTls {
    dir: PathBuf,
    current: RwLock<(Material, Configs)>,
    reloads: AtomicU64,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Loads the folder; an error names the file at fault.
    pub fn load(dir: &Path) -> Result<Arc<MeshTls>, String> {
        let m = Material::read(dir).map_err(|e| e.to_string())?;
        let c = build(&m).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Arc::new(MeshTls {
            dir: dir.to_path_buf(),
            current: RwLock::new((m, c)),
            reloads: 0.into(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn configs(&self) -> Configs {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configs().server
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.configs().client
    }

    /// How many times new material replaced the loaded one.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Re-reads the folder; replaces the configurations if it changed and is valid.
    /// Ok(true): replaced.
    pub fn reload(&self) -> Result<bool, String> {
        let read = Material::read(&self.dir).map_err(|e| e.to_string())?;
        let loaded = self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone();
        if decide(&loaded, &read) == ReloadDecision::Unchanged {
            return Ok(false);
        }
        let c = build(&read)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (read, c);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Polls the folder every `interval` on a thread of its own (no runtime needed) for as
    /// long as this `MeshTls` lives.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let weak: Weak<MeshTls> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("mesh-tls-reload".into()).spawn(move || {
            // Log a failing set once per distinct error, not every poll.
            let mut last_err: Option<String> = None;
            loop {
                std::thread::sleep(interval);
                let Some(tls) = weak.upgrade() else { return };
                match tls.reload() {
                    Ok(true) => {
                        last_err = None;
                        tracing::info!(dir = %tls.dir.display(), "mesh TLS: new certificate loaded; new connections use it");
                    }
                    Ok(false) => last_err = None,
                    Err(e) if last_err.as_deref() != Some(e.as_str()) => {
                        tracing::warn!(dir = %tls.dir.display(), error = %e, "mesh TLS: folder changed but is not usable; keeping the loaded certificate");
                        last_err = Some(e);
                    }
                    Err(_) => {}
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "mesh TLS: cannot start the reload thread; certificates will not be reloaded");
        }
    }
}

static PROCESS: OnceLock<Option<Arc<MeshTls>>> = OnceLock::new();

/// Sets this process's mesh TLS from `--tls-dir` (None: plaintext) and starts reloading.
/// One per process: every role in a process is the same mesh member. A second call
/// (`starmesh local` starts roles in one process) must agree with the first.
pub fn init_process(dir: Option<&Path>) -> anyhow::Result<()> {
    let tls = match dir {
        Some(d) => {
            let t = MeshTls::load(d).map_err(|e| anyhow::anyhow!("--tls-dir: {e}"))?;
            Some(t)
        }
        None => None,
    };
    let first = tls.clone();
    let stored = PROCESS.get_or_init(move || {
        if let Some(t) = &first {
            t.watch(RELOAD_INTERVAL);
        }
        first
    });
    match (stored, &tls) {
        (Some(a), Some(b)) if a.dir == b.dir => Ok(()),
        (None, None) => Ok(()),
        _ => anyhow::bail!("mesh TLS already set differently in this process"),
    }
}

/// This process's mesh TLS, if any.
pub fn process() -> Option<Arc<MeshTls>> {
    PROCESS.get().cloned().flatten()
}

/// The TLS accept side: a stream of established, client-authenticated connections for
/// `Server::serve_with_incoming*`. Each handshake runs on its own task (a slow peer delays
/// nobody) with [`HANDSHAKE_TIMEOUT`]; a refused peer is logged and never reaches a service.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<MeshTls>,
) -> impl futures::Stream<Item = io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // The server gone (shut down): stop accepting and release the port.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "mesh TLS: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
            let out = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = out.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "mesh TLS: handshake refused (a mesh member must present a certificate of the mesh CA)");
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "mesh TLS: handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// tonic's connector for mesh TLS: TCP, then the handshake with the current client config.
#[derive(Clone)]
pub struct Connector {
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// Follows the reloaded material: each new connection takes the current config.
    Mesh(Arc<MeshTls>),
    Fixed(Arc<ClientConfig>),
}

impl Connector {
    pub fn new(tls: Arc<MeshTls>) -> Connector {
        Connector { source: Source::Mesh(tls) }
    }

    /// One fixed client configuration (tests: a client with the wrong certificate).
    pub fn fixed(config: Arc<ClientConfig>) -> Connector {
        Connector { source: Source::Fixed(config) }
    }
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = io::Result<T>> + Send>>;

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFut<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let config = match &self.source {
            Source::Mesh(t) => t.client_config(),
            Source::Fixed(c) => c.clone(),
        };
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| io::Error::other(format!("{uri}: no host")))?;
            // An IPv6 literal comes bracketed in a URI.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(MESH_SERVER_NAME).map_err(io::Error::other)?;
            let s =
                tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("mesh TLS handshake with {host}:{port}: {e}"))
                })?;
            Ok(hyper_util::rt::TokioIo::new(s))
        })
    }
}

/// A channel to a mesh address, over TLS when `tls` is set; connects now.
pub async fn connect(
    ep: tonic::transport::Endpoint,
    tls: Option<&Arc<MeshTls>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match tls {
        Some(t) => ep.connect_with_connector(Connector::new(t.clone())).await,
        None => ep.connect().await,
    }
}

/// A lazy channel (connects on first use, reconnects as needed), over TLS when `tls` is set.
pub fn connect_lazy(
    ep: tonic::transport::Endpoint,
    tls: Option<&Arc<MeshTls>>,
) -> tonic::transport::Channel {
    match tls {
        Some(t) => ep.connect_with_connector_lazy(Connector::new(t.clone())),
        None => ep.connect_lazy(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(m: &Material) -> String {
        match build(m) {
            Ok(_) => panic!("built from {m:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn decide_compares_contents() {
        let a = Material { cert_pem: b"c".to_vec(), key_pem: b"k".to_vec(), ca_pem: b"a".to_vec() };
        assert_eq!(decide(&a, &a.clone()), ReloadDecision::Unchanged);
        for changed in [
            Material { cert_pem: b"c2".to_vec(), ..a.clone() },
            Material { key_pem: b"k2".to_vec(), ..a.clone() },
            Material { ca_pem: b"a2".to_vec(), ..a.clone() },
        ] {
            assert_eq!(decide(&a, &changed), ReloadDecision::Replace);
        }
    }

    #[test]
    fn build_refuses_garbage_naming_the_file() {
        let m = Material {
            cert_pem: b"nope".to_vec(),
            key_pem: b"nope".to_vec(),
            ca_pem: b"nope".to_vec(),
        };
        assert!(bad(&m).contains(CERT_FILE), "{}", bad(&m));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let m = Material { cert_pem: vec![], key_pem: b"SECRET-KEY".to_vec(), ca_pem: vec![] };
        assert!(!format!("{m:?}").contains("SECRET"));
    }
}
