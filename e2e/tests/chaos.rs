//! Chaos under load, on the real cluster with bots playing: Stanton runs in the harness's
//! cluster with its replicant's embedded store on a small size-limited filesystem (a tmpfs
//! with `size=`, hostPath PersistentVolume), a bots Job plays through the gateway, and the
//! test injects one fault after another:
//!
//! 1. a game-server pod deleted;
//! 2. `kill -9` of the replicant's process (SIGKILL to its container task through the
//!    cluster's containerd: the kubelet restarts it, the world is read back from the store);
//! 3. `kill -9` of the active operator (the Lease holder's container);
//! 4. kube-apiserver killed and started again with the same arguments (`e2e/cluster/restart.sh`);
//! 5. etcd likewise;
//! 6. the store's volume filled (new players join while it is full): the replicant must
//!    say so (`/readyz` 503 "store unavailable", `starmesh_store_up` 0, a backlog), then
//!    commit its backlog once space is freed; a `kill -9` of the replicant right after
//!    proves the writes accepted while full reached the store.
//!
//! After each: the layout is Ready again, every pod of the shard Ready, the replicant ready,
//! every bot attached again (the replicant's `starmesh_players`: the bots reconnect on their
//! own), and the replicant holds as many entities as before (`starmesh_entities`, resident +
//! evicted) — none lost, none extra — and the operator still acts (a new layout is
//! observed, deleted and released). At the end the bots (stopped with SIGINT, as Ctrl-C)
//! report no ship lost and no entity duplicated, and deleting Stanton drains and releases it. The test prints a table: fault, recovery
//! time, entities before/after, lost — and asserts nothing was lost.
//!
//! Needs a FULL cluster booted by `e2e/cluster/up.sh` with the images loaded (the env file's
//! variables: `STARMESH_CLUSTER_WORKDIR`, `STARMESH_NETNS_PATH`, `STARMESH_CONTAINERD_SOCK`);
//! `e2e/run-cluster-tests.sh` does all of it. Without them it FAILS, never skips. Root: it
//! mounts the tmpfs and signals processes.

use std::{
    collections::BTreeMap,
    io::Write,
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
const OPERATOR: &str = "starmesh-operator";
const STANTON: &str = "stanton";
const EVERY: Duration = Duration::from_millis(500);
const BOT_PLAYERS: u64 = 30;
/// Players that join while the store's volume is full.
const FILL_PLAYERS: u64 = 40;
/// Longer than the whole fault sequence: the test stops the bots with SIGINT when done.
const BOT_SECONDS: u64 = 900;
/// km/s: fast enough to cross territories (handoffs) during the run.
const BOT_SPEED: u32 = 200_000;
/// The store's volume: small, so the test can fill it.
const VOLUME_MIB: u64 = 32;
/// Each fault must be recovered from within this.
const RECOVERY: Duration = Duration::from_secs(120);

/// The env file's variable, or a loud failure.
fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the env of a FULL cluster booted by \
             e2e/cluster/up.sh (`. WORKDIR/env`); e2e/run-cluster-tests.sh does it"
        )
    })
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    fault: String,
    recovery: Duration,
    before: u64,
    after: u64,
    /// What the fault itself showed (e.g. the replicant's `/readyz` while the volume was full).
    seen: String,
}

/// Entities missing after a fault, and entities that appeared from nowhere (duplicates):
/// `expected` is what must be there (the count before, plus players that joined since).
fn lost_and_extra(expected: u64, after: u64) -> (u64, u64) {
    (expected.saturating_sub(after), after.saturating_sub(expected))
}

fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<58} {:>10} {:>8} {:>8} {:>5} {:>5}  {}\n",
        "fault injected", "recovery", "before", "after", "lost", "extra", "observed"
    );
    for r in rows {
        let (lost, extra) = lost_and_extra(r.before, r.after);
        s.push_str(&format!(
            "{:<58} {:>10} {:>8} {:>8} {:>5} {:>5}  {}\n",
            r.fault,
            secs(r.recovery),
            r.before,
            r.after,
            lost,
            extra,
            r.seen
        ));
    }
    s
}

/// Sums the samples of `metric` in a Prometheus text exposition (`None` if absent).
fn metric_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        if name != metric {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

#[test]
fn metric_sum_adds_every_sample_of_one_metric() {
    let text = "# HELP starmesh_entities x\n\
                starmesh_entities{territory=\"a\",state=\"resident\"} 3\n\
                starmesh_entities{territory=\"b\",state=\"evicted\"} 4\n\
                starmesh_entities_other 100\n\
                starmesh_store_up 1\n";
    assert_eq!(metric_sum(text, "starmesh_entities"), Some(7.0));
    assert_eq!(metric_sum(text, "starmesh_store_up"), Some(1.0));
    assert_eq!(metric_sum(text, "starmesh_players"), None);
    assert_eq!(lost_and_extra(10, 9), (1, 0));
    assert_eq!(lost_and_extra(10, 12), (0, 2));
    assert_eq!(lost_and_extra(10, 10), (0, 0));
}

/// The cluster as the harness booted it: the netns (pods' IPs are reachable only inside)
/// and the containerd socket (to SIGKILL a container's process).
struct Harness {
    workdir: PathBuf,
    netns: String,
    containerd: String,
}

impl Harness {
    fn from_env() -> Harness {
        Harness {
            workdir: PathBuf::from(env("STARMESH_CLUSTER_WORKDIR")),
            netns: env("STARMESH_NETNS_PATH"),
            containerd: env("STARMESH_CONTAINERD_SOCK"),
        }
    }

    /// `curl URL` from inside the cluster's netns: (HTTP status, body).
    fn curl(&self, url: &str) -> Result<(u16, String), String> {
        let net = format!("--net={}", self.netns);
        let out = run(
            Path::new("nsenter"),
            &[&net, "--", "curl", "-sS", "--max-time", "3", "-w", "\n%{http_code}", url],
            &[],
        );
        if !out.ok {
            return Err(format!("curl {url}: {}", out.stderr.trim()));
        }
        let (body, code) = out.stdout.rsplit_once('\n').ok_or("no status line")?;
        Ok((code.trim().parse().map_err(|_| format!("status {code:?}"))?, body.to_string()))
    }

    /// Sends `signal` to a container's process (its containerd task).
    fn signal_container(&self, container_id: &str, signal: &str) {
        let out = run(
            Path::new("ctr"),
            &[
                "--address",
                &self.containerd,
                "-n",
                "k8s.io",
                "tasks",
                "kill",
                "--signal",
                signal,
                container_id,
            ],
            &[],
        );
        assert!(out.ok, "ctr tasks kill {signal} {container_id}: {}{}", out.stdout, out.stderr);
    }

    /// `e2e/cluster/restart.sh WORKDIR COMPONENT` with SIGKILL (a crash, then a start with
    /// the same arguments).
    fn restart(&self, component: &str) -> String {
        let script = repo_root().join("e2e/cluster/restart.sh");
        let w = self.workdir.to_str().expect("utf-8");
        let out = run(&script, &[w, component], &[("STARMESH_RESTART_SIGNAL", Path::new("KILL"))]);
        assert!(out.ok, "restart.sh {component} failed:\n{}{}", out.stdout, out.stderr);
        out.stdout.trim().to_string()
    }
}

/// A size-limited tmpfs for the replicant's store, owned by the pods' uid; unmounted on drop.
struct SmallVolume {
    dir: PathBuf,
}

impl SmallVolume {
    fn mount(dir: PathBuf) -> SmallVolume {
        std::fs::create_dir_all(&dir).expect("volume folder");
        let opts = format!("size={VOLUME_MIB}m,uid=65532,gid=65532,mode=0755");
        let out = run(
            Path::new("mount"),
            &["-t", "tmpfs", "-o", &opts, "starmesh-chaos", dir.to_str().expect("utf-8")],
            &[],
        );
        assert!(out.ok, "mount tmpfs on {}: {}", dir.display(), out.stderr);
        SmallVolume { dir }
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("chaos-filler")
    }

    /// Writes a file until the filesystem has no byte left (ENOSPC); returns its size.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.filler()).expect("filler file");
        let mut written = 0u64;
        for chunk in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
            let buf = vec![0xa5u8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler file");
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let d = self.dir.to_str().unwrap_or_default();
        let out = run(Path::new("umount"), &[d], &[]);
        if !out.ok {
            // A pod may still hold it a moment; down.sh unmounts what is under WORKDIR.
            run(Path::new("umount"), &["-l", d], &[]);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes what the test created, pass or fail.
struct Cleanup {
    release_ns: String,
    app_ns: String,
    pv: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The operator may be what failed: never let a finalizer hold the namespace.
            let names = kubectl_raw(&["get", "serverlayouts", "-n", &self.app_ns, "-o", "name"]);
            for l in names.stdout.lines() {
                kubectl_raw(&[
                    "patch",
                    "-n",
                    &self.app_ns,
                    l,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
        }
        kubectl_raw(&["delete", "namespace", &self.app_ns, "--timeout=120s"]);
        tool(&tools().helm, &["uninstall", RELEASE, "-n", &self.release_ns]);
        kubectl_raw(&["delete", "namespace", &self.release_ns, "--wait=false"]);
        kubectl_raw(&[
            "delete",
            "crd",
            "starsystems.starmesh.dev",
            "serverlayouts.starmesh.dev",
            "--timeout=60s",
        ]);
        kubectl_raw(&["delete", "pv", &self.pv, "--wait=false"]);
    }
}

fn diagnose(app_ns: &str, release_ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-n", app_ns, "get", "serverlayouts,sts,deploy,pods,pvc,jobs", "-o", "wide"],
        vec!["-n", app_ns, "get", "serverlayouts", "-o", "jsonpath={.items[*].status}"],
        vec!["-n", app_ns, "describe", "pods", "-l", "app.kubernetes.io/component=replicant"],
        vec!["-n", app_ns, "logs", "-l", "starmesh.dev/layout", "--tail=20", "--prefix"],
        vec!["-n", app_ns, "logs", "-l", "job-name", "--tail=30", "--prefix"],
        vec!["-n", release_ns, "get", "pods,lease", "-o", "wide"],
        vec!["-n", release_ns, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=20"],
    ] {
        let out = kubectl_raw(&args);
        s.push_str(&format!("\n--- kubectl {} ---\n{}{}", args.join(" "), out.stdout, out.stderr));
    }
    s
}

fn condition(l: &Value, ty: &str) -> Option<String> {
    l["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(String::from))
}

/// The layout Ready=True, observed at its generation, its one shard ready.
fn layout_ready(app_ns: &str) -> Result<(), String> {
    let l = get_json(&["serverlayout", STANTON, "-n", app_ns])?;
    let st = &l["status"];
    if st["observedGeneration"] != l["metadata"]["generation"] {
        return Err(format!("not observed yet: {st}"));
    }
    if condition(&l, "Ready").as_deref() != Some("True") || st["readyShards"].as_i64() != Some(1) {
        return Err(format!("status {st}"));
    }
    Ok(())
}

/// The shard's pods by component (replicant, server, gateway): every one Running, Ready and
/// not being deleted, as many servers as the StatefulSet asks for.
fn shard_pods_ready(app_ns: &str) -> Result<(), String> {
    let sts = get_json(&["statefulset", &builders::servers_name(STANTON, 0), "-n", app_ns])?;
    let servers = sts["spec"]["replicas"].as_u64().ok_or("servers StatefulSet: no replicas")?;
    let pods = get_json(&["pods", "-n", app_ns, "-l", &format!("starmesh.dev/layout={STANTON}")])?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for p in pods["items"].as_array().ok_or("no items")? {
        let ready = p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if ready && p["metadata"]["deletionTimestamp"].is_null() {
            let c = p["metadata"]["labels"]["app.kubernetes.io/component"].as_str().unwrap_or("");
            *counts.entry(c.to_string()).or_default() += 1;
        }
    }
    let want: BTreeMap<String, u64> = [("replicant", 1), ("server", servers), ("gateway", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if counts == want { Ok(()) } else { Err(format!("ready pods {counts:?}, want {want:?}")) }
}

/// A pod's first container: (pod IP, container id without the `containerd://` prefix,
/// restart count).
fn pod_container(ns: &str, pod: &str) -> Result<(String, String, i64), String> {
    let p = get_json(&["pod", pod, "-n", ns])?;
    let ip = p["status"]["podIP"].as_str().ok_or("no pod IP")?.to_string();
    let c = &p["status"]["containerStatuses"][0];
    let id = c["containerID"].as_str().ok_or("no container id")?;
    let id = id.split_once("://").map_or(id, |(_, id)| id).to_string();
    Ok((ip, id, c["restartCount"].as_i64().unwrap_or(0)))
}

/// What the replicant says about itself: `/readyz` and its metrics.
#[derive(Debug, Clone)]
struct ReplicantView {
    ready: bool,
    readyz: String,
    entities: u64,
    players: u64,
    store_up: f64,
    backlog: f64,
}

fn replicant_view(h: &Harness, app_ns: &str) -> Result<ReplicantView, String> {
    let pod = format!("{}-0", builders::replicant_name(STANTON, 0));
    let (ip, _, _) = pod_container(app_ns, &pod)?;
    let base = format!("http://{ip}:{}", builders::METRICS_PORT);
    let (code, readyz) = h.curl(&format!("{base}/readyz"))?;
    let (mcode, metrics) = h.curl(&format!("{base}/metrics"))?;
    if mcode != 200 {
        return Err(format!("/metrics: HTTP {mcode}"));
    }
    let get = |m: &str| metric_sum(&metrics, m);
    Ok(ReplicantView {
        ready: code == 200,
        readyz: readyz.trim().to_string(),
        entities: get("starmesh_entities").unwrap_or(0.0) as u64,
        players: get("starmesh_players").unwrap_or(0.0) as u64,
        store_up: get("starmesh_store_up").ok_or("no starmesh_store_up")?,
        backlog: get("starmesh_store_backlog_entities").unwrap_or(0.0),
    })
}

/// Recovered: layout Ready, every shard pod Ready, the replicant ready with its store up
/// and no backlog, and `players` bots attached again. Returns the replicant's view.
fn recovered(h: &Harness, app_ns: &str, players: u64) -> Result<ReplicantView, String> {
    layout_ready(app_ns)?;
    shard_pods_ready(app_ns)?;
    let v = replicant_view(h, app_ns)?;
    if !v.ready || v.store_up != 1.0 || v.backlog != 0.0 {
        return Err(format!("replicant not recovered: {v:?}"));
    }
    if v.players != players {
        return Err(format!("{} players attached, want {players}: {v:?}", v.players));
    }
    Ok(v)
}

fn bots_job_yaml(
    name: &str,
    image: &str,
    pull: &str,
    gateway: &str,
    n: u64,
    prefix: &str,
    seconds: u64,
) -> String {
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
          args: [bots, --gateway, "{gateway}", -n, "{n}", --prefix, "{prefix}",
                 --duration, "{seconds}s", --speed, "{BOT_SPEED}", --json]
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

/// The Job's pod (the one not being deleted).
fn job_pod(ns: &str, job: &str) -> Result<String, String> {
    let pods = get_json(&["pods", "-n", ns, "-l", &format!("job-name={job}")])?;
    pods["items"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["metadata"]["deletionTimestamp"].is_null()))
        .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
        .ok_or_else(|| format!("no pod of job {job}"))
}

/// Waits for the Job to end and returns the bots' `--json` report (asserting it succeeded).
fn bots_report(ns: &str, job: &str, diag: &dyn Fn() -> String) -> Value {
    let ok = poll(
        &format!("bots Job {job} finished"),
        Duration::from_secs(60),
        EVERY,
        || {
            let j = get_json(&["job", job, "-n", ns])?;
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
    let logs = kubectl(&["logs", &format!("job/{job}"), "-n", ns]);
    let report = report_from_logs(&logs)
        .unwrap_or_else(|| panic!("no --json report in the {job} log:\n{logs}\n{}", diag()));
    assert!(ok, "bots Job {job} failed (report {report}):\n{logs}");
    report
}

/// RFC 3339 UTC with microseconds, as the API server writes a Lease's `renewTime`.
fn now_rfc3339() -> String {
    let out = run(Path::new("date"), &["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"], &[]);
    assert!(out.ok, "date: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// The operator's Lease: held by a Ready operator pod and renewed after `since`.
fn lease_renewed_by_live_leader(ns: &str, since: &str) -> Result<String, String> {
    let lease = get_json(&["lease", OPERATOR, "-n", ns])?;
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string();
    let renew = lease["spec"]["renewTime"].as_str().unwrap_or_default();
    // Same format and zone: the strings order as the times do.
    if renew <= since {
        return Err(format!(
            "Lease (holder {holder:?}) not renewed since {since} (renewTime {renew})"
        ));
    }
    let p = get_json(&["pod", &holder, "-n", ns])?;
    let ready = p["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    if ready { Ok(holder) } else { Err(format!("Lease holder {holder} is not Ready")) }
}

/// The operator still acts on ServerLayouts: a new layout naming a StarSystem that does not
/// exist gets its status (observed, Valid=False) and, deleted, is released (finalizer)
/// and gone. A stale watch (the operator's view frozen after an API fault) fails here.
/// Returns how long it took.
fn operator_responds(
    app_ns: &str,
    layout_text: &str,
    name: &str,
    diag: &dyn Fn() -> String,
) -> Duration {
    let t0 = Instant::now();
    let probe = layout_text
        .replacen(&format!("name: {STANTON}"), &format!("name: {name}"), 1)
        .replacen(&format!("systemRef: {STANTON}"), "systemRef: chaos-nowhere", 1);
    assert!(probe.contains(name) && probe.contains("chaos-nowhere"), "probe layout:\n{probe}");
    apply_text(app_ns, &probe);
    poll(
        &format!("the operator to observe the new layout {name} (Valid=False, no such system)"),
        RECOVERY,
        EVERY,
        || {
            let l = get_json(&["serverlayout", name, "-n", app_ns])?;
            if l["status"]["observedGeneration"] == l["metadata"]["generation"]
                && condition(&l, "Valid").as_deref() == Some("False")
            {
                Ok(())
            } else {
                Err(format!("status {}", l["status"]))
            }
        },
        diag,
    );
    kubectl(&["delete", "serverlayout", name, "-n", app_ns, "--wait=false"]);
    poll(
        &format!("the operator to release the deleted layout {name}"),
        RECOVERY,
        EVERY,
        || match get_json(&["serverlayout", name, "-n", app_ns]) {
            Err(e) if e.contains("NotFound") => Ok(()),
            Err(e) => Err(e),
            Ok(l) => Err(format!("still there: finalizers {}", l["metadata"]["finalizers"])),
        },
        diag,
    );
    t0.elapsed()
}

#[test]
fn faults_one_after_another_under_load_lose_nothing() {
    let started = Instant::now();
    let t = tools();
    assert!(
        std::env::var("STARMESH_CLUSTER_HAS_NODE").as_deref() == Ok("1"),
        "THIS TEST NEEDS A FULL CLUSTER booted by e2e/cluster/up.sh (. WORKDIR/env): \
         e2e/run-cluster-tests.sh"
    );
    let h = Harness::from_env();
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "the cluster in {} has no node", t.kubeconfig.display());

    let suffix = unique_suffix();
    let release_ns = format!("sm-chaos-op-{suffix}");
    let app_ns = format!("sm-chaos-{suffix}");
    let class = format!("starmesh-chaos-{suffix}");
    // Under WORKDIR: down.sh unmounts it should the test not get to.
    let volume = SmallVolume::mount(h.workdir.join(format!("chaos-store-{suffix}")));
    let cleanup = Cleanup {
        release_ns: release_ns.clone(),
        app_ns: app_ns.clone(),
        pv: format!("starmesh-chaos-{suffix}"),
    };
    let diag = || diagnose(&app_ns, &release_ns);

    // -- the operator, Stanton on the small volume, bots playing.
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
    helm(&args);
    apply_text("default", &support::pv_yaml(&cleanup.pv, &class, &volume.dir, "chaos"));
    kubectl(&["create", "namespace", &app_ns]);
    let examples = repo_root().join("manifests/examples");
    kubectl(&[
        "apply",
        "-n",
        &app_ns,
        "-f",
        examples.join("stanton.yaml").to_str().expect("utf-8"),
    ]);
    let layout = std::fs::read_to_string(examples.join("stanton-layout.yaml")).expect("layout");
    let embedded = "embedded: {volumeSize: 1Gi}";
    assert!(layout.contains(embedded), "stanton-layout.yaml changed its persistence line");
    let layout_text = layout
        .replace(embedded, &format!("embedded: {{volumeSize: 1Gi, storageClassName: {class}}}"));
    apply_text(&app_ns, &layout_text);
    poll("Stanton Ready", Duration::from_secs(240), EVERY, || layout_ready(&app_ns), diag);
    poll(
        "Stanton's pods Ready",
        Duration::from_secs(60),
        EVERY,
        || shard_pods_ready(&app_ns),
        diag,
    );

    let gateway = {
        let svc = get_json(&["service", &builders::gateway_name(STANTON, 0), "-n", &app_ns])
            .expect("gateway Service");
        let ip = svc["spec"]["clusterIP"].as_str().expect("clusterIP").to_string();
        let port = svc["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "game"))
            .and_then(|p| p["port"].as_i64())
            .expect("game port");
        format!("{ip}:{port}")
    };
    let sts = get_json(&["statefulset", &builders::replicant_name(STANTON, 0), "-n", &app_ns])
        .expect("replicant StatefulSet");
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().expect("image").to_string();
    let pull = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent").to_string();
    apply_text(
        &app_ns,
        &bots_job_yaml("bots", &image, &pull, &gateway, BOT_PLAYERS, "bot", BOT_SECONDS),
    );
    let mut players = BOT_PLAYERS;
    let base = poll(
        "every bot attached, the replicant ready",
        Duration::from_secs(90),
        EVERY,
        || recovered(&h, &app_ns, players),
        diag,
    );
    println!(
        "TIMING chaos: setup (helm install, Stanton Ready, bots playing): {}",
        secs(started.elapsed())
    );
    println!("chaos: baseline {base:?}");
    // The ships move: let the store's file reach its working size before the faults.
    std::thread::sleep(Duration::from_secs(5));

    let mut rows: Vec<Row> = Vec::new();
    let mut entities = replicant_view(&h, &app_ns).expect("replicant view").entities;
    let replicant_pod = format!("{}-0", builders::replicant_name(STANTON, 0));

    // Waits for recovery after a fault injected at `t0` and records the row.
    let settle = |rows: &mut Vec<Row>,
                  fault: &str,
                  t0: Instant,
                  before: u64,
                  players: u64,
                  seen: String|
     -> u64 {
        let v = poll(
            &format!("recovery from: {fault}"),
            RECOVERY,
            EVERY,
            || recovered(&h, &app_ns, players),
            diag,
        );
        let recovery = t0.elapsed();
        let after = v.entities;
        println!("chaos: {fault}: recovered in {} ({v:?})", secs(recovery));
        let probe = format!("chaos-probe-{}", rows.len());
        let took = operator_responds(&app_ns, &layout_text, &probe, &diag);
        let seen = format!(
            "{seen}{}operator acts {}",
            if seen.is_empty() { "" } else { "; " },
            secs(took)
        );
        rows.push(Row { fault: fault.to_string(), recovery, before, after, seen });
        after
    };

    // 1. A game-server pod deleted.
    let victim = format!("{}-0", builders::servers_name(STANTON, 0));
    let (_, old_id, _) = pod_container(&app_ns, &victim).expect("server pod");
    kubectl(&["delete", "pod", &victim, "-n", &app_ns, "--wait=false"]);
    let t0 = Instant::now();
    poll(
        "the server pod replaced",
        RECOVERY,
        EVERY,
        || match pod_container(&app_ns, &victim) {
            Ok((_, id, _)) if id != old_id => Ok(()),
            Ok(_) => Err("still the old container".into()),
            Err(e) => Err(e),
        },
        diag,
    );
    entities = settle(
        &mut rows,
        &format!("delete game-server pod {victim}"),
        t0,
        entities,
        players,
        String::new(),
    );

    // 2. kill -9 of the replicant's process.
    let (_, rid, restarts) = pod_container(&app_ns, &replicant_pod).expect("replicant pod");
    h.signal_container(&rid, "SIGKILL");
    let t0 = Instant::now();
    poll(
        "the replicant container restarted",
        RECOVERY,
        EVERY,
        || match pod_container(&app_ns, &replicant_pod) {
            Ok((_, _, r)) if r > restarts => Ok(()),
            Ok((_, _, r)) => Err(format!("restartCount {r}")),
            Err(e) => Err(e),
        },
        diag,
    );
    entities = settle(
        &mut rows,
        "kill -9 the replicant (SIGKILL via containerd)",
        t0,
        entities,
        players,
        String::new(),
    );

    // 3. kill -9 of the active operator (the Lease holder).
    let lease = get_json(&["lease", OPERATOR, "-n", &release_ns]).expect("operator Lease");
    let leader = lease["spec"]["holderIdentity"].as_str().expect("Lease holder").to_string();
    let (_, oid, _) = pod_container(&release_ns, &leader).expect("leader pod");
    h.signal_container(&oid, "SIGKILL");
    let killed_at = now_rfc3339();
    let t0 = Instant::now();
    let new_leader = poll(
        "a live operator renewing the Lease",
        RECOVERY,
        EVERY,
        || lease_renewed_by_live_leader(&release_ns, &killed_at),
        diag,
    );
    entities = settle(
        &mut rows,
        &format!("kill -9 the operator leader {leader}"),
        t0,
        entities,
        players,
        format!("Lease renewed by {new_leader}"),
    );

    // 4, 5. kube-apiserver and etcd killed and started again.
    for component in ["kube-apiserver", "etcd"] {
        let t0 = Instant::now();
        let said = h.restart(component);
        poll(
            "the API answering",
            RECOVERY,
            EVERY,
            || get_json(&["namespace", &app_ns]).map(|_| ()),
            diag,
        );
        entities = settle(
            &mut rows,
            &format!("kill -9 + restart {component}"),
            t0,
            entities,
            players,
            said,
        );
    }

    // 6. The store's volume full while new players join; then space freed.
    let filled = volume.fill();
    let t0 = Instant::now();
    apply_text(
        &app_ns,
        &bots_job_yaml("bots-fill", &image, &pull, &gateway, FILL_PLAYERS, "fill", BOT_SECONDS),
    );
    let full = poll(
        "the replicant to report its full store (/readyz, starmesh_store_up 0)",
        RECOVERY,
        EVERY,
        || {
            let v = replicant_view(&h, &app_ns)?;
            if !v.ready && v.store_up == 0.0 && v.readyz.contains("store") {
                Ok(v)
            } else {
                Err(format!("{v:?}"))
            }
        },
        diag,
    );
    println!("chaos: volume full ({filled} bytes of filler): {full:?}");
    let detected = t0.elapsed();
    // Hold it full a few seconds more: the backlog grows, the bots go on playing.
    std::thread::sleep(Duration::from_secs(5));
    let t_free = Instant::now();
    volume.free();
    players += FILL_PLAYERS;
    let before = entities;
    entities = settle(
        &mut rows,
        "volume full while players join; space freed",
        t_free,
        before + FILL_PLAYERS,
        players,
        format!(
            "after {}: /readyz {:?}, store_up 0, backlog {}",
            secs(detected),
            full.readyz,
            full.backlog
        ),
    );
    // What was accepted while full must be in the store: a crash now reads it back.
    let (_, rid, restarts) = pod_container(&app_ns, &replicant_pod).expect("replicant pod");
    h.signal_container(&rid, "SIGKILL");
    let t0 = Instant::now();
    poll(
        "the replicant container restarted",
        RECOVERY,
        EVERY,
        || match pod_container(&app_ns, &replicant_pod) {
            Ok((_, _, r)) if r > restarts => Ok(()),
            Ok((_, _, r)) => Err(format!("restartCount {r}")),
            Err(e) => Err(e),
        },
        diag,
    );
    entities = settle(
        &mut rows,
        "kill -9 the replicant after the full volume",
        t0,
        entities,
        players,
        String::new(),
    );
    let _ = entities;

    // -- the bots end (SIGINT, as Ctrl-C) and report.
    for job in ["bots", "bots-fill"] {
        let pod = job_pod(&app_ns, job).expect("bots pod");
        let (_, bid, _) = pod_container(&app_ns, &pod).expect("bots container");
        h.signal_container(&bid, "SIGINT");
    }
    let report = bots_report(&app_ns, "bots", &diag);
    let fill_report = bots_report(&app_ns, "bots-fill", &diag);

    println!(
        "\nchaos under load: {BOT_PLAYERS} bots playing (+{FILL_PLAYERS} joining while the volume was full)"
    );
    print!("{}", table(&rows));
    println!("bots report: {report}");
    println!("bots (joined while full) report: {fill_report}");
    println!("TIMING chaos: whole test: {}", secs(started.elapsed()));

    for r in &rows {
        assert_eq!(
            lost_and_extra(r.before, r.after),
            (0, 0),
            "{}: entities lost or duplicated",
            r.fault
        );
    }
    for (rep, n) in [(&report, BOT_PLAYERS), (&fill_report, FILL_PLAYERS)] {
        let k = |key: &str| rep[key].as_u64().unwrap_or(u64::MAX);
        assert_eq!(k("players"), n, "{rep}");
        assert_eq!(k("connected"), n, "every player connected: {rep}");
        assert_eq!(k("entities_lost"), 0, "{rep}");
        assert_eq!(k("entities_duplicated"), 0, "{rep}");
        assert_eq!(rep["violations"].as_array().map(Vec::len), Some(0), "{rep}");
    }
    // After all of it the operator still tears a layout down: drained, released, gone.
    let t_del = Instant::now();
    kubectl(&["delete", "serverlayout", STANTON, "-n", &app_ns, "--wait=false"]);
    poll(
        "the operator to drain and release the Stanton layout",
        RECOVERY,
        EVERY,
        || match get_json(&["serverlayout", STANTON, "-n", &app_ns]) {
            Err(e) if e.contains("NotFound") => Ok(()),
            Err(e) => Err(e),
            Ok(l) => Err(format!("still there: finalizers {}", l["metadata"]["finalizers"])),
        },
        diag,
    );
    println!(
        "TIMING chaos: kubectl delete serverlayout stanton -> drained and gone: {}",
        secs(t_del.elapsed())
    );
    drop(cleanup);
    drop(volume);
    println!("TIMING chaos: whole test incl. cleanup: {}", secs(started.elapsed()));
}
