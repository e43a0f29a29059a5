//! The mesh really runs in the cluster, as an SRE runs it: Helm installs the operator;
//! Stanton and Pyro are applied with hostPath PersistentVolumes for the replicants'
//! embedded stores; both layouts reach Ready=True with real node pods; the operator puts
//! each system's gate peers (the other system's replicant and gateway Service IPs) in the
//! mesh maps and the running pods pick them up without a restart; a bots Job plays through
//! Stanton's gateway Service, a share of the bots flying through the Stanton–Pyro jump
//! gate and following their ships to Pyro's gateway; while they play, `kubectl get
//! serverlayouts` shows live PLAYERS, Prometheus reads `starmesh_players`, `helm upgrade`
//! to a changed operator image rolls the operator (a new pod holds the Lease) without
//! restarting a single mesh pod, and a game server pod is deleted; the bots report no ship
//! lost or duplicated and no reconnect; finally scaling Pyro to two shards brings shard 1
//! up with its gate peer chosen by the documented rule. One mesh for all of it: booting
//! pods is what costs time here.
//!
//! Needs a FULL cluster with both images loaded and a second tag of the operator image
//! (`STARMESH_E2E_UPGRADE_TAG`): `e2e/run-cluster-tests.sh` does all three (see
//! `tests/helm.rs` for running by hand). Without them it FAILS, never skips.
//!
//! The PersistentVolumes are hostPath folders on the node, i.e. on this machine (the
//! harness's kubelet shares the host's filesystem); the test creates them owned by the
//! pods' uid, and removes them. Against another cluster (kind) set
//! `STARMESH_E2E_STORAGE_CLASS` to a class with a provisioner instead.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use starmesh_e2e::{poll, repo_root, run};
use starmesh_operator::builders;
use support::{
    apply_text, get_json, helm, kubectl, kubectl_raw, report_from_logs, secs, tool, tools,
    unique_suffix,
};

mod support;

const RELEASE: &str = "starmesh";
/// The operator's Deployment and Lease (the chart names both after the release).
const OPERATOR: &str = "starmesh-operator";
const STANTON: &str = "stanton";
const PYRO: &str = "pyro";
const EVERY: Duration = Duration::from_millis(1000);
const BOT_PLAYERS: usize = 50;
/// Long enough to watch PLAYERS, roll the operator, delete a server pod and see it
/// replaced, and for the gate bots to reach the gate (~50-100 Gm at `BOT_SPEED`).
const BOT_SECONDS: u64 = 110;
/// km/s: Stanton's gates are ~50 million km from the star.
const BOT_SPEED: u32 = 1_000_000;
/// Share of the bots whose route ends in a jump gate.
const GATE_SHARE: &str = "0.3";
/// PersistentVolumes: Stanton shard 0, Pyro shards 0 and 1.
const PVS: usize = 3;

/// What a failed wait prints: the layouts, the pods, their descriptions and logs, the
/// operator's logs.
fn diagnose(app_ns: &str, release_ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-n", app_ns, "get", "serverlayouts,sts,deploy,pods,pvc,jobs", "-o", "wide"],
        vec!["get", "pv"],
        vec!["-n", app_ns, "get", "serverlayouts", "-o", "jsonpath={.items[*].status}"],
        vec!["-n", app_ns, "get", "configmaps", "-o", "jsonpath={.items[*].data.mesh-map\\.json}"],
        vec!["-n", app_ns, "describe", "pods"],
        vec!["-n", app_ns, "logs", "-l", "starmesh.dev/layout", "--tail=30", "--prefix"],
        vec!["-n", app_ns, "logs", "-l", "job-name", "--tail=60", "--prefix"],
        vec!["-n", release_ns, "get", "pods,lease", "-o", "wide"],
        vec!["-n", release_ns, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=30"],
    ] {
        let out = kubectl_raw(&args);
        s.push_str(&format!("\n--- kubectl {} ---\n{}{}", args.join(" "), out.stdout, out.stderr));
    }
    s
}

/// Removes what the test created, pass or fail: namespaces (after dropping the layouts'
/// finalizers if the operator is gone), the release, the CRDs, the PVs and their folders.
struct Cleanup {
    release_ns: String,
    app_ns: String,
    pvs: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for layout in [STANTON, PYRO] {
                kubectl_raw(&[
                    "patch",
                    "-n",
                    &self.app_ns,
                    &format!("serverlayout/{layout}"),
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        kubectl_raw(&["delete", "namespace", &self.app_ns, "--timeout=120s"]);
        tool(&tools().helm, &["uninstall", RELEASE, "-n", &self.release_ns]);
        kubectl_raw(&["delete", "namespace", &self.release_ns, "--wait=false"]);
        kubectl_raw(&["delete", "crd", "starsystems.starmesh.dev", "serverlayouts.starmesh.dev"]);
        for pv in &self.pvs {
            kubectl_raw(&["delete", "pv", pv, "--wait=false"]);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn condition(l: &Value, ty: &str) -> Option<String> {
    l["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(String::from))
}

/// The layout Ready=True with `shards` shards all ready, observed at its generation.
fn layout_ready(app_ns: &str, layout: &str, shards: i64) -> Result<Value, String> {
    let l = get_json(&["serverlayout", layout, "-n", app_ns])?;
    let st = &l["status"];
    if st["observedGeneration"] != l["metadata"]["generation"] {
        return Err(format!("{layout}: not observed yet: {st}"));
    }
    let ready = condition(&l, "Ready");
    if ready.as_deref() != Some("True")
        || st["shards"].as_i64() != Some(shards)
        || st["readyShards"].as_i64() != Some(shards)
    {
        return Err(format!("{layout}: Ready={ready:?} status {st}"));
    }
    Ok(l)
}

/// Every pod of the layout's shard `shard` Running and Ready: 1 replicant, as many
/// servers as its StatefulSet asks for (Pyro's is dynamic), 1 gateway. Returns the
/// number of servers.
fn shard_pods_ready(app_ns: &str, layout: &str, shard: i32) -> Result<usize, String> {
    let sts = get_json(&["statefulset", &builders::servers_name(layout, shard), "-n", app_ns])?;
    let servers = sts["spec"]["replicas"].as_u64().ok_or("servers StatefulSet: no replicas")?;
    let servers = usize::try_from(servers).map_err(|e| e.to_string())?;
    let selector = format!("starmesh.dev/layout={layout},starmesh.dev/shard={shard}");
    let pods = get_json(&["pods", "-n", app_ns, "-l", &selector])?;
    let items = pods["items"].as_array().ok_or("no items")?;
    let mut counts = [0usize; 3];
    for p in items {
        let ready = p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if !ready || !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        match p["metadata"]["labels"]["app.kubernetes.io/component"].as_str() {
            Some("replicant") => counts[0] += 1,
            Some("server") => counts[1] += 1,
            Some("gateway") => counts[2] += 1,
            _ => {}
        }
    }
    if counts == [1, servers, 1] && servers > 0 {
        Ok(servers)
    } else {
        Err(format!(
            "{layout} shard {shard}: ready replicant/servers/gateway pods {counts:?}, want [1, {servers}, 1]"
        ))
    }
}

/// The PLAYERS column of `kubectl get serverlayouts` for the layout, parsed from the text
/// table an SRE reads.
fn players_column(app_ns: &str, layout: &str) -> Result<i64, String> {
    let out = kubectl_raw(&["get", "serverlayouts", "-n", app_ns]);
    if !out.ok {
        return Err(out.stderr);
    }
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().ok_or("no header")?.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "PLAYERS").ok_or("no PLAYERS column")?;
    let row = lines.find(|l| l.split_whitespace().next() == Some(layout)).ok_or("no row")?;
    let v = row.split_whitespace().nth(col).ok_or("short row")?;
    v.parse().map_err(|_| format!("PLAYERS {v:?} in\n{}", out.stdout))
}

/// `IP:port` of a Service's named port, read from the API (what the mesh map must hold).
fn service_addr(app_ns: &str, name: &str, port: &str) -> Result<String, String> {
    let svc = get_json(&["service", name, "-n", app_ns])?;
    let ip = svc["spec"]["clusterIP"].as_str().ok_or("no clusterIP")?;
    let p = svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == port))
        .and_then(|p| p["port"].as_i64())
        .ok_or_else(|| format!("service {name}: no port {port}"))?;
    Ok(format!("{ip}:{p}"))
}

/// The layout's mesh map as the operator wrote it.
fn mesh_map(app_ns: &str, layout: &str) -> Result<Value, String> {
    let cm = get_json(&["configmap", &builders::mesh_map_name(layout), "-n", app_ns])?;
    let text = cm["data"][builders::MESH_MAP_KEY].as_str().ok_or("no mesh-map.json")?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Shard `shard`'s gate peer for `system` in `layout`'s mesh map, as
/// (peer shard, replicant `IP:grpc`, gateway `IP:game`).
fn gate_peer(
    app_ns: &str,
    layout: &str,
    shard: i64,
    system: &str,
) -> Result<(i64, String, String), String> {
    let m = mesh_map(app_ns, layout)?;
    let s = m["shards"]
        .as_array()
        .and_then(|ss| ss.iter().find(|s| s["index"] == shard))
        .ok_or_else(|| format!("{layout}: no shard {shard} in the mesh map"))?;
    let p = s["gatePeers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["system"] == system))
        .ok_or_else(|| format!("{layout} shard {shard}: no gate peer {system}: {s}"))?;
    let addr = |e: &Value, port: &str| {
        format!("{}:{}", e["clusterIP"].as_str().unwrap_or("?"), e["ports"][port])
    };
    Ok((
        p["shard"].as_i64().unwrap_or(-1),
        addr(&p["replicant"], "grpc"),
        addr(&p["gateway"], "game"),
    ))
}

/// Polls until `layout`'s shard 0 mesh map has `target`'s shard 0 replicant and gateway
/// Service addresses as its gate peer, and that layout's replicant and gateway pods say
/// in their logs that they use them (read from the mounted file, no restart).
fn wait_gate_peers(app_ns: &str, layout: &str, target: &str, diag: &dyn Fn() -> String) {
    let rep = service_addr(app_ns, &builders::replicant_name(target, 0), "grpc").expect("svc");
    let gw = service_addr(app_ns, &builders::gateway_name(target, 0), "game").expect("svc");
    poll(
        &format!("{layout}'s mesh map to name {target}'s replicant {rep} and gateway {gw}"),
        Duration::from_secs(60),
        EVERY,
        || {
            let got = gate_peer(app_ns, layout, 0, target)?;
            let want = (0, rep.clone(), gw.clone());
            if got == want { Ok(()) } else { Err(format!("{got:?}, want {want:?}")) }
        },
        diag,
    );
    // The kubelet refreshes a mounted ConfigMap on its sync (about a minute), and the
    // pods re-read it every few seconds.
    let lines = [
        (
            builders::replicant_name(layout, 0),
            format!("gate peer: the replicant of {target} is at {rep}"),
        ),
        (
            builders::gateway_name(layout, 0),
            format!("gateway peer: players leaving for {target} are sent to {gw}"),
        ),
    ];
    for (workload, line) in lines {
        let kind = if workload.ends_with("-gateway") { "deployment" } else { "statefulset" };
        poll(
            &format!("{kind}/{workload} to log {line:?}"),
            Duration::from_secs(150),
            Duration::from_secs(3),
            || {
                let out = kubectl_raw(&[
                    "logs",
                    &format!("{kind}/{workload}"),
                    "-n",
                    app_ns,
                    "--tail=-1",
                ]);
                if out.stdout.contains(&line) { Ok(()) } else { Err("not yet".into()) }
            },
            diag,
        );
    }
}

/// Every pod of the mesh (both layouts) by name: (uid, the sum of its restartCounts).
fn mesh_pods(app_ns: &str) -> Result<BTreeMap<String, (String, i64)>, String> {
    let pods = get_json(&["pods", "-n", app_ns, "-l", "starmesh.dev/layout"])?;
    Ok(pods["items"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .map(|p| {
            let restarts = p["status"]["containerStatuses"]
                .as_array()
                .map_or(0, |cs| cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum());
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                (p["metadata"]["uid"].as_str().unwrap_or_default().to_string(), restarts),
            )
        })
        .collect())
}

/// Names of the operator's pods that are not being deleted.
fn operator_pods(ns: &str) -> Result<Vec<String>, String> {
    let pods = get_json(&["pods", "-n", ns, "-l", "app.kubernetes.io/component=operator"])?;
    Ok(pods["items"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect())
}

/// The operator rolled to `image`: the Deployment observed, every replica updated, ready
/// and available with `image`, no pod of `old` left, and the Lease held by a new pod.
/// Returns the new leader.
fn operator_rolled(ns: &str, image: &str, old: &[String]) -> Result<String, String> {
    let d = get_json(&["deployment", OPERATOR, "-n", ns])?;
    let got = d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or("");
    if !got.ends_with(image) {
        return Err(format!("Deployment image {got}, want {image}"));
    }
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let st = &d["status"];
    let n = |k: &str| st[k].as_i64().unwrap_or(0);
    if st["observedGeneration"] != d["metadata"]["generation"]
        || n("updatedReplicas") != want
        || n("readyReplicas") != want
        || n("availableReplicas") != want
        || n("replicas") != want
    {
        return Err(format!("Deployment status {st}, want {want} replicas"));
    }
    let pods = operator_pods(ns)?;
    if let Some(p) = pods.iter().find(|p| old.contains(p)) {
        return Err(format!("old operator pod {p} still there"));
    }
    let lease = get_json(&["lease", OPERATOR, "-n", ns])?;
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string();
    if !pods.contains(&holder) {
        return Err(format!("Lease holder {holder:?} is not one of the new pods {pods:?}"));
    }
    Ok(holder)
}

/// The bots Job: the node image, `starmesh bots` against the gateway Service's cluster IP,
/// a share of them into a jump gate.
fn bots_job_yaml(name: &str, image: &str, pull: &str, gateway: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  template:
    metadata: {{labels: {{app.kubernetes.io/name: starmesh-bots}}}}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}}
      containers:
        - name: bots
          image: {image}
          imagePullPolicy: {pull}
          args: [bots, --gateway, "{gateway}", -n, "{BOT_PLAYERS}", --duration, "{BOT_SECONDS}s",
                 --speed, "{BOT_SPEED}", --gate-share, "{GATE_SHARE}", --gate-bound, "30s", --json]
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
            limits: {{cpu: "1", memory: 512Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
"#
    )
}

/// A real Prometheus (Debian's) inside the cluster's network namespace, scraping the pods'
/// metrics ports by IP; stopped by its own PID on drop. The test reaches its HTTP API on
/// the node IP (the netns's end of the veth).
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// `None` when STARMESH_E2E_PROMETHEUS=0 (e.g. on kind); otherwise it must start.
    fn start(targets: &[String]) -> Option<Prometheus> {
        if std::env::var("STARMESH_E2E_PROMETHEUS").as_deref() == Ok("0") {
            println!("Prometheus: skipped (STARMESH_E2E_PROMETHEUS=0)");
            return None;
        }
        let netns = std::env::var("STARMESH_NETNS_PATH").expect(
            "STARMESH_NETNS_PATH (from the harness's env file) is needed to run Prometheus in \
             the cluster's network namespace; set STARMESH_E2E_PROMETHEUS=0 to go without",
        );
        let node_ip = std::env::var("STARMESH_NODE_IP").expect("STARMESH_NODE_IP");
        let dir = tempfile::tempdir().expect("temp dir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global: {{scrape_interval: 2s, scrape_timeout: 1s}}\n\
             scrape_configs:\n  - job_name: starmesh\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write prometheus.yml");
        let listen = format!("{node_ip}:19090");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg("--")
            .arg("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian package `prometheus`, e2e/install-deps.sh)");
        let p = Prometheus { child, url: format!("http://{listen}"), _dir: dir };
        let log_path = p._dir.path().join("prometheus.log");
        poll(
            "Prometheus ready",
            Duration::from_secs(30),
            EVERY,
            || curl(&format!("{}/-/ready", p.url)).map(|_| ()),
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
        );
        Some(p)
    }

    /// The value of an instant PromQL query that returns one sample.
    fn query_scalar(&self, promql: &str) -> Result<f64, String> {
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                b => format!("%{b:02X}"),
            })
            .collect();
        let body = curl(&format!("{}/api/v1/query?query={q}", self.url))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no sample for {promql}: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(url: &str) -> Result<String, String> {
    let out = run(Path::new("curl"), &["-sS", "--fail", "--max-time", "5", url], &[]);
    if out.ok { Ok(out.stdout) } else { Err(format!("curl {url}: {}", out.stderr.trim())) }
}

/// `IP:9100` of every replicant, server and gateway pod (each serves `/metrics` there).
fn metrics_targets(app_ns: &str) -> Vec<String> {
    let pods = get_json(&["pods", "-n", app_ns, "-l", "starmesh.dev/layout"]).expect("list pods");
    pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str())
        .map(|ip| format!("{ip}:{}", builders::METRICS_PORT))
        .collect()
}

/// The layout YAML of the example, with the test's storage class.
fn layout_with_class(file: &str, class: &str) -> String {
    let layout = std::fs::read_to_string(repo_root().join("manifests/examples").join(file))
        .expect("layout example");
    let embedded = "embedded: {volumeSize: 1Gi}";
    assert!(layout.contains(embedded), "{file} changed its persistence line");
    layout.replace(embedded, &format!("embedded: {{volumeSize: 1Gi, storageClassName: {class}}}"))
}

#[test]
fn stanton_and_pyro_run_ships_jump_the_operator_upgrades_under_load() {
    let t = tools();
    assert!(
        std::env::var("STARMESH_CLUSTER_HAS_NODE").as_deref() != Ok("0"),
        "THIS TEST NEEDS A NODE: boot a full cluster (e2e/run-cluster-tests.sh)"
    );
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "the cluster in {} has no node", t.kubeconfig.display());
    let upgrade_tag = std::env::var("STARMESH_E2E_UPGRADE_TAG").unwrap_or_default();
    assert!(
        !upgrade_tag.is_empty(),
        "STARMESH_E2E_UPGRADE_TAG must name a second tag of the loaded operator image (the \
         `helm upgrade` target); e2e/run-cluster-tests.sh tags it"
    );

    let suffix = unique_suffix();
    let release_ns = format!("sm-mesh-op-{suffix}");
    let app_ns = format!("sm-mesh-{suffix}");
    let class = std::env::var("STARMESH_E2E_STORAGE_CLASS")
        .unwrap_or_else(|_| format!("starmesh-e2e-{suffix}"));
    let make_pvs = std::env::var_os("STARMESH_E2E_STORAGE_CLASS").is_none();
    let mut cleanup = Cleanup {
        release_ns: release_ns.clone(),
        app_ns: app_ns.clone(),
        pvs: Vec::new(),
        dirs: Vec::new(),
    };
    let diag = || diagnose(&app_ns, &release_ns);

    // -- the operator, in-cluster.
    let t0 = Instant::now();
    let chart = repo_root().join("charts/starmesh");
    let chart = chart.to_str().expect("utf-8");
    let mut args = vec![
        "install",
        RELEASE,
        chart,
        "-n",
        &release_ns,
        "--create-namespace",
        "--wait",
        "--timeout",
        "180s",
    ];
    let tag = std::env::var("STARMESH_E2E_IMAGE_TAG").unwrap_or_default();
    let tag_args = [format!("image.tag={tag}"), format!("nodeImage.tag={tag}")];
    if !tag.is_empty() {
        for a in &tag_args {
            args.extend_from_slice(&["--set", a]);
        }
    }
    // Mesh mTLS on: the chart generates the CA and writes the Secret to the release
    // namespace (the operator's Admin client) and to the layouts' namespace, which must
    // exist first.
    kubectl(&["create", "namespace", &app_ns]);
    let tls_namespaces = format!("meshTLS.namespaces={{{app_ns}}}");
    args.extend_from_slice(&["--set", "meshTLS.enabled=true", "--set", &tls_namespaces]);
    helm(&args);
    println!("TIMING mesh: helm install --wait -> operator Ready: {}", secs(t0.elapsed()));

    // -- storage: one hostPath PV per replicant (the harness has no provisioner).
    if make_pvs {
        for i in 0..PVS {
            let dir = std::env::temp_dir().join(format!("starmesh-e2e-pv-{suffix}-{i}"));
            std::fs::create_dir_all(&dir).expect("PV folder");
            // The replicant runs as 65532; hostPath ignores fsGroup.
            std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
            cleanup.dirs.push(dir.clone());
            let name = format!("starmesh-e2e-{suffix}-{i}");
            apply_text("default", &support::pv_yaml(&name, &class, &dir, "mesh"));
            cleanup.pvs.push(name);
        }
    }

    // -- Stanton, then Pyro (the order an SRE may well use: Stanton's gate peers can only
    // come once Pyro exists), with the test's storage class.
    let examples = repo_root().join("manifests/examples");
    let t_apply = Instant::now();
    for (system, layout) in
        [("stanton.yaml", "stanton-layout.yaml"), ("pyro.yaml", "pyro-layout.yaml")]
    {
        kubectl(&["apply", "-n", &app_ns, "-f", examples.join(system).to_str().expect("utf-8")]);
        apply_text(&app_ns, &layout_with_class(layout, &class));
    }
    for layout in [STANTON, PYRO] {
        poll(
            &format!("layout {layout} Ready=True (1 shard)"),
            Duration::from_secs(300),
            EVERY,
            || layout_ready(&app_ns, layout, 1),
            diag,
        );
    }
    let to_ready = t_apply.elapsed();
    let servers = poll(
        "Stanton shard 0 pods Ready",
        Duration::from_secs(60),
        EVERY,
        || shard_pods_ready(&app_ns, STANTON, 0),
        diag,
    );
    assert_eq!(servers, 6, "Stanton has six static servers");
    let pyro_servers = poll(
        "Pyro shard 0 pods Ready",
        Duration::from_secs(60),
        EVERY,
        || shard_pods_ready(&app_ns, PYRO, 0),
        diag,
    );
    println!(
        "TIMING mesh: kubectl apply Stanton + Pyro -> both Ready=True (8 + {} pods): {}",
        2 + pyro_servers,
        secs(to_ready)
    );

    // -- the gate peers: in both mesh maps, and picked up by the running pods.
    let t_peers = Instant::now();
    wait_gate_peers(&app_ns, STANTON, PYRO, &diag);
    wait_gate_peers(&app_ns, PYRO, STANTON, &diag);
    println!(
        "TIMING mesh: both Ready -> gate peers in use by the pods (mesh map re-read, no restart): {}",
        secs(t_peers.elapsed())
    );

    // -- bots through Stanton's gateway Service; some fly into the gate to Pyro.
    let gateway = service_addr(&app_ns, &builders::gateway_name(STANTON, 0), "game")
        .expect("Stanton's gateway Service");
    let sts = get_json(&["statefulset", &builders::replicant_name(STANTON, 0), "-n", &app_ns])
        .expect("replicant StatefulSet");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().expect("image");
    let pull = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
    // The mesh pods run on mTLS (the operator mounted the Secret), and the game played
    // above (layouts Ready, servers Ready) went over it.
    let tls_env =
        c["env"].as_array().into_iter().flatten().any(|e| e["name"] == "STARMESH_TLS_DIR");
    assert!(tls_env, "the replicant runs with STARMESH_TLS_DIR: {c}");
    let job = "bots";
    let prometheus = Prometheus::start(&metrics_targets(&app_ns));
    let pods_before = mesh_pods(&app_ns).expect("mesh pods");
    apply_text(&app_ns, &bots_job_yaml(job, image, pull, &gateway));
    let t_job = Instant::now();

    // While they play, the SRE's table shows them.
    let players = poll(
        "PLAYERS > 0 in kubectl get serverlayouts",
        Duration::from_secs(50),
        EVERY,
        || match players_column(&app_ns, STANTON)? {
            0 => Err("PLAYERS 0".into()),
            n => Ok(n),
        },
        diag,
    );
    println!(
        "TIMING mesh: bots Job created -> PLAYERS {players} in kubectl get serverlayouts: {}",
        secs(t_job.elapsed())
    );
    println!("{}", kubectl(&["get", "serverlayouts", "-n", &app_ns]));
    // And Prometheus, scraping the pods, reads the same gauge back through PromQL.
    if let Some(p) = &prometheus {
        let n = poll(
            "sum(starmesh_players) > 0 through PromQL",
            Duration::from_secs(30),
            EVERY,
            || match p.query_scalar("sum(starmesh_players)")? {
                v if v > 0.0 => Ok(v),
                v => Err(format!("sum(starmesh_players) = {v}")),
            },
            diag,
        );
        println!("Prometheus: sum(starmesh_players) = {n} (players {BOT_PLAYERS})");
        assert!(n <= BOT_PLAYERS as f64, "more players than bots: {n}");
    }

    // -- helm upgrade to a changed operator image while the mesh plays: the operator rolls
    // (new pods, the Lease held by one of them), the mesh's pods are untouched.
    let old_operators = operator_pods(&release_ns).expect("operator pods");
    assert!(!old_operators.is_empty(), "operator pods before the upgrade");
    let t_up = Instant::now();
    let image_tag = format!("image.tag={upgrade_tag}");
    helm(&["upgrade", RELEASE, chart, "-n", &release_ns, "--reuse-values", "--set", &image_tag]);
    let new_leader = poll(
        "the operator to roll to the new image, a new pod holding the Lease",
        Duration::from_secs(120),
        EVERY,
        || operator_rolled(&release_ns, &format!(":{upgrade_tag}"), &old_operators),
        diag,
    );
    println!(
        "TIMING mesh: helm upgrade (operator image -> :{upgrade_tag}) under load -> rolled, \
         leader {new_leader}: {}",
        secs(t_up.elapsed())
    );
    // The new leader has reconciled both layouts (status observed at their generation, Ready)
    // with the mesh untouched.
    for layout in [STANTON, PYRO] {
        poll(
            &format!("{layout} Ready under the upgraded operator"),
            Duration::from_secs(60),
            EVERY,
            || layout_ready(&app_ns, layout, 1),
            diag,
        );
    }
    let pods_after = mesh_pods(&app_ns).expect("mesh pods");
    assert_eq!(
        pods_after, pods_before,
        "the operator's upgrade must not restart or replace a mesh pod (name -> (uid, restarts))"
    );
    assert!(pods_after.values().all(|(_, restarts)| *restarts == 0), "{pods_after:?}");
    let job_state = get_json(&["job", job, "-n", &app_ns]).expect("job");
    assert!(
        job_state["status"]["succeeded"].is_null() && job_state["status"]["failed"].is_null(),
        "the bots must still be playing when the upgrade is done (raise BOT_SECONDS): {}",
        job_state["status"]
    );

    // A game server dies mid-run; its territories go to live servers at once.
    let victim = format!("{}-0", builders::servers_name(STANTON, 0));
    kubectl(&["delete", "pod", &victim, "-n", &app_ns, "--wait=false"]);
    let t_kill = Instant::now();
    poll(
        "the deleted server pod replaced and Ready",
        Duration::from_secs(90),
        EVERY,
        || {
            let (uid, _) = mesh_pods(&app_ns)?.get(&victim).cloned().ok_or("no pod yet")?;
            if uid == pods_before[&victim].0 {
                return Err("the old pod is still there".into());
            }
            shard_pods_ready(&app_ns, STANTON, 0).map(|_| ())
        },
        diag,
    );
    println!(
        "TIMING mesh: server pod deleted -> shard 0 all Ready again: {}",
        secs(t_kill.elapsed())
    );

    // The Job finishes: every player connected, no ship lost or duplicated, no reconnect,
    // ships through the gate with their players following.
    let done = poll(
        "bots Job finished",
        Duration::from_secs(BOT_SECONDS + 90),
        EVERY,
        || {
            let j = get_json(&["job", job, "-n", &app_ns])?;
            let st = &j["status"];
            if st["succeeded"].as_i64().unwrap_or(0) > 0 {
                Ok(true)
            } else if st["failed"].as_i64().unwrap_or(0) > 0 {
                Ok(false)
            } else {
                Err(format!("job status {st}"))
            }
        },
        diag,
    );
    let logs = kubectl(&["logs", &format!("job/{job}"), "-n", &app_ns]);
    let report = report_from_logs(&logs)
        .unwrap_or_else(|| panic!("no --json report in the bots log:\n{logs}\n{}", diag()));
    println!("bots report: {report}");
    assert!(done, "the bots Job failed:\n{logs}\n{}", diag());
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("players"), BOT_PLAYERS as u64, "{report}");
    assert_eq!(n("connected"), BOT_PLAYERS as u64, "every player connected: {report}");
    assert_eq!(n("entities_lost"), 0, "{report}");
    assert_eq!(n("entities_duplicated"), 0, "{report}");
    assert_eq!(n("reconnects"), 0, "no player stream broke, upgrade included: {report}");
    assert!(n("handoffs_seen") > 0, "bots crossed territories: {report}");
    assert!(n("gate_transfers") > 0, "ships crossed the gate to Pyro: {report}");
    assert_eq!(n("gate_unfollowed"), 0, "every jumping player followed: {report}");
    assert_eq!(n("gate_seen_in_both"), 0, "no ship in both systems: {report}");
    assert_eq!(n("gate_gaps_over_bound"), 0, "{report}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{report}");
    // The replicants agree: what left Stanton arrived in Pyro, nothing still in transit.
    if let Some(p) = &prometheus {
        let (departed, arrived) = poll(
            "gate transfers departed (Stanton) = arrived (Pyro), none in transit, via PromQL",
            Duration::from_secs(30),
            EVERY,
            || {
                let d =
                    p.query_scalar(r#"sum(starmesh_gate_transfers_total{result="departed"})"#)?;
                let a =
                    p.query_scalar(r#"sum(starmesh_gate_transfers_total{result="arrived"})"#)?;
                let t = p.query_scalar("sum(starmesh_gate_in_transit_entities)")?;
                if d == a && d > 0.0 && t == 0.0 {
                    Ok((d, a))
                } else {
                    Err(format!("departed {d}, arrived {a}, in transit {t}"))
                }
            },
            diag,
        );
        println!("Prometheus: gate transfers departed {departed}, arrived {arrived}");
        assert!(departed >= n("gate_transfers") as f64, "{departed} < the bots' {report}");
    }

    // -- a second shard of Pyro; its gate peer follows the rule (the target's shard with
    // the same index, else round-robin: Stanton has one shard, so shard 0).
    let t_scale = Instant::now();
    kubectl(&["scale", &format!("serverlayout/{PYRO}"), "--replicas=2", "-n", &app_ns]);
    poll(
        "Pyro Ready=True with 2 shards",
        Duration::from_secs(300),
        EVERY,
        || layout_ready(&app_ns, PYRO, 2),
        diag,
    );
    poll(
        "Pyro shard 1 pods Ready",
        Duration::from_secs(60),
        EVERY,
        || shard_pods_ready(&app_ns, PYRO, 1),
        diag,
    );
    println!(
        "TIMING mesh: kubectl scale serverlayout/pyro --replicas=2 -> shard 1 Ready: {}",
        secs(t_scale.elapsed())
    );
    let stanton_rep =
        service_addr(&app_ns, &builders::replicant_name(STANTON, 0), "grpc").expect("svc");
    let (peer_shard, peer_rep, _) = gate_peer(&app_ns, PYRO, 1, STANTON).expect("shard 1 peer");
    assert_eq!((peer_shard, peer_rep), (0, stanton_rep), "Pyro shard 1 jumps to Stanton shard 0");
    println!(
        "{}",
        kubectl(&["get", "starsystems,serverlayouts,pods", "-n", &app_ns, "-o", "wide"])
    );
    drop(prometheus);
    drop(cleanup);
}
