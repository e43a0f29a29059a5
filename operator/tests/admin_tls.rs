//! The operator's Admin client over mesh mTLS against a real `starmesh replicant` process
//! on loopback (the node binary, built here if it is not yet): refused in plaintext,
//! served once the operator has the mesh certificate (`--tls-dir`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use starmesh_operator::{admin, tls};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The node binary of this workspace, built if missing (a failed build fails the test).
fn node_binary() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = target.join("debug/starmesh");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "starmesh-node", "--bin", "starmesh"])
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(ok.success(), "building the node binary failed");
    }
    bin
}

/// A CA and one mesh certificate in `dir` (tls.crt, tls.key, ca.crt).
fn mint(dir: &Path) {
    tls::dev::mint_dir(dir).expect("mint a throwaway mesh CA and certificate");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_operator_reaches_a_tls_replicant_only_with_the_mesh_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls_dir = dir.path().join("tls");
    mint(&tls_dir);
    let examples = root().join("manifests/examples");
    let child = Command::new(node_binary())
        .args(["replicant", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--system")
        .arg(examples.join("stanton.yaml"))
        .arg("--layout")
        .arg(examples.join("stanton-layout.yaml"))
        .arg("--tls-dir")
        .arg(&tls_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the replicant");
    let mut child = Killed(child);
    let mut line = String::new();
    let stdout = child.0.stdout.take().expect("piped");
    std::io::BufReader::new(stdout).read_line(&mut line).expect("read");
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no grpc= in {line:?}"))
        .parse()
        .expect("an address");

    // Without the mesh certificate: refused (plaintext to a TLS port).
    let plain = async {
        let mut c = admin::connect(addr).await?;
        admin::get_partition(&mut c).await
    };
    let plain = tokio::time::timeout(Duration::from_secs(15), plain).await;
    assert!(matches!(plain, Ok(Err(_))), "plaintext refused: {plain:?}");

    // With it (what --tls-dir does in the operator's main): served.
    tls::init_process(Some(&tls_dir)).expect("load the mesh certificate");
    let mut c = admin::connect(addr).await.expect("connect over mTLS");
    let state = admin::get_partition(&mut c).await;
    assert!(state.is_ok(), "served over mTLS: {state:?}");
    let left = admin::drain(&mut c, "nobody").await;
    assert_eq!(left, Ok(0), "an Admin call with effect goes through");
}
