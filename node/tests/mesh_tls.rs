//! Mesh mTLS with real processes and real certificates on loopback: a replicant, game
//! servers and a gateway started with `--tls-dir`, bots playing through the gateway.
//! - The mesh plays over TLS: no ship lost, no stream broken.
//! - Rotation while the bots play, the way a mounted Secret changes (the folder is a symlink
//!   swapped atomically): first the CA bundle gains the new CA, then every member's
//!   certificate is replaced by one of the new CA, then the old CA is dropped. No stream
//!   breaks, and new connections are served the new certificate.
//! - A client with no certificate, one with a certificate of another CA and a plaintext
//!   one are refused (the replicant logs why) and change nothing.

mod mesh_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use starmesh_node::tls::{self, Connector, MESH_SERVER_NAME, Material};
use starmesh_node::tls_dev::{Ca, Leaf, write_dir};
use starmesh_node::wire::pb;
use tonic::transport::Endpoint;

fn s(v: &str) -> String {
    v.to_string()
}

/// Points `link` at `target` atomically (a new symlink renamed over the old one), as the
/// kubelet updates a mounted Secret.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename symlink");
}

/// A versioned folder `name` under `root` with `leaf` and the CA bundle.
fn version(root: &Path, name: &str, leaf: &Leaf, cas: &[&Ca]) -> PathBuf {
    let dir = root.join(name);
    let bundle: String = cas.iter().map(|c| c.cert_pem.as_str()).collect();
    write_dir(&dir, leaf, &bundle).expect("write tls folder");
    dir
}

fn material(leaf: &Leaf, cas: &[&Ca]) -> Material {
    Material {
        cert_pem: leaf.cert_pem.clone().into_bytes(),
        key_pem: leaf.key_pem.clone().into_bytes(),
        ca_pem: cas.iter().map(|c| c.cert_pem.as_str()).collect::<String>().into_bytes(),
    }
}

fn client_config(leaf: &Leaf, cas: &[&Ca]) -> Arc<rustls::ClientConfig> {
    tls::build(&material(leaf, cas)).expect("client config").client
}

/// A client that trusts the mesh CA but presents no certificate.
fn anonymous_client(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The replicant's assignments over Admin through `cfg` (Err: refused, with why).
async fn assignments_with(
    grpc: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<pb::AssignmentsResponse, String> {
    let ep = Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let ch =
        ep.connect_with_connector(Connector::fixed(cfg)).await.map_err(|e| format!("{e:?}"))?;
    let mut c = pb::admin_client::AdminClient::new(ch);
    c.assignments(pb::AssignmentsRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("{e:?}"))
}

/// A drain attempt through `cfg`; a refused client must not get it done.
async fn drain_with(
    grpc: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    server: &str,
) -> Result<(), String> {
    let ep = Endpoint::from_shared(format!("http://{grpc}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    let ch =
        ep.connect_with_connector(Connector::fixed(cfg)).await.map_err(|e| format!("{e:?}"))?;
    let mut c = pb::admin_client::AdminClient::new(ch);
    c.drain(pb::DrainRequest { server: server.to_string() })
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// The certificate the replicant presents to a new connection.
async fn presented(grpc: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(grpc).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(MESH_SERVER_NAME).map_err(|e| e.to_string())?;
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let certs = s.get_ref().1.peer_certificates().ok_or("no certificate")?;
    Ok(certs.first().ok_or("empty chain")?.to_vec())
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("cert pem").to_vec()
}

/// Replicant, `servers` and gateway, all with `--tls-dir tls` (the symlink).
fn start(dir: tempfile::TempDir, tls_dir: &Path, servers: &[&str]) -> Mesh {
    let (system, layout) = (manifest("stanton.yaml"), manifest("stanton-layout.yaml"));
    let tls = [s("--tls-dir"), tls_dir.display().to_string()];
    Mesh::start_in(dir, &system, &layout, servers, &tls)
}

/// A counter's value from a `/metrics` text (0 when absent).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "/metrics of {addr}");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(needle).count()
}

const BOTS: usize = 60;
/// Longer than the members' reload interval, with margin for a loaded machine.
const SETTLE: Duration = Duration::from_secs(4);
const LOADED: &str = "mesh TLS: new certificate loaded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_plays_over_mtls_and_rotates_certificates_without_breaking_a_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let (ca1, ca2) = (Ca::new("mesh CA 1").expect("ca1"), Ca::new("mesh CA 2").expect("ca2"));
    let (leaf1, leaf2) =
        (ca1.issue("member-1").expect("leaf1"), ca2.issue("member-2").expect("leaf2"));
    let link = root.join("tls");
    point(&link, &version(&root, "v1", &leaf1, &[&ca1]));
    let mut mesh = start(dir, &link, &["hurston", "cities", "deep-space"]);

    // Over TLS, a member certificate is served and accepted.
    assert_eq!(
        presented(mesh.grpc, client_config(&leaf1, &[&ca1])).await,
        Ok(der(&leaf1.cert_pem))
    );
    let before = assignments_with(mesh.grpc, client_config(&leaf1, &[&ca1])).await;
    let before = before.unwrap_or_else(|e| panic!("a member is served: {e}\n{}", mesh.logs()));
    assert!(before.assignments.iter().any(|a| a.server == "hurston"), "{before:?}");

    let mut bots = mesh.bots(BOTS, "24s", "tls");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 1. The bundle gains the new CA; 2. members switch to certificates of the new CA;
    // 3. the old CA goes. Each step waits until every member has reloaded.
    point(&link, &version(&root, "v2", &leaf1, &[&ca1, &ca2]));
    tokio::time::sleep(SETTLE).await;
    point(&link, &version(&root, "v3", &leaf2, &[&ca1, &ca2]));
    tokio::time::sleep(SETTLE).await;
    point(&link, &version(&root, "v4", &leaf2, &[&ca2]));
    tokio::time::sleep(SETTLE).await;

    // New connections get the new certificate; the old CA's member is now refused.
    assert_eq!(
        presented(mesh.grpc, client_config(&leaf2, &[&ca2])).await,
        Ok(der(&leaf2.cert_pem))
    );
    let now = assignments_with(mesh.grpc, client_config(&leaf2, &[&ca2])).await;
    assert!(now.is_ok(), "a member of the new CA is served: {now:?}");
    let old = assignments_with(mesh.grpc, client_config(&leaf1, &[&ca1, &ca2])).await;
    assert!(old.is_err(), "the old CA's certificate is refused after it was dropped: {old:?}");

    let (code, r) = tokio::task::spawn_blocking(move || {
        let r = bots_report(&mut bots, Duration::from_secs(60));
        drop(bots);
        r
    })
    .await
    .expect("join");
    eprintln!("bots report: {r:#}");
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connected"), BOTS as u64, "every bot connected\n{}", mesh.logs());
    assert_eq!(n("reconnects"), 0, "no bot was disconnected\n{}", mesh.logs());
    assert_eq!(n("entities_lost"), 0, "no ship lost\n{}", mesh.logs());
    assert_eq!(n("entities_duplicated"), 0, "no entity duplicated\n{}", mesh.logs());
    assert!(n("handoffs_seen") > 0, "ships crossed territories: {r}");
    assert_eq!(code, Some(0), "bots exit 0 when every invariant holds");

    // No mesh stream broke: the servers' and the gateway's links to the replicant
    // stayed up through three reloads in every process.
    assert_eq!(
        metric(mesh.gateway_metrics, "starmesh_gateway_replicant_reconnects_total"),
        0.0,
        "{}",
        mesh.logs()
    );
    for sv in &mesh.servers {
        assert_eq!(metric(sv.metrics, "starmesh_server_reconnects_total"), 0.0, "{}", sv.name);
        assert_eq!(count(&sv.proc.log, LOADED), 3, "{} reloaded each step", sv.name);
    }
    assert_eq!(count(&mesh.replicant.log, LOADED), 3, "{}", mesh.logs());
    assert_eq!(count(&mesh.gateway.log, LOADED), 3, "{}", mesh.logs());
    mesh.kill_server("hurston");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_mesh_certificate_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let (ca, other) = (Ca::new("mesh CA").expect("ca"), Ca::new("another CA").expect("other"));
    let member = ca.issue("member").expect("leaf");
    let outsider = other.issue("outsider").expect("outsider");
    let link = root.join("tls");
    point(&link, &version(&root, "v1", &member, &[&ca]));
    let mesh = start(dir, &link, &["hurston"]);
    let good = client_config(&member, &[&ca]);
    let before = assignments_with(mesh.grpc, good.clone()).await;
    let before = before.unwrap_or_else(|e| panic!("a member is served: {e}\n{}", mesh.logs()));
    assert!(before.live_servers.iter().any(|s| s == "hurston"), "{before:?}");

    // Each tries to drain the live server: that would take its territories away.
    let refusals_before = count(&mesh.replicant.log, "handshake refused");
    // The TLS alert names the reason. In TLS 1.3 the client's handshake completes before the
    // server has checked its certificate, so its first write can race the alert and fail as
    // a broken pipe, a reset or a closed connection instead (a transport error); the
    // replicant's log names the reason either way.
    let attempts = [
        (
            "no certificate",
            anonymous_client(&ca),
            "CertificateRequired",
            "peer sent no certificates",
        ),
        (
            "a certificate of another CA",
            client_config(&outsider, &[&ca]),
            "UnknownCA",
            "invalid peer certificate: UnknownIssuer",
        ),
    ];
    for (who, cfg, alert, logged) in attempts {
        let r = drain_with(mesh.grpc, cfg, "hurston").await;
        eprintln!("{who}: {r:?}");
        let e = r.expect_err(who);
        // Either the alert itself or the transport error of a connection the server closed.
        let closed = e.contains("tonic::transport::Error(Transport");
        assert!(e.contains(alert) || closed, "{who}: refused by TLS ({alert}): {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = std::fs::read_to_string(&mesh.replicant.log).unwrap_or_default();
        assert!(log.contains(logged), "{who}: the replicant logs `{logged}`:\n{}", mesh.logs());
    }
    // Plaintext gRPC against a TLS port: refused too.
    let plain = async {
        let mut c = pb::admin_client::AdminClient::connect(format!("http://{}", mesh.grpc))
            .await
            .map_err(|e| format!("{e:?}"))?;
        c.drain(pb::DrainRequest { server: s("hurston") }).await.map_err(|e| format!("{e:?}"))
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain).await;
    assert!(matches!(plain, Ok(Err(_))), "plaintext refused: {plain:?}");
    // A client trusting another CA does not accept the replicant either.
    let wrong_trust = presented(mesh.grpc, client_config(&outsider, &[&other])).await;
    assert!(
        wrong_trust.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "the replicant's certificate is not of the other CA: {wrong_trust:?}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = count(&mesh.replicant.log, "handshake refused") - refusals_before;
    assert!(refused >= 3, "the replicant logs each refusal ({refused}):\n{}", mesh.logs());
    let after = assignments_with(mesh.grpc, good).await.expect("a member is still served");
    assert_eq!(before.assignments, after.assignments, "nothing changed");
    assert_eq!(before.live_servers, after.live_servers, "nothing changed");
    let drained = metric(mesh.servers[0].metrics, "starmesh_server_reconnects_total");
    assert_eq!(drained, 0.0, "the server's stream was not disturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starmesh_local_tls_runs_the_whole_mesh_on_mtls() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("local.log");
    let child = std::process::Command::new(BIN)
        .args(["local", "--tls", "--duration", "8s", "--bots", "10", "--listen", "127.0.0.1:0"])
        .arg("--data")
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn starmesh local");
    // Killed on drop, also when an assertion fails.
    let mut child = Proc { name: "local".into(), child, stdout: None, log };
    let mut out = std::io::BufReader::new(child.child.stdout.take().expect("piped"));
    let mut printed = String::new();
    let grpc: SocketAddr = loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read stdout");
        assert!(n > 0, "starmesh local ended before its replicant was ready:\n{printed}");
        printed += &line;
        if let Some(rest) = line.split("replicant: ready on ").nth(1) {
            break rest.split_whitespace().next().expect("address").parse().expect("an address");
        }
    };
    // The replicant speaks mTLS with the minted material only.
    let m = Material::read(&data.join("tls")).expect("minted tls folder");
    let member = tls::build(&m).expect("minted material is valid").client;
    let served = assignments_with(grpc, member).await;
    assert!(served.is_ok(), "a member is served: {served:?}");
    let plain = async {
        let mut c = pb::admin_client::AdminClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| format!("{e:?}"))?;
        c.assignments(pb::AssignmentsRequest {}).await.map_err(|e| format!("{e:?}"))
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain).await;
    assert!(matches!(plain, Ok(Err(_))), "plaintext refused: {plain:?}");

    let rest = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        let status = child.child.wait().expect("wait");
        (status.code(), rest)
    })
    .await
    .expect("join");
    let (code, rest) = rest;
    assert_eq!(code, Some(0), "{printed}{rest}");
    let lost = rest.lines().find(|l| l.contains("| lost")).unwrap_or_default();
    assert!(lost.contains("| 0 ("), "nothing lost over mTLS: {lost:?}\n{rest}");
    let handoffs = rest.lines().find(|l| l.contains("| handoffs")).unwrap_or_default();
    assert!(!handoffs.contains("| 0 "), "ships crossed territories: {handoffs:?}");
}
