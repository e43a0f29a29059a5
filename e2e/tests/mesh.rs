//! The mesh really runs in the cluster: Helm installs the operator, Stanton is applied
//! with hostPath PersistentVolumes for the replicant's embedded store, the layout reaches
//! Ready=True with real node pods (replicant, six game servers, gateway), a bots Job plays
//! through the gateway Service, `kubectl get serverlayouts` shows live PLAYERS, a game
//! server pod is deleted mid-run without losing a ship or a player, and scaling to two
//! shards brings shard 1 up.
//!
//! Needs a FULL cluster with both images loaded (`e2e/run-cluster-tests.sh` does it; see
//! `tests/helm.rs` for running by hand). Without one it FAILS, never skips.
//!
//! The PersistentVolumes are hostPath folders on the node, i.e. on this machine (the
//! harness's kubelet shares the host's filesystem); the test creates them owned by the
//! pods' uid, and removes them. Against another cluster (kind) set
//! `STARMESH_E2E_STORAGE_CLASS` to a class with a provisioner instead.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use starmesh_e2e::{poll, repo_root, run};
use starmesh_operator::builders;
use support::{get_json, helm, kubectl, kubectl_raw, secs, tool, tools, unique_suffix};

mod support;

const RELEASE: &str = "starmesh";
const LAYOUT: &str = "stanton";
const EVERY: Duration = Duration::from_millis(1000);
const BOT_PLAYERS: usize = 50;
/// Long enough to watch PLAYERS, delete a server pod and see it replaced.
const BOT_SECONDS: u64 = 75;

fn apply_text(ns: &str, text: &str) {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(f.path(), text).expect("write manifest");
    kubectl(&["apply", "-n", ns, "-f", f.path().to_str().expect("utf-8")]);
}

/// What a failed wait prints: the layout, the pods, their descriptions and logs, the
/// operator's logs.
fn diagnose(app_ns: &str, release_ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-n", app_ns, "get", "serverlayouts,sts,deploy,pods,pvc,jobs", "-o", "wide"],
        vec!["get", "pv"],
        vec!["-n", app_ns, "get", "serverlayout", LAYOUT, "-o", "jsonpath={.status}"],
        vec!["-n", app_ns, "describe", "pods"],
        vec!["-n", app_ns, "logs", "-l", "starmesh.dev/layout", "--tail=30", "--prefix"],
        vec!["-n", app_ns, "logs", "-l", "job-name", "--tail=60", "--prefix"],
        vec!["-n", release_ns, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=30"],
    ] {
        let out = kubectl_raw(&args);
        s.push_str(&format!("\n--- kubectl {} ---\n{}{}", args.join(" "), out.stdout, out.stderr));
    }
    s
}

/// Removes what the test created, pass or fail: namespaces (after dropping the layout's
/// finalizer if the operator is gone), the release, the CRDs, the PVs and their folders.
struct Cleanup {
    release_ns: String,
    app_ns: String,
    pvs: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kubectl_raw(&[
                "patch",
                "-n",
                &self.app_ns,
                &format!("serverlayout/{LAYOUT}"),
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
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
fn layout_ready(app_ns: &str, shards: i64) -> Result<Value, String> {
    let l = get_json(&["serverlayout", LAYOUT, "-n", app_ns])?;
    let st = &l["status"];
    if st["observedGeneration"] != l["metadata"]["generation"] {
        return Err(format!("not observed yet: {st}"));
    }
    let ready = condition(&l, "Ready");
    if ready.as_deref() != Some("True")
        || st["shards"].as_i64() != Some(shards)
        || st["readyShards"].as_i64() != Some(shards)
    {
        return Err(format!("Ready={ready:?} status {st}"));
    }
    Ok(l)
}

/// Every pod of shard `shard` Running and Ready: 1 replicant, `servers` servers, 1 gateway.
fn shard_pods_ready(app_ns: &str, shard: i32, servers: usize) -> Result<(), String> {
    let pods = get_json(&["pods", "-n", app_ns, "-l", &format!("starmesh.dev/shard={shard}")])?;
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
    if counts == [1, servers, 1] {
        Ok(())
    } else {
        Err(format!("ready replicant/servers/gateway pods {counts:?}, want [1, {servers}, 1]"))
    }
}

/// The PLAYERS column of `kubectl get serverlayouts` for the layout, parsed from the text
/// table an SRE reads.
fn players_column(app_ns: &str) -> Result<i64, String> {
    let out = kubectl_raw(&["get", "serverlayouts", "-n", app_ns]);
    if !out.ok {
        return Err(out.stderr);
    }
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines.next().ok_or("no header")?.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "PLAYERS").ok_or("no PLAYERS column")?;
    let row = lines.find(|l| l.split_whitespace().next() == Some(LAYOUT)).ok_or("no row")?;
    let v = row.split_whitespace().nth(col).ok_or("short row")?;
    v.parse().map_err(|_| format!("PLAYERS {v:?} in\n{}", out.stdout))
}

fn pv_yaml(name: &str, class: &str, dir: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
  labels: {{starmesh-e2e: mesh}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: {class}
  hostPath: {{path: "{}", type: Directory}}
"#,
        dir.display()
    )
}

/// The bots Job: the node image, `starmesh bots` against the gateway Service's cluster IP.
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
          args: [bots, --gateway, "{gateway}", -n, "{BOT_PLAYERS}", --duration, "{BOT_SECONDS}s", --json]
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

/// The first JSON object in the Job's log (the `--json` report; tracing goes to stderr,
/// which the log interleaves).
fn report_from_logs(logs: &str) -> Option<Value> {
    let mut search = 0;
    while let Some(i) = logs[search..].find('{') {
        let at = search + i;
        let mut it = serde_json::Deserializer::from_str(&logs[at..]).into_iter::<Value>();
        if let Some(Ok(v)) = it.next()
            && v.get("entities_lost").is_some()
        {
            return Some(v);
        }
        search = at + 1;
    }
    None
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

/// `IP:9100` of every pod of the layout (each role serves `/metrics` there).
fn metrics_targets(app_ns: &str) -> Vec<String> {
    let pods = get_json(&["pods", "-n", app_ns, "-l", &format!("starmesh.dev/layout={LAYOUT}")])
        .expect("list pods");
    pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str())
        .map(|ip| format!("{ip}:{}", builders::METRICS_PORT))
        .collect()
}

#[test]
fn stanton_runs_players_fly_and_a_server_pod_dies() {
    let t = tools();
    assert!(
        std::env::var("STARMESH_CLUSTER_HAS_NODE").as_deref() != Ok("0"),
        "THIS TEST NEEDS A NODE: boot a full cluster (e2e/run-cluster-tests.sh)"
    );
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "the cluster in {} has no node", t.kubeconfig.display());

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
    let mut args = vec![
        "install",
        RELEASE,
        chart.to_str().expect("utf-8"),
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
    helm(&args);
    println!("TIMING mesh: helm install --wait -> operator Ready: {}", secs(t0.elapsed()));

    // -- storage: one hostPath PV per shard (the harness has no provisioner).
    if make_pvs {
        for i in 0..2 {
            let dir = std::env::temp_dir().join(format!("starmesh-e2e-pv-{suffix}-{i}"));
            std::fs::create_dir_all(&dir).expect("PV folder");
            // The replicant runs as 65532; hostPath ignores fsGroup.
            std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
            cleanup.dirs.push(dir.clone());
            let name = format!("starmesh-e2e-{suffix}-{i}");
            apply_text("default", &pv_yaml(&name, &class, &dir));
            cleanup.pvs.push(name);
        }
    }

    // -- Stanton, with the test's storage class.
    kubectl(&["create", "namespace", &app_ns]);
    let examples = repo_root().join("manifests/examples");
    let system = examples.join("stanton.yaml");
    let layout = std::fs::read_to_string(examples.join("stanton-layout.yaml")).expect("layout");
    let embedded = "embedded: {volumeSize: 1Gi}";
    assert!(layout.contains(embedded), "stanton-layout.yaml changed its persistence line");
    let layout = layout
        .replace(embedded, &format!("embedded: {{volumeSize: 1Gi, storageClassName: {class}}}"));
    let t_apply = Instant::now();
    kubectl(&["apply", "-n", &app_ns, "-f", system.to_str().expect("utf-8")]);
    apply_text(&app_ns, &layout);
    let l = poll(
        "layout stanton Ready=True (1 shard)",
        Duration::from_secs(300),
        EVERY,
        || layout_ready(&app_ns, 1),
        diag,
    );
    let to_ready = t_apply.elapsed();
    let servers = l["spec"]["servers"].as_array().map_or(0, Vec::len);
    assert_eq!(servers, 6, "Stanton has six static servers");
    poll(
        "shard 0 pods Ready",
        Duration::from_secs(60),
        EVERY,
        || shard_pods_ready(&app_ns, 0, servers),
        diag,
    );
    println!(
        "TIMING mesh: kubectl apply Stanton -> Ready=True (1 shard, 8 pods): {}",
        secs(to_ready)
    );

    // -- bots through the gateway Service.
    let svc = get_json(&["service", &builders::gateway_name(LAYOUT, 0), "-n", &app_ns])
        .expect("gateway Service");
    let ip = svc["spec"]["clusterIP"].as_str().expect("clusterIP");
    let port = svc["spec"]["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "game"))
        .and_then(|p| p["port"].as_i64())
        .expect("game port");
    let sts = get_json(&["statefulset", &builders::replicant_name(LAYOUT, 0), "-n", &app_ns])
        .expect("replicant StatefulSet");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().expect("image");
    let pull = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
    let job = "bots";
    let prometheus = Prometheus::start(&metrics_targets(&app_ns));
    apply_text(&app_ns, &bots_job_yaml(job, image, pull, &format!("{ip}:{port}")));
    let t_job = Instant::now();

    // While they play, the SRE's table shows them.
    let players = poll(
        "PLAYERS > 0 in kubectl get serverlayouts",
        Duration::from_secs(50),
        EVERY,
        || match players_column(&app_ns)? {
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

    // A game server dies mid-run; its territories go to live servers at once.
    let victim = format!("{}-0", builders::servers_name(LAYOUT, 0));
    kubectl(&["delete", "pod", &victim, "-n", &app_ns, "--wait=false"]);
    let t_kill = Instant::now();
    poll(
        "the deleted server pod replaced and Ready",
        Duration::from_secs(90),
        EVERY,
        || shard_pods_ready(&app_ns, 0, servers),
        diag,
    );
    println!(
        "TIMING mesh: server pod deleted -> shard 0 all Ready again: {}",
        secs(t_kill.elapsed())
    );

    // The Job finishes: every player connected, no ship lost or duplicated.
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
    assert!(n("handoffs_seen") > 0, "bots crossed territories: {report}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{report}");

    // -- a second shard.
    let t_scale = Instant::now();
    kubectl(&["scale", &format!("serverlayout/{LAYOUT}"), "--replicas=2", "-n", &app_ns]);
    poll(
        "layout Ready=True with 2 shards",
        Duration::from_secs(300),
        EVERY,
        || layout_ready(&app_ns, 2),
        diag,
    );
    poll(
        "shard 1 pods Ready",
        Duration::from_secs(60),
        EVERY,
        || shard_pods_ready(&app_ns, 1, servers),
        diag,
    );
    println!(
        "TIMING mesh: kubectl scale --replicas=2 -> shard 1 Ready (Ready=True, 2 shards): {}",
        secs(t_scale.elapsed())
    );
    println!("{}", kubectl(&["get", "serverlayouts,pods", "-n", &app_ns, "-o", "wide"]));
    drop(prometheus);
    drop(cleanup);
}
