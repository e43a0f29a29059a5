//! Autoscaling in a real cluster, with a real Prometheus as the player-count source: Helm
//! installs the operator; Pyro is served by a dynamic layout with low thresholds; once it
//! runs, a Prometheus (Debian's, in the cluster's network namespace) scrapes the replicant
//! and the layout is switched to `playerCounts.source: Prometheus`. A bots Job ramps
//! players in until a cell splits and a game server is added and serves a cell with
//! players; the bots leave and everything merges back to the base territories and
//! `minServers`, the extra server drained (Admin `Drain`) before its pod went. The bots
//! report no ship lost or duplicated and no reconnect (no forced disconnect). Prints the
//! time from threshold crossed to new capacity serving players, and from empty to drained.
//!
//! Needs a FULL cluster with both images loaded (see `e2e/run-cluster-tests.sh`). Without
//! it FAILS, never skips.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use starmesh_e2e::{poll, repo_root, run};
use starmesh_operator::builders;
use support::{get_json, helm, kubectl, kubectl_raw, secs, tool, tools, unique_suffix};

mod support;

const RELEASE: &str = "starmesh";
const LAYOUT: &str = "pyro";
const EVERY: Duration = Duration::from_millis(1000);
const BOT_PLAYERS: usize = 30;
const BOT_SECONDS: u64 = 100;
const SPLIT_ABOVE: u32 = 6;
const MERGE_BELOW: u32 = 3;
const PER_SERVER: u32 = 10;
const MIN_SERVERS: u32 = 1;
const MAX_SERVERS: u32 = 3;
const COOLDOWN_S: u32 = 20;

fn apply_text(ns: &str, text: &str) {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(f.path(), text).expect("write manifest");
    kubectl(&["apply", "-n", ns, "-f", f.path().to_str().expect("utf-8")]);
}

fn layout_yaml(class: &str) -> String {
    format!(
        r#"apiVersion: starmesh.dev/v1alpha1
kind: ServerLayout
metadata: {{name: {LAYOUT}}}
spec:
  systemRef: pyro
  mode: Dynamic
  dynamic:
    minServers: {MIN_SERVERS}
    maxServers: {MAX_SERVERS}
    targetPlayersPerServer: {PER_SERVER}
    splitAbovePlayers: {SPLIT_ABOVE}
    mergeBelowPlayers: {MERGE_BELOW}
    cooldownSeconds: {COOLDOWN_S}
  persistence:
    backend: embedded
    embedded: {{volumeSize: 1Gi, storageClassName: {class}}}
  resources:
    server:
      requests: {{cpu: 50m, memory: 64Mi}}
      limits: {{cpu: "1", memory: 256Mi}}
"#
    )
}

fn pv_yaml(name: &str, class: &str, dir: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
  labels: {{starmesh-e2e: autoscale}}
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

struct Cleanup {
    release_ns: String,
    app_ns: String,
    pvs: Vec<String>,
    dirs: Vec<std::path::PathBuf>,
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

fn diagnose(app_ns: &str, release_ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-n", app_ns, "get", "serverlayouts,sts,deploy,pods,pvc,jobs", "-o", "wide"],
        vec!["-n", app_ns, "get", "serverlayouts", "-o", "jsonpath={.items[*].status}"],
        vec!["-n", app_ns, "get", "events", "--sort-by=.lastTimestamp"],
        vec!["-n", app_ns, "logs", "-l", "starmesh.dev/layout", "--tail=20", "--prefix"],
        vec!["-n", app_ns, "logs", "-l", "job-name", "--tail=40", "--prefix"],
        vec!["-n", release_ns, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=60"],
    ] {
        let out = kubectl_raw(&args);
        s.push_str(&format!("\n--- kubectl {} ---\n{}{}", args.join(" "), out.stdout, out.stderr));
    }
    s
}

/// A real Prometheus in the cluster's network namespace scraping `targets`, on the node IP
/// (reachable from the pods and from the test); stopped on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let netns = std::env::var("STARMESH_NETNS_PATH").expect(
            "STARMESH_NETNS_PATH (the harness's env file): Prometheus runs in the cluster's netns",
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
        let listen = format!("{node_ip}:19091");
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
        p
    }

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

fn layout_status(app_ns: &str) -> Result<Value, String> {
    let l = get_json(&["serverlayout", LAYOUT, "-n", app_ns])?;
    Ok(l["status"].clone())
}

fn shard0(st: &Value) -> Result<Value, String> {
    st["shardStatuses"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["index"] == 0))
        .cloned()
        .ok_or_else(|| format!("no shard 0 in {st}"))
}

/// Ready server pods of shard 0 (not being deleted).
fn server_pods(app_ns: &str) -> Result<Vec<String>, String> {
    let sel = format!("starmesh.dev/layout={LAYOUT},app.kubernetes.io/component=server");
    let pods = get_json(&["pods", "-n", app_ns, "-l", &sel])?;
    Ok(pods["items"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect())
}

fn sts_replicas(app_ns: &str) -> Result<i64, String> {
    let sts = get_json(&["statefulset", &builders::servers_name(LAYOUT, 0), "-n", app_ns])?;
    sts["spec"]["replicas"].as_i64().ok_or_else(|| "no replicas".into())
}

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

#[test]
fn pyro_splits_adds_a_server_under_load_and_merges_back_when_empty() {
    let t = tools();
    assert!(
        std::env::var("STARMESH_CLUSTER_HAS_NODE").as_deref() != Ok("0"),
        "THIS TEST NEEDS A NODE: boot a full cluster (e2e/run-cluster-tests.sh)"
    );
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "the cluster in {} has no node", t.kubeconfig.display());
    let suffix = unique_suffix();
    let release_ns = format!("sm-as-op-{suffix}");
    let app_ns = format!("sm-as-{suffix}");
    let class = format!("starmesh-e2e-as-{suffix}");
    let mut cleanup = Cleanup {
        release_ns: release_ns.clone(),
        app_ns: app_ns.clone(),
        pvs: Vec::new(),
        dirs: Vec::new(),
    };
    let diag = || diagnose(&app_ns, &release_ns);

    // -- the operator, in-cluster.
    let chart = repo_root().join("charts/starmesh");
    let chart = chart.to_str().expect("utf-8");
    let mut args =
        vec!["install", RELEASE, chart, "-n", &release_ns, "--create-namespace", "--wait"];
    args.extend_from_slice(&["--timeout", "180s"]);
    let tag = std::env::var("STARMESH_E2E_IMAGE_TAG").unwrap_or_default();
    let tag_args = [format!("image.tag={tag}"), format!("nodeImage.tag={tag}")];
    if !tag.is_empty() {
        for a in &tag_args {
            args.extend_from_slice(&["--set", a]);
        }
    }
    helm(&args);

    // -- storage for the replicant, Pyro with a dynamic layout.
    let dir = std::env::temp_dir().join(format!("starmesh-e2e-as-pv-{suffix}"));
    std::fs::create_dir_all(&dir).expect("PV folder");
    std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
    cleanup.dirs.push(dir.clone());
    let pv = format!("starmesh-e2e-as-{suffix}");
    apply_text("default", &pv_yaml(&pv, &class, &dir));
    cleanup.pvs.push(pv);
    kubectl(&["create", "namespace", &app_ns]);
    let pyro = repo_root().join("manifests/examples/pyro.yaml");
    kubectl(&["apply", "-n", &app_ns, "-f", pyro.to_str().expect("utf-8")]);
    apply_text(&app_ns, &layout_yaml(&class));
    let bases = poll(
        "Pyro running: replicant ready, cells in the status, minServers servers",
        Duration::from_secs(300),
        EVERY,
        || {
            let s = shard0(&layout_status(&app_ns)?)?;
            let cells = s["cells"].as_array().map_or(0, Vec::len);
            if s["replicantReady"] != true || cells == 0 {
                return Err(format!("shard 0: {s}"));
            }
            let pods = server_pods(&app_ns)?;
            if pods.len() != MIN_SERVERS as usize {
                return Err(format!("server pods {pods:?}"));
            }
            Ok(cells)
        },
        diag,
    );
    println!("Pyro runs with {bases} base cells and {MIN_SERVERS} server(s)");

    // -- Prometheus scraping the replicant; the layout reads its counts from it.
    let sel = format!("starmesh.dev/layout={LAYOUT},app.kubernetes.io/component=replicant");
    let pods = get_json(&["pods", "-n", &app_ns, "-l", &sel]).expect("replicant pod");
    let ip = pods["items"][0]["status"]["podIP"].as_str().expect("replicant pod IP").to_string();
    let prom = Prometheus::start(&[format!("{ip}:{}", builders::METRICS_PORT)]);
    let patch = format!(
        r#"{{"spec":{{"playerCounts":{{"source":"Prometheus","prometheus":{{"url":"{}"}}}}}}}}"#,
        prom.url
    );
    kubectl(&[
        "patch",
        "-n",
        &app_ns,
        &format!("serverlayout/{LAYOUT}"),
        "--type=merge",
        "-p",
        &patch,
    ]);

    // -- bots ramp in.
    let gateway_svc =
        get_json(&["service", &builders::gateway_name(LAYOUT, 0), "-n", &app_ns]).expect("gateway");
    let gw_ip = gateway_svc["spec"]["clusterIP"].as_str().expect("gateway cluster IP");
    let gw_port = gateway_svc["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "game"))
        .and_then(|p| p["port"].as_i64())
        .expect("game port");
    let sts = get_json(&["statefulset", &builders::replicant_name(LAYOUT, 0), "-n", &app_ns])
        .expect("replicant StatefulSet");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().expect("image");
    let pull = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
    apply_text(&app_ns, &bots_job_yaml("bots", image, pull, &format!("{gw_ip}:{gw_port}")));

    let most = "max(starmesh_players{system=\"pyro\"})";
    poll(
        &format!("a cell above splitAbovePlayers {SPLIT_ABOVE} through PromQL"),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || match prom.query_scalar(most)? {
            v if v > f64::from(SPLIT_ABOVE) => Ok(v),
            v => Err(format!("{most} = {v}")),
        },
        diag,
    );
    let t_threshold = Instant::now();
    let first_server = format!("{}-0", builders::servers_name(LAYOUT, 0));
    let (new_server, cells) = poll(
        "a split, and a new game server owning a cell with players",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let s = shard0(&layout_status(&app_ns)?)?;
            let cells = s["cells"].as_array().ok_or("no cells")?.clone();
            if cells.len() <= bases {
                return Err(format!("no split yet: {} cells", cells.len()));
            }
            let ready = server_pods(&app_ns)?;
            cells
                .iter()
                .find(|c| {
                    let owner = c["server"].as_str().unwrap_or_default();
                    owner != first_server
                        && ready.iter().any(|p| p == owner)
                        && c["players"].as_i64().unwrap_or(0) > 0
                })
                .map(|c| (c["server"].as_str().unwrap_or_default().to_string(), cells.len()))
                .ok_or_else(|| format!("no cell with players on a new server: {cells:?}"))
        },
        diag,
    );
    let to_capacity = t_threshold.elapsed();
    println!(
        "TIMING autoscale: threshold crossed -> new capacity serving players ({new_server}, {cells} cells): {}",
        secs(to_capacity)
    );
    let events = kubectl(&["get", "events", "-n", &app_ns, "--field-selector", "reason=CellSplit"]);
    assert!(events.contains("splitAbovePlayers"), "a CellSplit Event with its numbers:\n{events}");

    // -- the bots finish: nothing lost, duplicated or disconnected.
    let done = poll(
        "bots Job finished",
        Duration::from_secs(BOT_SECONDS + 90),
        EVERY,
        || {
            let j = get_json(&["job", "bots", "-n", &app_ns])?;
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
    let logs = kubectl(&["logs", "job/bots", "-n", &app_ns]);
    let report = report_from_logs(&logs)
        .unwrap_or_else(|| panic!("no --json report in the bots log:\n{logs}\n{}", diag()));
    println!("bots report: {report}");
    assert!(done, "the bots Job failed:\n{logs}\n{}", diag());
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connected"), BOT_PLAYERS as u64, "every player connected: {report}");
    assert_eq!(n("entities_lost"), 0, "{report}");
    assert_eq!(n("entities_duplicated"), 0, "{report}");
    assert_eq!(n("reconnects"), 0, "no forced disconnect: {report}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{report}");

    // -- empty: merges back to the base cells and minServers, drained before deleted.
    let total = "sum(starmesh_players{system=\"pyro\"})";
    poll(
        "no player left through PromQL",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || match prom.query_scalar(total)? {
            0.0 => Ok(()),
            v => Err(format!("{total} = {v}")),
        },
        diag,
    );
    let t_empty = Instant::now();
    poll(
        "back to the base cells and minServers, the extra servers gone",
        Duration::from_secs(u64::from(COOLDOWN_S) * 12 + 120),
        EVERY,
        || {
            let s = shard0(&layout_status(&app_ns)?)?;
            let cells = s["cells"].as_array().map_or(0, Vec::len);
            let replicas = sts_replicas(&app_ns)?;
            let sel = format!("starmesh.dev/layout={LAYOUT},app.kubernetes.io/component=server");
            let pods = get_json(&["pods", "-n", &app_ns, "-l", &sel])?;
            let pods = pods["items"].as_array().map_or(0, Vec::len);
            if cells == bases && replicas == i64::from(MIN_SERVERS) && pods == MIN_SERVERS as usize
            {
                Ok(())
            } else {
                Err(format!("cells {cells}/{bases}, replicas {replicas}, server pods {pods}"))
            }
        },
        diag,
    );
    let to_drained = t_empty.elapsed();
    println!(
        "TIMING autoscale: empty -> merged back and drained to {MIN_SERVERS} server(s) (cooldown {COOLDOWN_S} s): {}",
        secs(to_drained)
    );
    let events = kubectl(&["get", "events", "-n", &app_ns]);
    for reason in ["CellsMerged", "ServersUp", "ServersDown", "ServerDrained"] {
        assert!(events.contains(reason), "a {reason} Event:\n{events}");
    }
    drop(prom);
    drop(cleanup);
}
