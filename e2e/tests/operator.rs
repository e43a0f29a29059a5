//! The operator against a real Kubernetes 1.20 API server, etcd and controller-manager.
//!
//! The caller boots the cluster and exports KUBECONFIG:
//!
//! ```sh
//! STARMESH_CLUSTER_NODE=0 e2e/cluster/up.sh /tmp/c && . /tmp/c/env
//! cargo build -p starmesh-operator && cargo test -p starmesh-e2e
//! e2e/cluster/down.sh /tmp/c
//! ```
//!
//! Without a cluster every test FAILS (never skips). Each test works in a namespace of
//! its own and runs its own operator process(es) scoped to it, killed by PID on drop.
//! Works with and without a kubelet: the node image is never pulled in these tests, so
//! pods never become Ready and the tests assert exactly that.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Once, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Service},
    events::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use serde::Deserialize;
use starmesh_api::{ServerLayout, StarSystem};
use starmesh_operator::builders::{self, MeshMap};

// ---- harness -------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

fn kubeconfig() -> String {
    match std::env::var("KUBECONFIG") {
        Ok(k) if Path::new(&k).is_file() => k,
        other => panic!(
            "\n\nE2E NEEDS A CLUSTER: KUBECONFIG is {other:?}, not a readable file.\n\
             Boot one:  STARMESH_CLUSTER_NODE=0 e2e/cluster/up.sh /tmp/c && . /tmp/c/env\n\
             These tests fail instead of skipping on purpose.\n"
        ),
    }
}

fn operator_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let bin = target.join("debug").join("starmesh-operator");
    assert!(
        bin.is_file(),
        "operator binary {} is missing: run `cargo build -p starmesh-operator` first",
        bin.display()
    );
    bin
}

fn kube_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

/// Runs the real kubectl; returns (success, stdout, stderr).
fn kubectl_raw(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("/usr/bin/kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        // kubectl 1.32 warns about the 1.20 server's version skew; keep its cache out of ~.
        .env("KUBECACHEDIR", kube_cache())
        .output()
        .expect("running /usr/bin/kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl(args: &[&str]) -> String {
    let (ok, out, err) = kubectl_raw(args);
    assert!(ok, "kubectl {args:?} failed:\n{err}\n{out}");
    out
}

/// Server-side applies the CRDs once per test process and waits until they serve.
fn install_crds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let crds = repo().join("crds");
        let crds = crds.to_str().expect("utf-8 path");
        kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=starmesh-e2e",
            "-f",
            crds,
        ]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/starsystems.starmesh.dev",
            "crd/serverlayouts.starmesh.dev",
        ]);
    });
}

async fn client() -> Client {
    kubeconfig();
    Client::try_default().await.expect("kube client from KUBECONFIG")
}

/// A namespace per test, deleted at the end (layouts' finalizers are stripped first so
/// deletion never waits for an operator that is already gone).
struct TestNs {
    name: String,
}

impl TestNs {
    async fn new(client: &Client, prefix: &str) -> TestNs {
        install_crds();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("{prefix}-{:x}", (nanos as u64) & 0xff_ffff);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("ns");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        TestNs { name }
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let (_, out, _) = kubectl_raw(&["get", "serverlayouts", "-n", &self.name, "-o", "name"]);
        for l in out.lines().filter(|l| !l.is_empty()) {
            kubectl_raw(&[
                "patch",
                "-n",
                &self.name,
                l,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        kubectl_raw(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// One operator process, SIGKILLed on drop.
struct Operator {
    child: Child,
    identity: String,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Operator {
    fn start(ns: &str, identity: &str) -> Operator {
        let port = free_port();
        let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = log_dir.join(format!("{ns}-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(operator_binary())
            .args(["--namespace", ns, "--listen", &format!("127.0.0.1:{port}")])
            .args(["--identity", identity, "--lease-name", "starmesh-operator"])
            .args(["--lease-duration-seconds", "6", "--lease-grace-seconds", "2"])
            .args(["--node-image", "starmesh:e2e"])
            .env("KUBECONFIG", kubeconfig())
            .env("RUST_LOG", "info,starmesh_operator=debug")
            .stdout(Stdio::from(file.try_clone().expect("log fd")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting the operator");
        Operator { child, identity: identity.to_string(), port, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect /metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        buf
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 500 ms until it yields `Some`, or panics after `timeout` with `what`
/// and the operators' last log lines.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, ops: &[&Operator], mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > timeout {
            let logs: Vec<String> =
                ops.iter().map(|o| format!("--- {} ---\n{}", o.identity, o.log_tail())).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; last: {last}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

const T: Duration = Duration::from_secs(60);

fn example(file: &str) -> String {
    repo().join("manifests/examples").join(file).to_str().expect("utf-8").to_string()
}

fn apply(ns: &str, file: &str) {
    kubectl(&["apply", "--server-side", "--field-manager=starmesh-e2e", "-n", ns, "-f", file]);
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// The layout once its status describes its current generation.
async fn observed_layout(api: &Api<ServerLayout>, name: &str, ops: &[&Operator]) -> ServerLayout {
    wait_for(&format!("ServerLayout {name} observed"), T, ops, || async {
        let l = api.get(name).await.map_err(|e| e.to_string())?;
        let s = l.status.clone().ok_or("no status")?;
        if s.observed_generation == l.metadata.generation
            && condition(&s.conditions, "Valid").is_some()
        {
            Ok(l)
        } else {
            Err(format!("status {s:?} vs generation {:?}", l.metadata.generation))
        }
    })
    .await
}

async fn has_nodes(client: &Client) -> bool {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(false)
}

async fn events_for(client: &Client, ns: &str, kind: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name) && r.kind.as_deref() == Some(kind))
        })
        .collect()
}

async fn wait_event(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
    ops: &[&Operator],
) -> Event {
    wait_for(&format!("Event {reason} on {kind} {name}"), T, ops, || async {
        let evs = events_for(client, ns, kind, name).await;
        evs.iter().find(|e| e.reason.as_deref() == Some(reason)).cloned().ok_or_else(|| {
            format!("events: {:?}", evs.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
        })
    })
    .await
}

fn mesh_map(cm: &ConfigMap) -> MeshMap {
    let json =
        cm.data.as_ref().and_then(|d| d.get(builders::MESH_MAP_KEY)).expect("mesh-map.json key");
    serde_json::from_str(json).expect("mesh map parses")
}

async fn cluster_ip(api: &Api<Service>, name: &str) -> String {
    api.get(name).await.expect("service").spec.and_then(|s| s.cluster_ip).expect("cluster IP")
}

// ---- tests ---------------------------------------------------------------------------

/// The generated CRDs apply server-side on 1.20 and serve what the other tests rely on.
#[tokio::test]
async fn crds_apply_on_kubernetes_1_20() {
    install_crds();
    let out = kubectl(&[
        "get",
        "crd",
        "serverlayouts.starmesh.dev",
        "starsystems.starmesh.dev",
        "-o",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("crd json");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    for crd in items {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1", "{name}");
        assert_eq!(v["served"], true, "{name}");
        assert!(v["subresources"]["status"].is_object(), "{name}: status subresource");
        assert!(
            v["additionalPrinterColumns"].as_array().is_some_and(|c| c.len() >= 4),
            "{name}: columns"
        );
        let established = crd["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Established" && c["status"] == "True"));
        assert!(established, "{name} not Established");
        if name == "serverlayouts.starmesh.dev" {
            let scale = &v["subresources"]["scale"];
            assert_eq!(scale["specReplicasPath"], ".spec.shards");
            assert_eq!(scale["labelSelectorPath"], ".status.selector");
        }
    }
}

/// The examples reconcile into owned, labelled children, a mesh map with the Services'
/// cluster IPs, status, printer columns, Events and metrics.
#[tokio::test]
async fn examples_reconcile_into_children_status_and_columns() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-examples").await;
    let op = Operator::start(&ns.name, "op-a");
    let ops = [&op];
    for f in ["stanton.yaml", "nyx.yaml", "pyro.yaml", "stanton-layout.yaml", "pyro-layout.yaml"] {
        apply(&ns.name, &example(f));
    }

    let systems: Api<StarSystem> = Api::namespaced(client.clone(), &ns.name);
    let stanton_sys = wait_for("StarSystem stanton valid", T, &ops, || async {
        let s = systems.get("stanton").await.map_err(|e| e.to_string())?;
        let st = s.status.clone().ok_or("no status")?;
        match condition(&st.conditions, "Valid") {
            Some(c) if c.status == "True" && st.observed_generation == s.metadata.generation => {
                Ok(s)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let st = stanton_sys.status.clone().expect("status");
    assert_eq!(st.locations as usize, stanton_sys.spec.locations.len());
    assert_eq!(st.gates as usize, stanton_sys.spec.jump_gates.len());
    assert!(st.gates >= 2, "Stanton has gates to Pyro and Nyx");

    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    let stanton = observed_layout(&layouts, "stanton", &ops).await;
    let s = stanton.status.clone().expect("status");
    assert_eq!(condition(&s.conditions, "Valid").map(|c| c.status.as_str()), Some("True"));
    assert_eq!((s.shards, s.servers, s.players), (1, 6, 0));
    assert_eq!(
        s.territories.iter().find(|t| t.name == "lorville").map(|t| t.server.as_str()),
        Some("cities")
    );
    assert_eq!(
        s.selector.as_deref(),
        Some("starmesh.dev/layout=stanton,app.kubernetes.io/component=replicant")
    );
    assert!(stanton.finalizers().contains(&builders::FINALIZER.to_string()));
    if !has_nodes(&client).await {
        // No kubelet: pods never run, so the layout is progressing, not ready.
        let ready = condition(&s.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ShardsNotReady"),
            "{ready:?}"
        );
        assert!(ready.message.contains("shard 0"), "{}", ready.message);
        let prog = condition(&s.conditions, "Progressing").expect("Progressing");
        assert_eq!(prog.status, "True");
        assert_eq!(condition(&s.conditions, "Degraded").map(|c| c.status.as_str()), Some("False"));
    }
    for c in &s.conditions {
        assert_eq!(c.observed_generation, stanton.metadata.generation);
    }

    // Children: owned by the layout (controller), labelled.
    let uid = stanton.uid().expect("uid");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let check_meta = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                      component: Option<&str>| {
        let o = &m.owner_references.as_ref().expect("owner refs")[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("ServerLayout", "stanton", uid.as_str())
        );
        assert_eq!(o.controller, Some(true));
        let l = m.labels.as_ref().expect("labels");
        assert_eq!(l["app.kubernetes.io/name"], "starmesh");
        assert_eq!(l["app.kubernetes.io/instance"], "stanton");
        assert_eq!(l["starmesh.dev/layout"], "stanton");
        if let Some(c) = component {
            assert_eq!(l["app.kubernetes.io/component"], c);
            assert_eq!(l["starmesh.dev/shard"], "0");
        }
    };
    let rep = sts.get("stanton-shard-0-replicant").await.expect("replicant sts");
    check_meta(&rep.metadata, Some("replicant"));
    assert_eq!(rep.spec.replicas, Some(1));
    assert!(rep.spec.volume_claim_templates.is_some(), "embedded store volume");
    let srv = sts.get("stanton-shard-0-servers").await.expect("servers sts");
    check_meta(&srv.metadata, Some("server"));
    assert_eq!(srv.spec.replicas, Some(6));
    assert_eq!(srv.spec.pod_management_policy.as_deref(), Some("Parallel"));
    let pod = srv.spec.template.spec.clone().expect("pod spec");
    assert_eq!(pod.containers[0].image.as_deref(), Some("starmesh:e2e"));
    assert_eq!(pod.containers[0].args.as_deref(), Some(&["server".to_string()][..]));
    let gw = deps.get("stanton-shard-0-gateway").await.expect("gateway deployment");
    check_meta(&gw.metadata, Some("gateway"));
    for name in ["stanton-shard-0-replicant", "stanton-shard-0-servers", "stanton-shard-0-gateway"]
    {
        check_meta(&svcs.get(name).await.expect("service").metadata, None);
    }
    let cm = cms.get("stanton-mesh-map").await.expect("mesh map");
    check_meta(&cm.metadata, None);
    let map = mesh_map(&cm);
    assert_eq!(map.shards.len(), 1);
    assert_eq!(
        map.shards[0].replicant.cluster_ip,
        cluster_ip(&svcs, "stanton-shard-0-replicant").await
    );
    assert_eq!(
        map.shards[0].gateway.cluster_ip,
        cluster_ip(&svcs, "stanton-shard-0-gateway").await
    );
    assert_eq!(map.shards[0].replicant.ports["grpc"], builders::REPLICANT_GRPC_PORT);
    assert_eq!(
        map.servers,
        ["hurston", "crusader", "arccorp", "microtech", "cities", "deep-space"]
    );
    assert_eq!(map.territories["deep-space"], "deep-space");
    let data = cm.data.clone().expect("data");
    assert!(data[builders::STAR_SYSTEM_KEY].contains("kind: StarSystem"));
    assert!(data[builders::SERVER_LAYOUT_KEY].contains("systemRef: stanton"));

    // Dynamic layout: servers = dynamic.minServers.
    let pyro = observed_layout(&layouts, "pyro", &ops).await;
    let min = pyro.spec.dynamic.clone().unwrap_or_default().min_servers;
    let pyro_srv = sts.get("pyro-shard-0-servers").await.expect("pyro servers");
    assert_eq!(pyro_srv.spec.replicas, Some(min as i32));
    assert!(mesh_map(&cms.get("pyro-mesh-map").await.expect("pyro map")).servers.is_empty());

    // Printer columns as an SRE sees them.
    let wide = kubectl(&["get", "serverlayouts", "-n", &ns.name, "-o", "wide"]);
    let header: Vec<&str> = wide.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SYSTEM", "MODE", "SHARDS", "SERVERS", "PLAYERS", "READY", "REASON", "AGE"],
        "{wide}"
    );
    let row: Vec<&str> = wide
        .lines()
        .find(|l| l.starts_with("stanton "))
        .expect("stanton row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], ["stanton", "stanton", "Static", "1", "6"], "{wide}");
    assert_eq!(row[5], "0", "players column");
    let ready = condition(&s.conditions, "Ready").expect("Ready");
    assert_eq!((row[6], row[7]), (ready.status.as_str(), ready.reason.as_str()), "{wide}");
    let pyro_row: Vec<&str> = wide
        .lines()
        .find(|l| l.starts_with("pyro "))
        .expect("pyro row")
        .split_whitespace()
        .collect();
    assert_eq!(&pyro_row[..4], ["pyro", "pyro", "Dynamic", "1"], "{wide}");

    let systems_out = kubectl(&["get", "starsystems", "-n", &ns.name]);
    let header: Vec<&str> =
        systems_out.lines().next().expect("header").split_whitespace().collect();
    assert_eq!(header, ["NAME", "LOCATIONS", "GATES", "VALID", "AGE"], "{systems_out}");
    let row: Vec<&str> = systems_out
        .lines()
        .find(|l| l.starts_with("stanton "))
        .expect("stanton row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        ["stanton", &st.locations.to_string(), &st.gates.to_string(), "True"],
        "{systems_out}"
    );

    // Events, through the events API and as `kubectl describe` shows them.
    wait_event(&client, &ns.name, "ServerLayout", "stanton", "ShardCreated", &ops).await;
    let valid = wait_event(&client, &ns.name, "ServerLayout", "stanton", "Valid", &ops).await;
    assert_eq!(valid.type_.as_deref(), Some("Normal"));
    let describe = kubectl(&["describe", "serverlayout", "stanton", "-n", &ns.name]);
    assert!(describe.contains("ShardCreated"), "{describe}");

    // The operator's own metrics.
    let metrics = op.metrics().await;
    assert!(
        metrics.contains("starmesh_operator_reconciles_total{resource=\"ServerLayout\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("starmesh_operator_reconcile_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("starmesh_operator_leader 1"), "{metrics}");
}

/// Edit, `kubectl scale` up and down, then delete: each converges; deletion drains and
/// garbage collection removes every child.
#[tokio::test]
async fn update_scale_and_delete_converge() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-lifecycle").await;
    let op = Operator::start(&ns.name, "op-a");
    let ops = [&op];
    apply(&ns.name, &example("stanton.yaml"));
    apply(&ns.name, &example("stanton-layout.yaml"));
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let first = observed_layout(&layouts, "stanton", &ops).await;

    // Update: tick rate 30 -> 60 reaches the servers' pods and the mesh map.
    kubectl(&[
        "patch",
        "serverlayout",
        "stanton",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"tickRate":60}}"#,
    ]);
    let l = observed_layout(&layouts, "stanton", &ops).await;
    assert!(l.metadata.generation > first.metadata.generation);
    let srv = sts.get("stanton-shard-0-servers").await.expect("servers");
    let env = srv.spec.template.spec.and_then(|p| p.containers[0].env.clone()).expect("env");
    let tick = env.iter().find(|e| e.name == "STARMESH_TICK_RATE").and_then(|e| e.value.clone());
    assert_eq!(tick.as_deref(), Some("60"));
    assert_eq!(mesh_map(&cms.get("stanton-mesh-map").await.expect("cm")).tick_rate, 60);

    // Scale up through the scale subresource.
    kubectl(&["scale", "serverlayout/stanton", "-n", &ns.name, "--replicas=2"]);
    let l = observed_layout(&layouts, "stanton", &ops).await;
    assert_eq!(l.spec.shards, 2);
    assert_eq!(l.status.as_ref().map(|s| (s.shards, s.servers)), Some((2, 12)));
    sts.get("stanton-shard-1-replicant").await.expect("shard 1 replicant");
    sts.get("stanton-shard-1-servers").await.expect("shard 1 servers");
    deps.get("stanton-shard-1-gateway").await.expect("shard 1 gateway");
    let map = mesh_map(&cms.get("stanton-mesh-map").await.expect("cm"));
    assert_eq!(map.shards.len(), 2);
    assert_eq!(
        map.shards[1].replicant.cluster_ip,
        cluster_ip(&svcs, "stanton-shard-1-replicant").await
    );
    let scale = kubectl(&[
        "get",
        "serverlayout",
        "stanton",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.shards}",
    ]);
    assert_eq!(scale.trim(), "2");
    let ev = wait_event(&client, &ns.name, "ServerLayout", "stanton", "ShardCreated", &ops).await;
    assert_eq!(ev.type_.as_deref(), Some("Normal"));

    // Scale down: shard 1's objects go.
    kubectl(&["scale", "serverlayout/stanton", "-n", &ns.name, "--replicas=1"]);
    observed_layout(&layouts, "stanton", &ops).await;
    wait_for("shard 1 deleted", T, &ops, || async {
        let lp = ListParams::default().labels("starmesh.dev/layout=stanton,starmesh.dev/shard=1");
        let n = sts.list(&lp).await.map_err(|e| e.to_string())?.items.len()
            + deps.list(&lp).await.map_err(|e| e.to_string())?.items.len()
            + svcs.list(&lp).await.map_err(|e| e.to_string())?.items.len();
        if n == 0 { Ok(()) } else { Err(format!("{n} objects of shard 1 left")) }
    })
    .await;
    assert_eq!(mesh_map(&cms.get("stanton-mesh-map").await.expect("cm")).shards.len(), 1);
    wait_event(&client, &ns.name, "ServerLayout", "stanton", "ShardDeleted", &ops).await;

    // Delete: the finalizer drains, then the garbage collector removes the children.
    kubectl(&["delete", "serverlayout", "stanton", "-n", &ns.name, "--wait=false"]);
    wait_for("layout gone", T, &ops, || async {
        match layouts.get_opt("stanton").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(l) => Err(format!("still there, finalizers {:?}", l.finalizers())),
        }
    })
    .await;
    wait_event(&client, &ns.name, "ServerLayout", "stanton", "Drained", &ops).await;
    wait_for("children garbage-collected", Duration::from_secs(90), &ops, || async {
        let lp = ListParams::default().labels("starmesh.dev/layout=stanton");
        let n = sts.list(&lp).await.map_err(|e| e.to_string())?.items.len()
            + deps.list(&lp).await.map_err(|e| e.to_string())?.items.len()
            + svcs.list(&lp).await.map_err(|e| e.to_string())?.items.len()
            + cms.list(&lp).await.map_err(|e| e.to_string())?.items.len();
        if n == 0 { Ok(()) } else { Err(format!("{n} children left")) }
    })
    .await;
}

/// A layout whose StarSystem does not exist yet is reported (SystemNotFound, naming
/// spec.systemRef), creates nothing, and reconciles as soon as the system appears; an
/// edit that breaks a running layout keeps its shards running (Degraded).
#[tokio::test]
async fn missing_system_then_invalid_edit() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-missing").await;
    let op = Operator::start(&ns.name, "op-a");
    let ops = [&op];
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);

    apply(&ns.name, &example("stanton-layout.yaml"));
    let l = observed_layout(&layouts, "stanton", &ops).await;
    let valid =
        condition(&l.status.as_ref().expect("status").conditions, "Valid").cloned().expect("Valid");
    assert_eq!((valid.status.as_str(), valid.reason.as_str()), ("False", "SystemNotFound"));
    assert!(valid.message.contains("spec.systemRef"), "{}", valid.message);
    let ev = wait_event(&client, &ns.name, "ServerLayout", "stanton", "SystemNotFound", &ops).await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    let lp = ListParams::default().labels("starmesh.dev/layout=stanton");
    assert!(sts.list(&lp).await.expect("list").items.is_empty(), "invalid layout created children");

    // The system appears: the layout is woken by the StarSystem watch.
    apply(&ns.name, &example("stanton.yaml"));
    wait_for("layout valid after its system appeared", T, &ops, || async {
        let l = layouts.get("stanton").await.map_err(|e| e.to_string())?;
        let c = l.status.as_ref().and_then(|s| condition(&s.conditions, "Valid").cloned());
        match c {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let before = sts.get("stanton-shard-0-servers").await.expect("servers");

    // Break it: two servers own hurston. Shards keep running unchanged.
    let patch = r#"{"spec":{"servers":[{"name":"a","territories":["hurston"]},{"name":"b","territories":["hurston"]}]}}"#;
    kubectl(&["patch", "serverlayout", "stanton", "-n", &ns.name, "--type=merge", "-p", patch]);
    let l = observed_layout(&layouts, "stanton", &ops).await;
    let conds = l.status.as_ref().expect("status").conditions.clone();
    assert_eq!(condition(&conds, "Valid").map(|c| c.status.as_str()), Some("False"));
    let degraded = condition(&conds, "Degraded").expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpecKeptRunning")
    );
    let after = sts.get("stanton-shard-0-servers").await.expect("servers still there");
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "invalid edit changed running servers"
    );
    assert_eq!(after.spec.replicas, Some(6));
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Deserialize, Debug)]
struct Case {
    file: String,
    by: String,
    kind: Option<String>,
    name: Option<String>,
    reason: Option<String>,
    field: Option<String>,
}

/// Every file of e2e/corpus/invalid is refused by the API server (schema, yaml) or
/// reported by the operator (Valid=False with the expected reason naming the expected
/// field, a Warning Event, no children), and a valid layout beside them is unaffected.
#[tokio::test]
async fn invalid_corpus_is_refused_or_reported() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-corpus").await;
    let op = Operator::start(&ns.name, "op-a");
    let ops = [&op];
    let dir = repo().join("e2e/corpus/invalid");
    let expected: Expected = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("expected.yaml"))
            .expect("e2e/corpus/invalid/expected.yaml"),
    )
    .expect("expected.yaml parses");
    assert!(expected.cases.len() >= 10, "corpus too small");

    apply(&ns.name, &example("stanton.yaml"));
    apply(&ns.name, &example("stanton-layout.yaml"));
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    let systems: Api<StarSystem> = Api::namespaced(client.clone(), &ns.name);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let good = observed_layout(&layouts, "stanton", &ops).await;
    let good_children: BTreeMap<String, Option<i64>> = sts
        .list(&ListParams::default().labels("starmesh.dev/layout=stanton"))
        .await
        .expect("list")
        .items
        .iter()
        .map(|s| (s.name_any(), s.metadata.generation))
        .collect();

    let mut operator_cases = Vec::new();
    for case in &expected.cases {
        let path = dir.join(&case.file);
        let path = path.to_str().expect("utf-8");
        let (ok, out, err) = kubectl_raw(&[
            "apply",
            "--server-side",
            "--field-manager=starmesh-e2e",
            "-n",
            &ns.name,
            "-f",
            path,
        ]);
        match case.by.as_str() {
            "schema" => {
                assert!(!ok, "{}: the API server accepted it:\n{out}", case.file);
                let field = case.field.as_deref().unwrap_or_default();
                let leaf = field.rsplit('.').next().unwrap_or(field);
                let leaf = leaf.split('[').next().unwrap_or(leaf);
                assert!(err.contains(leaf), "{}: refusal does not name {field}:\n{err}", case.file);
            }
            "yaml" => assert!(!ok, "{}: kubectl applied it:\n{out}", case.file),
            "operator" => {
                assert!(
                    ok,
                    "{}: refused by the API server, expected the operator to report it:\n{err}",
                    case.file
                );
                operator_cases.push(case);
            }
            other => panic!("{}: unknown `by: {other}`", case.file),
        }
    }

    for case in operator_cases {
        let name = case.name.as_deref().expect("name");
        let reason = case.reason.as_deref().expect("reason");
        let field = case.field.as_deref().unwrap_or_default();
        let what = format!(
            "{}: {} {name} Valid=False/{reason}",
            case.file,
            case.kind.as_deref().unwrap_or("?")
        );
        let conds = wait_for(&what, T, &ops, || async {
            let conds = match case.kind.as_deref() {
                Some("StarSystem") => {
                    systems.get(name).await.map_err(|e| e.to_string())?.status.map(|s| s.conditions)
                }
                Some("ServerLayout") => {
                    layouts.get(name).await.map_err(|e| e.to_string())?.status.map(|s| s.conditions)
                }
                other => return Err(format!("unknown kind {other:?}")),
            }
            .unwrap_or_default();
            match condition(&conds, "Valid") {
                Some(c) if c.status == "False" && c.reason == reason => Ok(conds),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let valid = condition(&conds, "Valid").expect("Valid");
        assert!(
            valid.message.contains(field),
            "{what}: message does not name {field}: {}",
            valid.message
        );
        assert_eq!(condition(&conds, "Ready").map(|c| c.status.as_str()), Some("False"), "{what}");
        let ev = wait_event(
            &client,
            &ns.name,
            case.kind.as_deref().unwrap_or_default(),
            name,
            reason,
            &ops,
        )
        .await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"), "{what}");
        if case.kind.as_deref() == Some("ServerLayout") {
            let lp = ListParams::default().labels(&format!("starmesh.dev/layout={name}"));
            assert!(
                sts.list(&lp).await.expect("list").items.is_empty(),
                "{what}: created StatefulSets"
            );
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
            assert!(
                cms.get_opt(&format!("{name}-mesh-map")).await.expect("get").is_none(),
                "{what}: mesh map"
            );
        }
    }

    // The valid layout is untouched.
    let now = observed_layout(&layouts, "stanton", &ops).await;
    assert_eq!(now.metadata.generation, good.metadata.generation);
    let conds = now.status.expect("status").conditions;
    assert_eq!(condition(&conds, "Valid").map(|c| c.status.as_str()), Some("True"));
    let children: BTreeMap<String, Option<i64>> = sts
        .list(&ListParams::default().labels("starmesh.dev/layout=stanton"))
        .await
        .expect("list")
        .items
        .iter()
        .map(|s| (s.name_any(), s.metadata.generation))
        .collect();
    assert_eq!(children, good_children);
}

/// Two operators, one Lease: only the holder reconciles; kill -9 it and the standby takes
/// over and reconciles a new change; SIGTERM releases the Lease and exits cleanly.
#[tokio::test]
async fn standby_takes_over_when_the_leader_dies() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-leader").await;
    let mut a = Operator::start(&ns.name, "op-a");
    let mut b = Operator::start(&ns.name, "op-b");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = wait_for("a lease holder", T, &[&a, &b], || async {
        let l = leases
            .get_opt("starmesh-operator")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no lease")?;
        l.spec
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "no holder".to_string())
    })
    .await;
    apply(&ns.name, &example("stanton.yaml"));
    apply(&ns.name, &example("stanton-layout.yaml"));
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    observed_layout(&layouts, "stanton", &[&a, &b]).await;

    let (leader, standby) = if holder == "op-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert!(
        standby.metrics().await.contains("starmesh_operator_leader 0"),
        "standby claims to lead"
    );
    let killed_at = Instant::now();
    leader.kill9();
    kubectl(&[
        "patch",
        "serverlayout",
        "stanton",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"tickRate":45}}"#,
    ]);
    let standby_ref: &Operator = standby;
    wait_for("standby holds the lease", T, &[standby_ref], || async {
        let l = leases.get("starmesh-operator").await.map_err(|e| e.to_string())?;
        let h = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        if h == standby_ref.identity { Ok(()) } else { Err(format!("holder {h:?}")) }
    })
    .await;
    let l = observed_layout(&layouts, "stanton", &[standby_ref]).await;
    assert_eq!(l.spec.tick_rate, 45);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let srv = sts.get("stanton-shard-0-servers").await.expect("servers");
    let env = srv.spec.template.spec.and_then(|p| p.containers[0].env.clone()).expect("env");
    assert_eq!(
        env.iter()
            .find(|e| e.name == "STARMESH_TICK_RATE")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("45")
    );
    eprintln!("takeover and reconcile took {:?} after kill -9", killed_at.elapsed());
    assert!(standby_ref.metrics().await.contains("starmesh_operator_leader 1"));

    // Graceful stop: SIGTERM -> controllers stop, lease released, exit 0.
    let pid = standby.child.id().to_string();
    let status = Command::new("/bin/kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = standby.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "operator did not exit within 30s of SIGTERM\n{}",
            standby.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exit.success(), "exit status {exit:?}\n{}", standby.log_tail());
    let lease = leases.get("starmesh-operator").await.expect("lease");
    let h = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert!(h.is_empty(), "lease still held by {h:?} after a graceful stop");
}

/// Issue 8's settings on a real API server: the schema refuses what is out of range,
/// the operator reports what only it can judge (min above max, a Prometheus URL it cannot
/// use) with field paths, and a fixed spec is Valid again with `spec.shards` untouched
/// (this operator runs outside the cluster: no counts, so no scaling decision).
#[tokio::test]
async fn autoscaling_settings_are_checked_by_schema_and_operator() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-autoscale").await;
    let op = Operator::start(&ns.name, "op-a");
    let ops = [&op];
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    apply(&ns.name, &example("pyro.yaml"));
    apply(&ns.name, &example("pyro-layout.yaml"));
    let valid_again = |what: &'static str| {
        let layouts = layouts.clone();
        async move {
            wait_for(what, T, &ops, || async {
                let l = layouts.get("pyro").await.map_err(|e| e.to_string())?;
                let c = l.status.as_ref().and_then(|s| condition(&s.conditions, "Valid").cloned());
                match c {
                    Some(c)
                        if c.status == "True" && c.observed_generation == l.metadata.generation =>
                    {
                        Ok(l)
                    }
                    other => Err(format!("{other:?}")),
                }
            })
            .await
        }
    };
    valid_again("pyro valid").await;

    // Out of the schema's range: refused by the API server itself.
    let (ok, _, err) = kubectl_raw(&[
        "patch",
        "serverlayout",
        "pyro",
        "-n",
        &ns.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"shardAutoscaling":{"maxShards":100}}}"#,
    ]);
    assert!(!ok && err.contains("maxShards"), "schema must refuse maxShards 100: {err}");

    // Within the schema, wrong together: the operator says where.
    let patch = r#"{"spec":{"shardAutoscaling":{"minShards":3,"maxShards":2},"playerCounts":{"source":"Prometheus","prometheus":{"url":"https://prom:9090"}}}}"#;
    kubectl(&["patch", "serverlayout", "pyro", "-n", &ns.name, "--type=merge", "-p", patch]);
    let l = observed_layout(&layouts, "pyro", &ops).await;
    let valid =
        condition(&l.status.as_ref().expect("status").conditions, "Valid").cloned().expect("Valid");
    assert_eq!((valid.status.as_str(), valid.reason.as_str()), ("False", "MinAboveMax"));
    assert!(valid.message.contains("spec.shardAutoscaling.minShards"), "{}", valid.message);
    assert!(valid.message.contains("spec.playerCounts.prometheus.url"), "{}", valid.message);

    // Fixed: valid, and nothing scaled the shards.
    let patch = r#"{"spec":{"shardAutoscaling":{"minShards":1,"maxShards":2,"targetPlayersPerShard":50},"playerCounts":{"source":"Prometheus","prometheus":{"url":"http://prom:9090"}}}}"#;
    kubectl(&["patch", "serverlayout", "pyro", "-n", &ns.name, "--type=merge", "-p", patch]);
    let l = valid_again("pyro valid with autoscaling settings").await;
    let a = l.spec.shard_autoscaling.clone().expect("shardAutoscaling kept");
    assert_eq!((a.min_shards, a.max_shards, a.target_players_per_shard), (1, 2, 50));
    assert_eq!(l.spec.shards, 1);
    assert_eq!(l.status.as_ref().and_then(|s| s.draining_shard), None);
}

/// A standard HorizontalPodAutoscaler (autoscaling/v2beta2, what Kubernetes 1.20 has)
/// drives `spec.shards` through the layout's scale subresource: the controller-manager's
/// HPA controller reads `/scale` (replicas and `status.selector`) and raises the layout to
/// `minReplicas`, and the operator creates the new shard. No metrics API runs in this
/// cluster, so the HPA reports that it cannot read its metric, and scales only by its
/// bounds — which is exactly the part that proves the scale subresource works with it.
#[tokio::test]
async fn a_horizontal_pod_autoscaler_drives_shards() {
    let client = client().await;
    let ns = TestNs::new(&client, "e2e-hpa").await;
    let op = Operator::start(&ns.name, "op-a");
    let ops = [&op];
    apply(&ns.name, &example("stanton.yaml"));
    apply(&ns.name, &example("stanton-layout.yaml"));
    let layouts: Api<ServerLayout> = Api::namespaced(client.clone(), &ns.name);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let first = observed_layout(&layouts, "stanton", &ops).await;
    assert_eq!(first.spec.shards, 1);
    let selector = first.status.as_ref().and_then(|s| s.selector.clone()).expect("status.selector");
    assert!(selector.contains("starmesh.dev/layout=stanton"), "{selector}");

    let hpa = r#"
apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata:
  name: stanton-shards
spec:
  scaleTargetRef:
    apiVersion: starmesh.dev/v1alpha1
    kind: ServerLayout
    name: stanton
  minReplicas: 2
  maxReplicas: 3
  metrics:
    - type: Pods
      pods:
        metric:
          name: starmesh_players
        target:
          type: AverageValue
          averageValue: "500"
"#;
    let hpa_file = std::env::temp_dir().join(format!("{}-hpa.yaml", ns.name));
    std::fs::write(&hpa_file, hpa).expect("write the HPA manifest");
    apply(&ns.name, &hpa_file.to_string_lossy());
    let _ = std::fs::remove_file(&hpa_file);
    let l = wait_for(
        "the HPA raises spec.shards to minReplicas",
        Duration::from_secs(120),
        &ops,
        || async {
            let l = layouts.get("stanton").await.map_err(|e| e.to_string())?;
            let observed = l.status.as_ref().map_or(0, |s| s.shards);
            if l.spec.shards == 2 && observed == 2 {
                Ok(l)
            } else {
                Err(format!("spec {} status {observed}", l.spec.shards))
            }
        },
    )
    .await;
    assert_eq!(l.spec.shards, 2);
    sts.get("stanton-shard-1-replicant").await.expect("shard 1 replicant, created for the HPA");
    let able = kubectl(&[
        "get",
        "horizontalpodautoscalers.v2beta2.autoscaling",
        "stanton-shards",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"AbleToScale\")].status}",
    ]);
    assert_eq!(able.trim(), "True", "the HPA must be able to read and write /scale");
    let desired = kubectl(&[
        "get",
        "horizontalpodautoscalers.v2beta2.autoscaling",
        "stanton-shards",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.desiredReplicas}",
    ]);
    assert_eq!(desired.trim(), "2");
    kubectl(&["delete", "hpa", "stanton-shards", "-n", &ns.name]);
}
