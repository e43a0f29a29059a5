//! A studio's own game server runs a layout: the SDK's example game (`node/sdk/examples/
//! beacons.rs`, built into the image `starmesh/studio-beacons` by `charts/build-images.sh
//! --studio`) is named in a ServerLayout's `spec.gameServerImage`; the operator runs it in
//! the game-server pods (ours stay in the replicant and the gateway); the studio's servers
//! connect, take the territories and simulate; a bots Job plays through the gateway (the
//! beacons game answers the bots' spawn) and reports every player connected, no ship lost
//! or duplicated; the servers' own `/metrics` (read from inside the cluster's network)
//! show the beacons they hold and the ticks they ran.
//!
//! Needs a FULL cluster with the operator, node and studio images loaded:
//! `STARMESH_E2E_TESTS=studio e2e/run-cluster-tests.sh`. Without them it FAILS, never skips.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use starmesh_e2e::{poll, repo_root, run};
use starmesh_operator::builders;
use support::{
    apply_text, get_json, helm, kubectl, kubectl_raw, report_from_logs, secs, tool, tools,
    unique_suffix,
};

mod support;

const RELEASE: &str = "starmesh";
const LAYOUT: &str = "nyx";
const STUDIO_REPOSITORY: &str = "starmesh/studio-beacons";
const EVERY: Duration = Duration::from_millis(1000);
const BOT_PLAYERS: usize = 20;
const BOT_SECONDS: u64 = 40;
const SERVERS: usize = 2;

fn diagnose(app_ns: &str, release_ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-n", app_ns, "get", "serverlayouts,sts,deploy,pods,pvc,jobs", "-o", "wide"],
        vec!["-n", app_ns, "get", "serverlayouts", "-o", "jsonpath={.items[*].status}"],
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

/// Removes what the test created, pass or fail.
struct Cleanup {
    release_ns: String,
    app_ns: String,
    pv: Option<String>,
    dir: Option<std::path::PathBuf>,
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
        if let Some(pv) = &self.pv {
            kubectl_raw(&["delete", "pv", pv, "--wait=false"]);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Nyx served dynamically by two servers of the studio's image.
fn layout_yaml(class: &str, tag: &str) -> String {
    format!(
        r#"apiVersion: starmesh.dev/v1alpha1
kind: ServerLayout
metadata:
  name: {LAYOUT}
spec:
  systemRef: nyx
  shards: 1
  mode: Dynamic
  tickRate: 30
  dynamic:
    minServers: {SERVERS}
    maxServers: {SERVERS}
    targetPlayersPerServer: 100
    splitAbovePlayers: 120
    mergeBelowPlayers: 40
    cooldownSeconds: 120
  gameServerImage:
    repository: {STUDIO_REPOSITORY}
    tag: "{tag}"
    pullPolicy: IfNotPresent
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

fn bots_job_yaml(name: &str, image: &str, gateway: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}}
      containers:
        - name: bots
          image: {image}
          imagePullPolicy: IfNotPresent
          args: [bots, --gateway, "{gateway}", -n, "{BOT_PLAYERS}", --duration, "{BOT_SECONDS}s", --json]
          resources:
            requests: {{cpu: 50m, memory: 64Mi}}
            limits: {{cpu: "1", memory: 256Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
"#
    )
}

/// The game-server pods of the layout: (name, image, pod IP), Ready ones only.
fn server_pods(app_ns: &str) -> Result<Vec<(String, String, String)>, String> {
    let selector = format!("starmesh.dev/layout={LAYOUT},app.kubernetes.io/component=server");
    let pods = get_json(&["pods", "-n", app_ns, "-l", &selector])?;
    let mut out = Vec::new();
    for p in pods["items"].as_array().ok_or("no items")? {
        let ready = p["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        if !ready || !p["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        out.push((
            p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            p["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string(),
            p["status"]["podIP"].as_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(out)
}

/// A pod's `/metrics`, fetched from inside the cluster's network namespace.
fn scrape(ip: &str) -> Result<String, String> {
    let netns = std::env::var("STARMESH_NETNS_PATH")
        .map_err(|_| "STARMESH_NETNS_PATH (from the harness's env file) is not set".to_string())?;
    let url = format!("http://{ip}:{}/metrics", builders::METRICS_PORT);
    let out = run(
        Path::new("nsenter"),
        &[&format!("--net={netns}"), "--", "curl", "-sS", "--fail", "--max-time", "5", &url],
        &[],
    );
    if out.ok { Ok(out.stdout) } else { Err(format!("curl {url}: {}", out.stderr.trim())) }
}

/// The value of an unlabelled sample `name` in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_studio_game_server_image_runs_the_layout_and_the_bots_play() {
    let t = tools();
    assert!(
        std::env::var("STARMESH_CLUSTER_HAS_NODE").as_deref() != Ok("0"),
        "THIS TEST NEEDS A NODE: boot a full cluster (e2e/run-cluster-tests.sh)"
    );
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "the cluster in {} has no node", t.kubeconfig.display());

    let suffix = unique_suffix();
    let release_ns = format!("sm-studio-op-{suffix}");
    let app_ns = format!("sm-studio-{suffix}");
    let class = format!("starmesh-e2e-studio-{suffix}");
    let mut cleanup =
        Cleanup { release_ns: release_ns.clone(), app_ns: app_ns.clone(), pv: None, dir: None };
    let diag = || diagnose(&app_ns, &release_ns);

    let chart = repo_root().join("charts/starmesh");
    let chart = chart.to_str().expect("utf-8");
    let tag = std::env::var("STARMESH_E2E_IMAGE_TAG").unwrap_or_default();
    let tag_args = [format!("image.tag={tag}"), format!("nodeImage.tag={tag}")];
    let mut args =
        vec!["install", RELEASE, chart, "-n", &release_ns, "--create-namespace", "--wait"];
    args.extend_from_slice(&["--timeout", "180s"]);
    if !tag.is_empty() {
        for a in &tag_args {
            args.extend_from_slice(&["--set", a]);
        }
    }
    helm(&args);

    // One hostPath PV for the replicant's embedded store (the harness has no provisioner).
    let dir = std::env::temp_dir().join(format!("starmesh-e2e-studio-pv-{suffix}"));
    std::fs::create_dir_all(&dir).expect("PV folder");
    std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
    cleanup.dir = Some(dir.clone());
    let pv = format!("starmesh-e2e-studio-{suffix}");
    apply_text("default", &support::pv_yaml(&pv, &class, &dir, "studio"));
    cleanup.pv = Some(pv);

    // The studio's image has the node image's tag (both built by build-images.sh).
    kubectl(&["create", "namespace", &app_ns]);
    let nyx = repo_root().join("manifests/examples/nyx.yaml");
    kubectl(&["apply", "-n", &app_ns, "-f", nyx.to_str().expect("utf-8")]);
    // The chart names the operator's Deployment after the release.
    let operator = get_json(&["deployment", "starmesh-operator", "-n", &release_ns])
        .expect("operator Deployment");
    let op_image = operator["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("operator image")
        .to_string();
    let image_tag = op_image.rsplit_once(':').map(|(_, t)| t.to_string()).expect("image tag");
    let t_apply = Instant::now();
    apply_text(&app_ns, &layout_yaml(&class, &image_tag));

    // Ready: the replicant and gateway are ours, both servers the studio's, Ready.
    let servers = poll(
        "the studio's two game-server pods Ready",
        Duration::from_secs(300),
        EVERY,
        || {
            let s = server_pods(&app_ns)?;
            if s.len() == SERVERS { Ok(s) } else { Err(format!("ready server pods {s:?}")) }
        },
        diag,
    );
    let studio_image = format!("{STUDIO_REPOSITORY}:{image_tag}");
    for (name, image, _) in &servers {
        assert!(image.ends_with(&studio_image), "{name} runs {image}, want {studio_image}");
    }
    let rep = get_json(&["statefulset", &builders::replicant_name(LAYOUT, 0), "-n", &app_ns])
        .expect("replicant StatefulSet");
    let node_image = rep["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("replicant image")
        .to_string();
    assert!(node_image.contains("starmesh/node"), "the replicant stays ours: {node_image}");
    poll(
        "layout Ready=True",
        Duration::from_secs(120),
        EVERY,
        || {
            let l = get_json(&["serverlayout", LAYOUT, "-n", &app_ns])?;
            let ready = l["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map(|c| c["status"] == "True")
                .unwrap_or(false);
            if ready { Ok(()) } else { Err(format!("status {}", l["status"])) }
        },
        diag,
    );
    println!(
        "TIMING studio: kubectl apply layout (gameServerImage {studio_image}) -> Ready: {}",
        secs(t_apply.elapsed())
    );

    // The studio's servers hold the territories: each reports territories in its /metrics.
    let territories = poll(
        "every studio server to hold a territory (starmesh_server_territories)",
        Duration::from_secs(60),
        EVERY,
        || {
            let mut held = Vec::new();
            for (name, _, ip) in &servers {
                let n = sample(&scrape(ip)?, "starmesh_server_territories").unwrap_or(0.0);
                if n < 1.0 {
                    return Err(format!("{name}: starmesh_server_territories {n}"));
                }
                held.push(n);
            }
            Ok(held)
        },
        diag,
    );
    println!("studio servers hold territories: {territories:?}");

    // Bots through our gateway; the studio's game answers their spawns with beacons.
    let gw = get_json(&["service", &builders::gateway_name(LAYOUT, 0), "-n", &app_ns])
        .expect("gateway Service");
    let ip = gw["spec"]["clusterIP"].as_str().expect("clusterIP");
    let port = gw["spec"]["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "game"))
        .and_then(|p| p["port"].as_i64())
        .expect("game port");
    let job = "bots";
    apply_text(&app_ns, &bots_job_yaml(job, &node_image, &format!("{ip}:{port}")));

    // While they play, the studio's servers simulate beacons: entities held and ticks run.
    let (held, ticks) = poll(
        "the studio's servers to hold the bots' beacons (starmesh_server_entities > 0)",
        Duration::from_secs(60),
        EVERY,
        || {
            let (mut held, mut ticks) = (0.0, 0.0);
            for (_, _, ip) in &servers {
                let page = scrape(ip)?;
                held += sample(&page, "starmesh_server_entities").unwrap_or(0.0);
                ticks += sample(&page, "starmesh_tick_duration_seconds_count").unwrap_or(0.0);
            }
            if held > 0.0 && ticks > 0.0 {
                Ok((held, ticks))
            } else {
                Err(format!("entities {held}, ticks {ticks}"))
            }
        },
        diag,
    );
    println!("studio servers: {held} beacons held, {ticks} ticks run");
    assert!(held <= BOT_PLAYERS as f64, "more beacons than bots: {held}");

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
    assert_eq!(n("connected"), BOT_PLAYERS as u64, "every player connected: {report}");
    assert_eq!(n("entities_lost"), 0, "{report}");
    assert_eq!(n("entities_duplicated"), 0, "{report}");
    assert_eq!(report["violations"].as_array().map(Vec::len), Some(0), "{report}");

    // The studio's code, not ours, simulated them: its own log line.
    let server_logs =
        kubectl(&["logs", "-n", &app_ns, "-l", "app.kubernetes.io/component=server", "--tail=-1"]);
    assert!(
        server_logs.contains("is ours"),
        "the beacons game logs `beacon N is ours` for each beacon it takes:\n{server_logs}"
    );
    drop(cleanup);
}
