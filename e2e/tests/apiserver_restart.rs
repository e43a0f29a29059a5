//! The operator keeps hearing new resources after kube-apiserver crashes and restarts
//! (issue 10: a new ServerLayout once went unseen for > 120 s after such a restart).
//!
//! Needs a cluster booted by e2e/cluster/up.sh (the control plane alone is enough) with
//! its env sourced (`KUBECONFIG`, `STARMESH_CLUSTER_WORKDIR`), and the operator binary
//! built. It kills kube-apiserver (SIGKILL, e2e/cluster/restart.sh) several times, so it
//! runs alone, never beside other tests against the same API server (test.sh runs it
//! after operator.rs).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use starmesh_api::ServerLayout;
use starmesh_e2e::{repo_root, require_kubeconfig};

/// A new layout must get its status within this long after the API server is back.
/// The cause of the deafness was kube-runtime's trigger backoff (one backoff for all of a
/// controller's watches, growing to 30 s per error; see `trigger_backoff` in the
/// operator's main.rs). The operator runs here WITHOUT its safety net (the watch check,
/// `--watch-check-seconds 0`), so this bounds the fix itself: sleeps capped at 2 s.
/// `STARMESH_E2E_WATCH_BACKOFF_MAX=30` restores kube-runtime's cap (the bug), for a
/// control run, which then fails.
const BOUND: Duration = Duration::from_secs(20);
const RESTARTS: usize = 3;

fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("/usr/bin/kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl output");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn operator_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("starmesh-operator");
    assert!(bin.is_file(), "{} is missing: cargo build -p starmesh-operator", bin.display());
    bin
}

/// The operator process, SIGKILLed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(ns: &str, kubeconfig: &str, backoff_max: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{ns}-operator.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(operator_binary())
            .args(["--namespace", ns, "--listen", &format!("127.0.0.1:{port}")])
            .args(["--identity", "op-restart", "--lease-name", "starmesh-operator"])
            .args(["--lease-duration-seconds", "6", "--lease-grace-seconds", "2"])
            .args(["--node-image", "starmesh:e2e", "--watch-check-seconds", "0"])
            .args(["--watch-backoff-max-seconds", backoff_max])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,starmesh_operator=debug,kube_runtime::watcher=debug")
            .stdout(Stdio::from(file.try_clone().expect("log fd")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting the operator");
        Operator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn layout_yaml(name: &str) -> String {
    let path = repo_root().join("manifests/examples/stanton-layout.yaml");
    let text = std::fs::read_to_string(&path).expect("read stanton-layout.yaml");
    assert!(text.contains("\n  name: stanton\n"), "stanton-layout.yaml changed shape");
    text.replacen("\n  name: stanton\n", &format!("\n  name: {name}\n"), 1)
}

/// Seconds until `name` has a status for its generation, or None after `limit`.
async fn time_to_status(api: &Api<ServerLayout>, name: &str, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(l) = api.get(name).await
            && l.status.as_ref().is_some_and(|s| s.observed_generation == l.metadata.generation)
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

#[tokio::test]
async fn new_layouts_are_reconciled_after_kube_apiserver_restarts() {
    let kubeconfig = require_kubeconfig(
        "Boot one: STARMESH_CLUSTER_NODE=0 e2e/cluster/up.sh /tmp/c && . /tmp/c/env",
    );
    let workdir = std::env::var("STARMESH_CLUSTER_WORKDIR")
        .expect("STARMESH_CLUSTER_WORKDIR (from WORKDIR/env) names the cluster to restart");
    let client = Client::try_default().await.expect("kube client");

    kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=starmesh-e2e",
            "-f",
            repo_root().join("crds").to_str().expect("utf-8"),
        ],
        None,
    );
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/starsystems.starmesh.dev",
            "crd/serverlayouts.starmesh.dev",
        ],
        None,
    );
    let ns_name = format!("e2e-restart-{}", std::process::id());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}})).expect("ns");
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces.create(&PostParams::default(), &ns).await.expect("create namespace");

    let backoff_max =
        std::env::var("STARMESH_E2E_WATCH_BACKOFF_MAX").unwrap_or_else(|_| "2".to_string());
    println!("operator: --watch-check-seconds 0 --watch-backoff-max-seconds {backoff_max}");
    let op = Operator::start(&ns_name, &kubeconfig, &backoff_max);
    let stanton = repo_root().join("manifests/examples/stanton.yaml");
    kubectl(&["apply", "-n", &ns_name, "-f", stanton.to_str().expect("utf-8")], None);
    kubectl(&["apply", "-n", &ns_name, "-f", "-"], Some(&layout_yaml("before")));
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns_name);
    let first = time_to_status(&layouts, "before", Duration::from_secs(90)).await;
    assert!(first.is_some(), "the first layout never got a status:\n{}", op.log());

    let mut times = Vec::new();
    for round in 1..=RESTARTS {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/cluster/restart.sh"))
            .args([workdir.as_str(), "kube-apiserver"])
            .env("STARMESH_RESTART_SIGNAL", "KILL")
            .output()
            .expect("run restart.sh");
        assert!(
            out.status.success(),
            "restart.sh kube-apiserver failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("round {round}: {}", String::from_utf8_lossy(&out.stdout).trim());
        // Let the operator's watches re-establish against the new API server (the
        // state in which the deaf watch was seen), then create a new layout.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let name = format!("after-{round}");
        kubectl(&["apply", "-n", &ns_name, "-f", "-"], Some(&layout_yaml(&name)));
        let took = time_to_status(&layouts, &name, BOUND).await;
        println!("round {round}: new layout {name} reconciled after {took:?}");
        let Some(took) = took else {
            panic!(
                "round {round}: ServerLayout {name} had no status {BOUND:?} after a kube-apiserver \
                 restart: the operator's watch is deaf. Operator log:\n{}",
                op.log()
            );
        };
        times.push(took);
    }
    println!(
        "time from apply to status after each of {RESTARTS} kube-apiserver restarts: {times:?}"
    );

    drop(op);
    for l in layouts.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
        let name = l.metadata.name.unwrap_or_default();
        let _ = kubectl(
            &[
                "patch",
                "-n",
                &ns_name,
                "serverlayout",
                &name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
            None,
        );
    }
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
}
