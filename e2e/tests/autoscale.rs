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
//! Then a second ramp, with shard autoscaling on: bots gather at one station
//! (`--spawn-near`) until the players exceed `targetPlayersPerShard` and the operator
//! adds shard 1; once the gateways' mesh map shows it, new bots joining shard 0's gateway
//! are redirected to shard 1 (least loaded) and play there; everyone leaves, shard 1 is
//! marked draining and, empty, removed. Again no ship lost or duplicated and no reconnect.
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
use support::{
    apply_text, get_json, helm, kubectl, kubectl_raw, report_from_logs, secs, tool, tools,
    unique_suffix,
};

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
/// The second ramp: `RAMP_PLAYERS` > `SHARD_TARGET` needs a second shard.
const SHARD_TARGET: u32 = 20;
const SHARD_COOLDOWN_S: u32 = 20;
const RAMP_PLAYERS: usize = 30;
const RAMP_SECONDS: u64 = 240;
const RAMP_AT: &str = "ruin-station";
const LATE_PLAYERS: usize = 10;
const LATE_SECONDS: u64 = 40;

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

fn bots_job_yaml(
    name: &str,
    image: &str,
    pull: &str,
    gateway: &str,
    players: usize,
    seconds: u64,
    extra: &[&str],
) -> String {
    let extra: String = extra.iter().map(|a| format!(", \"{a}\"")).collect();
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
          args: [bots, --gateway, "{gateway}", -n, "{players}", --duration, "{seconds}s", --json{extra}]
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
        // Targets from a file Prometheus re-reads (a shard added later is scraped too).
        let sd = dir.path().join("targets.json");
        write_targets(&sd, targets);
        let config = format!(
            "global: {{scrape_interval: 2s, scrape_timeout: 1s}}\n\
             scrape_configs:\n  - job_name: starmesh\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 2s\n",
            sd.display()
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

fn write_targets(path: &Path, targets: &[String]) {
    let body = serde_json::json!([{ "targets": targets }]).to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write targets");
    std::fs::rename(&tmp, path).expect("swap targets");
}

impl Prometheus {
    fn set_targets(&self, targets: &[String]) {
        write_targets(&self._dir.path().join("targets.json"), targets);
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
    apply_text("default", &support::pv_yaml(&pv, &class, &dir, "autoscale"));
    cleanup.pvs.push(pv);
    // The second ramp's shard 1 needs a volume for its replicant too.
    let dir1 = std::env::temp_dir().join(format!("starmesh-e2e-as-pv1-{suffix}"));
    std::fs::create_dir_all(&dir1).expect("PV folder");
    std::os::unix::fs::chown(&dir1, Some(65532), Some(65532)).expect("chown PV folder");
    cleanup.dirs.push(dir1.clone());
    let pv1 = format!("starmesh-e2e-as1-{suffix}");
    apply_text("default", &support::pv_yaml(&pv1, &class, &dir1, "autoscale"));
    cleanup.pvs.push(pv1);
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
    let target0 = format!("{ip}:{}", builders::METRICS_PORT);
    let prom = Prometheus::start(std::slice::from_ref(&target0));
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
    let gateway0 = format!("{gw_ip}:{gw_port}");
    println!("bots join shard 0's gateway Service at {gateway0}");
    let bots = bots_job_yaml("bots", image, pull, &gateway0, BOT_PLAYERS, BOT_SECONDS, &[]);
    apply_text(&app_ns, &bots);

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
    bots_report(&app_ns, "bots", BOT_PLAYERS, BOT_SECONDS, &diag);

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

    second_ramp(&app_ns, &prom, &target0, image, pull, &gateway0, &diag);
    drop(prom);
    drop(cleanup);
}

/// Waits for the bots Job `job` to end and checks its report: every player connected,
/// nothing lost or duplicated, no reconnect (no forced disconnect), no violation.
fn bots_report(
    app_ns: &str,
    job: &str,
    players: usize,
    seconds: u64,
    diag: &dyn Fn() -> String,
) -> Value {
    let done = poll(
        &format!("bots Job {job} finished"),
        Duration::from_secs(seconds + 90),
        EVERY,
        || {
            let j = get_json(&["job", job, "-n", app_ns])?;
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
    let logs = kubectl(&["logs", &format!("job/{job}"), "-n", app_ns]);
    let report = report_from_logs(&logs)
        .unwrap_or_else(|| panic!("no --json report in the {job} log:\n{logs}\n{}", diag()));
    println!("{job} report: {report}");
    assert!(done, "the bots Job {job} failed:\n{logs}\n{}", diag());
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connected"), players as u64, "every player connected: {report}");
    assert_eq!(n("entities_lost"), 0, "{report}");
    assert_eq!(n("entities_duplicated"), 0, "{report}");
    assert_eq!(n("reconnects"), 0, "no forced disconnect: {report}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{report}");
    report
}

fn shard_status(st: &Value, index: i64) -> Option<Value> {
    st["shardStatuses"].as_array()?.iter().find(|s| s["index"] == index).cloned()
}

/// The last `placement:` line of shard 0's gateway, when it shows shard 1 with a known
/// player count (the gateway can place players there).
fn gateway_sees_shard_1(app_ns: &str) -> Result<String, String> {
    let out = kubectl_raw(&[
        "logs",
        "-n",
        app_ns,
        &format!("deploy/{}", builders::gateway_name(LAYOUT, 0)),
        "--tail=400",
    ]);
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains("placement: shard 0 of shards"))
        .ok_or("no placement line yet")?
        .to_string();
    let known = |i: u8| {
        line.split(&format!("{i}("))
            .nth(1)
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    };
    if known(0) && known(1) && !line.contains("draining") {
        Ok(line)
    } else {
        Err(format!("gateway of shard 0: {line}"))
    }
}

/// The second ramp (see the module comment): a shard added under load, new players placed
/// on it, then drained away and removed once empty.
fn second_ramp(
    app_ns: &str,
    prom: &Prometheus,
    target0: &str,
    image: &str,
    pull: &str,
    gateway0: &str,
    diag: &dyn Fn() -> String,
) {
    let patch = format!(
        r#"{{"spec":{{"shardAutoscaling":{{"minShards":1,"maxShards":2,"targetPlayersPerShard":{SHARD_TARGET},"cooldownSeconds":{SHARD_COOLDOWN_S}}}}}}}"#
    );
    kubectl(&[
        "patch",
        "-n",
        app_ns,
        &format!("serverlayout/{LAYOUT}"),
        "--type=merge",
        "-p",
        &patch,
    ]);
    let ramp = bots_job_yaml(
        "ramp",
        image,
        pull,
        gateway0,
        RAMP_PLAYERS,
        RAMP_SECONDS,
        &["--prefix", "ramp", "--spawn-near", RAMP_AT, "--speed", "1000000"],
    );
    apply_text(app_ns, &ramp);
    let t_ramp = Instant::now();
    let total = "sum(starmesh_players{system=\"pyro\"})";
    poll(
        &format!("more than targetPlayersPerShard {SHARD_TARGET} players through PromQL"),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || match prom.query_scalar(total)? {
            v if v > f64::from(SHARD_TARGET) => Ok(v),
            v => Err(format!("{total} = {v}")),
        },
        diag,
    );
    let t_threshold = Instant::now();
    poll(
        "shard 1 added (spec.shards 2) and its replicant ready",
        Duration::from_secs(180),
        EVERY,
        || {
            let l = get_json(&["serverlayout", LAYOUT, "-n", app_ns])?;
            let s1 = shard_status(&l["status"], 1)
                .ok_or_else(|| format!("no shard 1: spec.shards {}", l["spec"]["shards"]))?;
            if l["spec"]["shards"] == 2
                && s1["replicantReady"] == true
                && s1["gatewayReady"] == true
            {
                Ok(())
            } else {
                Err(format!("shard 1: {s1}"))
            }
        },
        diag,
    );
    let to_shard = t_threshold.elapsed();
    // Prometheus scrapes shard 1's replicant too.
    let sel = format!(
        "starmesh.dev/layout={LAYOUT},app.kubernetes.io/component=replicant,starmesh.dev/shard=1"
    );
    let ip1 = poll(
        "shard 1's replicant pod IP",
        Duration::from_secs(60),
        EVERY,
        || {
            let pods = get_json(&["pods", "-n", app_ns, "-l", &sel])?;
            pods["items"][0]["status"]["podIP"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("no pod IP: {}", pods["items"]))
        },
        diag,
    );
    prom.set_targets(&[target0.to_string(), format!("{ip1}:{}", builders::METRICS_PORT)]);
    let line = poll(
        "shard 0's gateway sees shard 1 with a player count (mesh map refreshed)",
        Duration::from_secs(150),
        EVERY,
        || gateway_sees_shard_1(app_ns),
        diag,
    );
    let to_placeable = t_threshold.elapsed();
    println!("gateway of shard 0: {line}");
    assert!(
        t_ramp.elapsed() < Duration::from_secs(RAMP_SECONDS - LATE_SECONDS / 2),
        "the ramp's bots must still play when the late ones join (RAMP_SECONDS too short)"
    );
    let late = bots_job_yaml(
        "late",
        image,
        pull,
        gateway0,
        LATE_PLAYERS,
        LATE_SECONDS,
        &["--prefix", "late"],
    );
    apply_text(app_ns, &late);
    poll(
        "the late players play in shard 1",
        Duration::from_secs(60),
        EVERY,
        || {
            let st = layout_status(app_ns)?;
            let s1 = shard_status(&st, 1).ok_or("no shard 1")?;
            match s1["players"].as_i64() {
                Some(n) if n > 0 => Ok(n),
                _ => Err(format!("shard 1: {s1}")),
            }
        },
        diag,
    );
    let to_serving = t_threshold.elapsed();
    println!(
        "TIMING autoscale: players above targetPlayersPerShard -> shard 1 ready: {}; -> in the gateways' map: {}; -> new players served in shard 1: {}",
        secs(to_shard),
        secs(to_placeable),
        secs(to_serving)
    );
    let late = bots_report(app_ns, "late", LATE_PLAYERS, LATE_SECONDS, diag);
    assert_eq!(
        late["redirects"].as_u64(),
        Some(LATE_PLAYERS as u64),
        "every late player redirected to the least-loaded shard 1: {late}"
    );
    let ramp = bots_report(app_ns, "ramp", RAMP_PLAYERS, RAMP_SECONDS, diag);
    assert_eq!(ramp["redirects"].as_u64(), Some(0), "the ramp played in shard 0: {ramp}");

    // Everyone gone: shard 1 drained (marked, no new player), then removed.
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
        "shard 1 drained and removed (spec.shards 1, no shard-1 objects)",
        Duration::from_secs(u64::from(SHARD_COOLDOWN_S) * 6 + 120),
        EVERY,
        || {
            let l = get_json(&["serverlayout", LAYOUT, "-n", app_ns])?;
            let sel = format!("starmesh.dev/layout={LAYOUT},starmesh.dev/shard=1");
            let left = get_json(&["statefulsets,deployments,services", "-n", app_ns, "-l", &sel])?;
            let left = left["items"].as_array().map_or(0, Vec::len);
            if l["spec"]["shards"] == 1 && left == 0 && l["status"]["drainingShard"].is_null() {
                Ok(())
            } else {
                Err(format!(
                    "spec.shards {}, drainingShard {}, {left} shard-1 objects",
                    l["spec"]["shards"], l["status"]["drainingShard"]
                ))
            }
        },
        diag,
    );
    let to_removed = t_empty.elapsed();
    println!(
        "TIMING autoscale: empty -> shard 1 drained and removed (cooldown {SHARD_COOLDOWN_S} s): {}",
        secs(to_removed)
    );
    let events = kubectl(&["get", "events", "-n", app_ns]);
    for reason in ["ShardsUp", "ShardDraining", "ShardsDown"] {
        assert!(events.contains(reason), "a {reason} Event:\n{events}");
    }
}
