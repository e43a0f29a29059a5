//! Least privilege and secrets in the real cluster (issue 10):
//! - the operator's ServiceAccount may do what it uses and nothing more (`kubectl auth
//!   can-i --as`, the API server's own RBAC answer);
//! - every pod the chart and the operator create meets the "restricted" Pod Security
//!   Standard (starmesh_operator::pod_security: 1.20 has no PodSecurity admission);
//! - the chart generates the player-token Secret and keeps it across an upgrade;
//! - its key never appears in any pod's log, any Event, or any starmesh status.
//!
//! Needs a FULL cluster with the images loaded: e2e/run-cluster-tests.sh.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use starmesh_e2e::{poll, repo_root};
use starmesh_operator::pod_security::restricted_violations;
use support::{apply_text, get_json, helm, kubectl, kubectl_raw, tools, unique_suffix};

const RELEASE: &str = "starmesh";
const OPERATOR: &str = "starmesh-operator";
const SECRET: &str = "starmesh-player-token";
const EVERY: Duration = Duration::from_millis(1000);

/// Standard base64 decoding (the Secret's `data`), without padding checks.
fn b64decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn secret_key_b64(ns: &str) -> String {
    let s = get_json(&["secret", SECRET, "-n", ns]).expect("the chart's player-token Secret");
    s["data"]["player-token-key"].as_str().expect("key player-token-key").to_string()
}

/// Whether `who` may VERB RESOURCE in NS (empty NS: cluster scope).
fn can(who: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let mut args = vec!["auth", "can-i", verb];
    let sub;
    match resource.split_once('/') {
        Some((r, s)) => {
            sub = format!("--subresource={s}");
            args.extend_from_slice(&[r, &sub]);
        }
        None => args.push(resource),
    }
    args.extend_from_slice(&["--as", who]);
    if !ns.is_empty() {
        args.extend_from_slice(&["-n", ns]);
    }
    let out = kubectl_raw(&args);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: unexpected answer {other:?}: {}", out.stderr),
    }
}

fn diagnose(app_ns: &str, release_ns: &str) -> String {
    let mut s = String::new();
    for ns in [app_ns, release_ns] {
        let out = kubectl_raw(&["get", "pods,pvc,events", "-n", ns, "-o", "wide"]);
        s.push_str(&format!("\n--- {ns} ---\n{}{}", out.stdout, out.stderr));
    }
    s
}

struct Cleanup {
    app_ns: String,
    release_ns: String,
    pv: String,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = kubectl_raw(&["get", "serverlayouts", "-n", &self.app_ns, "-o", "name"]);
        for l in out.stdout.lines().filter(|l| !l.is_empty()) {
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
        kubectl_raw(&["delete", "namespace", &self.app_ns, "--wait=false"]);
        let _ = support::tool(&tools().helm, &["uninstall", RELEASE, "-n", &self.release_ns]);
        kubectl_raw(&["delete", "namespace", &self.release_ns, "--wait=false"]);
        kubectl_raw(&["delete", "pv", &self.pv, "--wait=false"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn least_privilege_restricted_pods_and_no_secret_leaks() {
    tools(); // fails loudly without a cluster
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "THIS TEST NEEDS A NODE: run e2e/run-cluster-tests.sh");
    let suffix = unique_suffix();
    let release_ns = format!("sm-sec-sys-{suffix}");
    let app_ns = format!("sm-sec-app-{suffix}");
    let class = format!("sm-sec-{suffix}");
    let dir = std::env::temp_dir().join(format!("starmesh-e2e-sec-{suffix}"));
    let cleanup = Cleanup {
        app_ns: app_ns.clone(),
        release_ns: release_ns.clone(),
        pv: format!("starmesh-e2e-sec-{suffix}"),
        dir: dir.clone(),
    };
    let diag = || diagnose(&app_ns, &release_ns);

    // -- install, the Secret generated in the app namespace.
    kubectl(&["create", "namespace", &app_ns]);
    let chart = repo_root().join("charts/starmesh");
    let chart = chart.to_str().expect("utf-8");
    let tag = std::env::var("STARMESH_E2E_IMAGE_TAG").unwrap_or_default();
    let sets = [
        format!("image.tag={tag}"),
        format!("nodeImage.tag={tag}"),
        format!("playerTokenSecret.namespace={app_ns}"),
    ];
    let mut args = vec!["install", RELEASE, chart, "-n", &release_ns, "--create-namespace"];
    for s in &sets {
        if !s.ends_with('=') {
            args.extend_from_slice(&["--set", s]);
        }
    }
    args.extend_from_slice(&["--wait", "--timeout", "180s"]);
    helm(&args);
    let key_b64 = secret_key_b64(&app_ns);
    let key = b64decode(&key_b64);
    assert!(key.len() >= 32, "the generated key has {} bytes, the gateway needs 32", key.len());
    // An upgrade keeps the key (lookup), so tokens already issued stay valid.
    helm(&[
        "upgrade",
        RELEASE,
        chart,
        "-n",
        &release_ns,
        "--reuse-values",
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert_eq!(secret_key_b64(&app_ns), key_b64, "helm upgrade changed the player-token key");

    // -- least privilege, as the API server decides it.
    let sa = format!("system:serviceaccount:{release_ns}:{OPERATOR}");
    let allowed = [
        ("list", "serverlayouts.starmesh.dev", &app_ns),
        ("watch", "starsystems.starmesh.dev", &app_ns),
        ("get", "starsystems.starmesh.dev", &app_ns),
        ("patch", "serverlayouts.starmesh.dev", &app_ns),
        ("patch", "serverlayouts.starmesh.dev/status", &app_ns),
        ("patch", "starsystems.starmesh.dev/status", &app_ns),
        ("patch", "serverlayouts.starmesh.dev/scale", &app_ns),
        ("create", "statefulsets.apps", &app_ns),
        ("patch", "deployments.apps", &app_ns),
        ("delete", "services", &app_ns),
        ("watch", "configmaps", &app_ns),
        ("patch", "statefulsets.apps/scale", &app_ns),
        ("create", "events.events.k8s.io", &app_ns),
        ("create", "leases.coordination.k8s.io", &release_ns),
    ];
    for (verb, res, ns) in allowed {
        assert!(can(&sa, verb, res, ns), "the operator cannot {verb} {res} in {ns}");
    }
    let denied = [
        ("get", "secrets", app_ns.as_str()),
        ("list", "secrets", app_ns.as_str()),
        ("watch", "secrets", release_ns.as_str()),
        ("create", "pods", app_ns.as_str()),
        ("create", "pods/exec", app_ns.as_str()),
        ("create", "pods/portforward", app_ns.as_str()),
        ("get", "pods/log", app_ns.as_str()),
        ("delete", "pods", app_ns.as_str()),
        ("create", "serviceaccounts/token", app_ns.as_str()),
        ("update", "serverlayouts.starmesh.dev", app_ns.as_str()),
        ("delete", "starsystems.starmesh.dev", app_ns.as_str()),
        ("update", "statefulsets.apps", app_ns.as_str()),
        ("create", "leases.coordination.k8s.io", app_ns.as_str()),
        ("delete", "leases.coordination.k8s.io", release_ns.as_str()),
        ("list", "nodes", ""),
        ("create", "persistentvolumes", ""),
        ("delete", "namespaces", ""),
        ("create", "clusterroles.rbac.authorization.k8s.io", ""),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
        ("escalate", "roles.rbac.authorization.k8s.io", app_ns.as_str()),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", ""),
        ("impersonate", "users", ""),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", ""),
    ];
    for (verb, res, ns) in denied {
        assert!(!can(&sa, verb, res, ns), "the operator may {verb} {res} in {ns:?}");
    }

    // -- a layout whose gateway uses the chart's Secret (one hostPath PV for the replicant).
    std::fs::create_dir_all(&dir).expect("PV folder");
    std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
    apply_text("default", &support::pv_yaml(&cleanup.pv, &class, &dir, "security"));
    let examples = repo_root().join("manifests/examples");
    kubectl(&[
        "apply",
        "-n",
        &app_ns,
        "-f",
        examples.join("stanton.yaml").to_str().expect("utf-8"),
    ]);
    let layout =
        std::fs::read_to_string(examples.join("stanton-layout.yaml")).expect("layout example");
    let (embedded, gateway) = (
        "embedded: {volumeSize: 1Gi}",
        "gateway: {replicas: 1, serviceType: ClusterIP, port: 7777}",
    );
    assert!(layout.contains(embedded) && layout.contains(gateway), "stanton-layout.yaml changed");
    let layout = layout
        .replace(embedded, &format!("embedded: {{volumeSize: 1Gi, storageClassName: {class}}}"))
        .replace(
            gateway,
            &format!("gateway: {{replicas: 1, serviceType: ClusterIP, port: 7777, playerTokenSecret: {SECRET}}}"),
        );
    apply_text(&app_ns, &layout);
    let pods = poll(
        "every mesh pod Running and Ready",
        Duration::from_secs(240),
        EVERY,
        || {
            let pods = get_json(&["pods", "-n", &app_ns])?;
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let ready = |p: &Value| {
                p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            };
            let not_ready: Vec<&str> = items
                .iter()
                .filter(|p| !ready(p))
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            // Replicant + 6 game servers + gateway.
            if items.len() >= 8 && not_ready.is_empty() {
                Ok(items)
            } else {
                Err(format!("{} pods, not ready: {not_ready:?}", items.len()))
            }
        },
        diag,
    );
    // The gateway is Ready with the key mounted: it refuses to start on a bad key file, so
    // this is the chart's Secret in use, not development mode.
    let gateway = pods
        .iter()
        .find(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.contains("-gateway-")))
        .expect("a gateway pod");
    let uses_secret = gateway["spec"]["volumes"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["secret"]["secretName"] == SECRET));
    let has_env = gateway["spec"]["containers"][0]["env"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["name"] == "STARMESH_PLAYER_TOKEN_KEY"));
    assert!(uses_secret && has_env, "the gateway does not use the chart's Secret: {gateway}");
    println!("{} mesh pods Ready with the chart's player-token Secret", pods.len());

    // -- every pod, ours and the chart's, meets the restricted profile.
    let operator_pods = get_json(&["pods", "-n", &release_ns]).expect("operator pods");
    let operator_pods = operator_pods["items"].as_array().cloned().unwrap_or_default();
    assert!(!operator_pods.is_empty(), "no operator pods in {release_ns}");
    let mut checked = 0;
    for p in pods.iter().chain(&operator_pods) {
        let pod: Pod = serde_json::from_value(p.clone()).expect("a Pod");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let spec = pod.spec.expect("pod spec");
        let v = restricted_violations(&annotations, &spec);
        assert!(v.is_empty(), "pod {name} breaks the restricted profile: {v:#?}");
        if p["metadata"]["namespace"] == app_ns.as_str() {
            // Mesh pods never call the API: no token mounted.
            assert_eq!(spec.automount_service_account_token, Some(false), "pod {name}");
        }
        checked += 1;
    }
    println!("restricted profile: {checked} pods checked, 0 violations");
    let mesh_sa = format!("system:serviceaccount:{app_ns}:default");
    for (verb, res) in
        [("list", "pods"), ("get", "secrets"), ("list", "serverlayouts.starmesh.dev")]
    {
        assert!(
            !can(&mesh_sa, verb, res, &app_ns),
            "the mesh pods' ServiceAccount may {verb} {res}"
        );
    }

    // -- the key is nowhere in logs, Events or status.
    let raw = String::from_utf8(key.clone()).expect("the chart's key is alphanumeric");
    let needles = [raw.as_str(), key_b64.as_str()];
    // The search works: the Secret itself, read the same way, does contain the key.
    let secret_json = kubectl(&["get", "secret", SECRET, "-n", &app_ns, "-o", "json"]);
    assert!(secret_json.contains(&key_b64), "the needle does not match the Secret's own text");
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for (ns, list) in [(&app_ns, &pods), (&release_ns, &operator_pods)] {
        for p in list {
            let name = p["metadata"]["name"].as_str().expect("pod name");
            let out = kubectl_raw(&["logs", "-n", ns, name, "--all-containers", "--prefix"]);
            assert!(out.ok, "kubectl logs {name}: {}", out.stderr);
            haystacks.push((format!("log of {ns}/{name}"), out.stdout));
        }
    }
    let gateway_logs: usize =
        haystacks.iter().filter(|(w, _)| w.contains("-gateway-")).map(|(_, l)| l.len()).sum();
    assert!(gateway_logs > 0, "no gateway log read: the check would prove nothing");
    for what in ["events", "events.events.k8s.io", "serverlayouts,starsystems"] {
        let out = kubectl(&["get", what, "-A", "-o", "json"]);
        haystacks.push((what.to_string(), out));
    }
    for (what, text) in &haystacks {
        for n in needles {
            assert!(!text.contains(n), "the player-token key appears in {what}");
        }
    }
    let bytes: usize = haystacks.iter().map(|(_, t)| t.len()).sum();
    println!(
        "no secret leak: {} sources, {bytes} bytes searched for the key (raw and base64)",
        haystacks.len()
    );
    drop(cleanup);
}
