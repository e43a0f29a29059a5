//! The Helm chart end to end on a cluster WITH a node: the operator runs in-cluster
//! from its image, as an SRE installs it.
//!
//! The caller boots a full cluster, loads both images and exports KUBECONFIG
//! (`e2e/run-cluster-tests.sh` does all of it):
//!
//! ```sh
//! charts/build-images.sh --profile debug /tmp/img
//! e2e/cluster/up.sh /tmp/c && . /tmp/c/env
//! for t in /tmp/img/*.tar; do e2e/cluster/load-image.sh /tmp/c "$t"; done
//! cargo test -p starmesh-e2e --test helm -- --nocapture
//! e2e/cluster/down.sh /tmp/c
//! ```
//!
//! Any cluster with a node works (kind: `kind load image-archive` the tarballs). Env:
//! `HELM` (helm binary; default: `e2e/cluster/install-helm.sh`), `STARMESH_E2E_IMAGE_TAG`
//! (tag of the loaded images; default: the chart's appVersion).
//!
//! Without a cluster, or with a cluster without a node, the test FAILS (never skips).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::Value;
use starmesh_e2e::{poll, repo_root};
use starmesh_operator::builders;
use support::{get_json, helm, kubectl, kubectl_raw, secs, tool, tools, unique_suffix};

mod support;

const RELEASE: &str = "starmesh";
/// Objects the chart names after the release (`starmesh.operatorName`).
const OPERATOR: &str = "starmesh-operator";
const LAYOUT: &str = "stanton";
const EVERY: Duration = Duration::from_millis(500);

// ---- harness -------------------------------------------------------------------------

/// What a failed wait prints: the operator's Deployment, pods, Lease and logs.
fn diagnose(ns: &str) -> String {
    let mut s = String::new();
    for args in [
        vec!["-n", ns, "get", "deploy,rs,pods,lease", "-o", "wide"],
        vec!["-n", ns, "describe", "pods", "-l", "app.kubernetes.io/component=operator"],
        vec![
            "-n",
            ns,
            "logs",
            "-l",
            "app.kubernetes.io/component=operator",
            "--tail=40",
            "--prefix",
            "--all-containers",
        ],
    ] {
        let out = kubectl_raw(&args);
        s.push_str(&format!("\n--- kubectl {} ---\n{}{}", args.join(" "), out.stdout, out.stderr));
    }
    s
}

/// Nodes this test made unschedulable; uncordoned on drop (also when the test fails).
struct Cordon {
    nodes: Vec<String>,
}

impl Cordon {
    /// Cordons every schedulable node.
    fn all_nodes() -> Cordon {
        let nodes = get_json(&["nodes"]).expect("list nodes");
        let nodes: Vec<String> = nodes["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|n| n["spec"]["unschedulable"] != true)
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect();
        for n in &nodes {
            kubectl(&["cordon", n]);
        }
        Cordon { nodes }
    }
}

impl Drop for Cordon {
    fn drop(&mut self) {
        for n in &self.nodes {
            let out = kubectl_raw(&["uncordon", n]);
            if !out.ok {
                eprintln!("could not uncordon {n}: {}", out.stderr);
            }
        }
    }
}

/// Removes what the test created even when it fails half way (best effort; a
/// run-cluster-tests.sh cluster is torn down anyway, a kind cluster is not).
struct Cleanup {
    release_ns: String,
    app_ns: String,
    /// More namespaces the test created.
    others: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("cleaning up after the failure");
        // Finalizers first: the operator may already be gone and could not drain.
        let out = kubectl_raw(&["get", "serverlayouts", "-n", &self.app_ns, "-o", "name"]).stdout;
        for l in out.lines().filter(|l| !l.is_empty()) {
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
        tool(&tools().helm, &["uninstall", RELEASE, "-n", &self.release_ns]);
        let mut namespaces =
            vec!["delete", "namespace", "--wait=false", &self.app_ns, &self.release_ns];
        namespaces.extend(self.others.iter().map(String::as_str));
        kubectl_raw(&namespaces);
    }
}

// ---- the operator's state, read through the API ---------------------------------------

/// Names of the operator's pods that are not being deleted.
fn operator_pods(ns: &str) -> Result<BTreeSet<String>, String> {
    let pods = get_json(&["pods", "-n", ns, "-l", "app.kubernetes.io/component=operator"])?;
    Ok(pods["items"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect())
}

/// The Deployment fully rolled out: every replica updated, available and ready, none old.
fn deployment_ready(ns: &str) -> Result<Value, String> {
    let d = get_json(&["deployment", OPERATOR, "-n", ns])?;
    let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let st = &d["status"];
    let n = |k: &str| st[k].as_i64().unwrap_or(0);
    let observed = st["observedGeneration"] == d["metadata"]["generation"];
    if observed
        && n("updatedReplicas") == want
        && n("readyReplicas") == want
        && n("availableReplicas") == want
        && n("replicas") == want
    {
        Ok(d)
    } else {
        Err(format!("deployment status {st}, want {want} replicas"))
    }
}

/// The Lease's current holder, when the Lease is held (and not expired).
fn lease_holder(ns: &str) -> Result<String, String> {
    let l = get_json(&["lease", OPERATOR, "-n", ns])?;
    let holder = l["spec"]["holderIdentity"].as_str().unwrap_or_default();
    if holder.is_empty() {
        Err(format!("lease not held: {}", l["spec"]))
    } else {
        Ok(holder.into())
    }
}

/// `starmesh_operator_leader` of one pod, read through the API server's pod proxy (the
/// API server reaches pod IPs; the test may not).
fn leader_gauge(ns: &str, pod: &str) -> Result<i64, String> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:8080/proxy/metrics");
    let out = kubectl_raw(&["get", "--raw", &path]);
    if !out.ok {
        return Err(format!("{pod} /metrics: {}", out.stderr.trim()));
    }
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("starmesh_operator_leader "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{pod}: no starmesh_operator_leader gauge"))
}

/// Exactly one replica leads: the Lease names a live operator pod, that pod reports
/// itself leader and every other pod reports standby. Returns the leader.
fn single_leader(ns: &str) -> Result<String, String> {
    let pods = operator_pods(ns)?;
    let holder = lease_holder(ns)?;
    if !pods.contains(&holder) {
        return Err(format!("lease holder {holder} is not one of the live pods {pods:?}"));
    }
    for p in &pods {
        let g = leader_gauge(ns, p)?;
        let want = i64::from(*p == holder);
        if g != want {
            return Err(format!("{p} reports leader={g}, want {want} (holder {holder})"));
        }
    }
    Ok(holder)
}

/// The layout once its status describes its current generation and it is Valid, with
/// the shards it asks for.
fn observed_layout(app_ns: &str, shards: i64) -> Result<Value, String> {
    let l = get_json(&["serverlayout", LAYOUT, "-n", app_ns])?;
    let st = &l["status"];
    if st.is_null() {
        return Err("no status yet".into());
    }
    if st["observedGeneration"] != l["metadata"]["generation"] {
        return Err(format!(
            "observedGeneration {} of {}",
            st["observedGeneration"], l["metadata"]["generation"]
        ));
    }
    let valid = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Valid"))
        .map(|c| c["status"].clone());
    if valid != Some(Value::from("True")) {
        return Err(format!("Valid condition {valid:?}: {st}"));
    }
    if l["spec"]["shards"].as_i64() != Some(shards) {
        return Err(format!("spec.shards {} != {shards}", l["spec"]["shards"]));
    }
    Ok(l)
}

/// The objects of one shard exist and are owned by the layout. Returns the replicant
/// StatefulSet's uid.
fn shard_objects(app_ns: &str, layout_uid: &str, shard: i32) -> Result<String, String> {
    let rep = builders::replicant_name(LAYOUT, shard);
    let servers = builders::servers_name(LAYOUT, shard);
    let gateway = builders::gateway_name(LAYOUT, shard);
    let mut rep_uid = String::new();
    for (kind, name) in [
        ("statefulset", rep.as_str()),
        ("statefulset", servers.as_str()),
        ("deployment", gateway.as_str()),
        ("service", rep.as_str()),
        ("service", servers.as_str()),
        ("service", gateway.as_str()),
    ] {
        let o = get_json(&[kind, name, "-n", app_ns]).map_err(|e| format!("{kind}/{name}: {e}"))?;
        let owned = o["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["uid"] == layout_uid && r["controller"] == true));
        if !owned {
            return Err(format!("{kind}/{name} is not controlled by the layout"));
        }
        if kind == "statefulset" && name == rep {
            rep_uid = o["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        }
    }
    Ok(rep_uid)
}

/// Deletes a namespace and waits until it is gone; on timeout prints what is left in it
/// (with the finalizers and field managers of the starmesh objects) and the operator.
fn delete_namespace(ns: &str, release_ns: &str) {
    kubectl(&["delete", "namespace", ns, "--wait=false"]);
    poll(
        &format!("namespace {ns} to be deleted"),
        Duration::from_secs(150),
        EVERY,
        || {
            let out = kubectl_raw(&["get", "namespace", ns, "-o", "jsonpath={.status}"]);
            if out.ok { Err(out.stdout) } else { Ok(()) }
        },
        || {
            let left = kubectl_raw(&[
                "get",
                "serverlayouts,starsystems",
                "-n",
                ns,
                "-o",
                "jsonpath={range .items[*]}{.kind}/{.metadata.name} finalizers={.metadata.finalizers} \
                 deleting={.metadata.deletionTimestamp} managers={.metadata.managedFields[*].manager}{\"\\n\"}{end}",
                "--show-managed-fields",
            ]);
            format!(
                "\n--- left in {ns} ---\n{}{}{}",
                left.stdout,
                left.stderr,
                diagnose(release_ns)
            )
        },
    );
}

/// Whether the operator's ServiceAccount may do VERB on RESOURCE in NS (`kubectl auth
/// can-i` with impersonation: the API server's own RBAC decision).
fn operator_can(release_ns: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let sa = format!("system:serviceaccount:{release_ns}:{OPERATOR}");
    let mut args = vec!["auth", "can-i", verb];
    // "serverlayouts.starmesh.dev/status" -> resource + --subresource.
    let sub;
    match resource.split_once('/') {
        Some((r, s)) => {
            sub = format!("--subresource={s}");
            args.extend_from_slice(&[r, &sub]);
        }
        None => args.push(resource),
    }
    args.extend_from_slice(&["--as", &sa, "-n", ns]);
    let out = kubectl_raw(&args);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {args:?}: unexpected answer {other:?}: {}", out.stderr),
    }
}

/// The chart's RBAC: no wildcard anywhere, what the operator needs allowed, the rest not.
fn assert_least_privilege(release_ns: &str, app_ns: &str) {
    let roles = get_json(&["clusterroles", "-l", &format!("app.kubernetes.io/instance={RELEASE}")])
        .expect("list cluster roles");
    let roles = roles["items"].as_array().expect("items").clone();
    let leases = get_json(&["roles", "-n", release_ns]).expect("list roles");
    assert_eq!(roles.len(), 1, "one ClusterRole: {roles:?}");
    for role in roles.iter().chain(leases["items"].as_array().expect("items")) {
        for rule in role["rules"].as_array().expect("rules") {
            for key in ["verbs", "resources", "apiGroups"] {
                let vals = rule[key].as_array().map(Vec::as_slice).unwrap_or_default();
                assert!(!vals.iter().any(|v| v == "*"), "wildcard in {key}: {rule}");
            }
        }
    }
    for (verb, resource, ns) in [
        ("watch", "starsystems.starmesh.dev", app_ns),
        ("patch", "serverlayouts.starmesh.dev/status", app_ns),
        ("create", "statefulsets.apps", app_ns),
        ("delete", "services", app_ns),
        ("patch", "statefulsets.apps/scale", app_ns),
        ("create", "events.events.k8s.io", app_ns),
        ("create", "leases.coordination.k8s.io", release_ns),
    ] {
        assert!(operator_can(release_ns, verb, resource, ns), "operator cannot {verb} {resource}");
    }
    for (verb, resource, ns) in [
        ("get", "secrets", app_ns),
        ("list", "secrets", release_ns),
        ("create", "pods", app_ns),
        ("delete", "starsystems.starmesh.dev", app_ns),
        ("update", "serverlayouts.starmesh.dev", app_ns),
        ("create", "leases.coordination.k8s.io", app_ns),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", app_ns),
    ] {
        assert!(!operator_can(release_ns, verb, resource, ns), "operator may {verb} {resource}");
    }
}

/// One test at a time: both install the same release name and cluster-scoped CRDs.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Panics unless the cluster has a node: the operator runs as pods here.
fn require_node() {
    let t = tools();
    if std::env::var("STARMESH_CLUSTER_HAS_NODE").as_deref() == Ok("0") {
        panic!(
            "\n\nTHIS TEST NEEDS A NODE: STARMESH_CLUSTER_HAS_NODE=0 (a control-plane-only \
             cluster).\nBoot a full one: e2e/run-cluster-tests.sh\n"
        );
    }
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(
        !nodes.trim().is_empty(),
        "\n\nTHIS TEST NEEDS A NODE: the cluster in {} has none.\n",
        t.kubeconfig.display()
    );
}

fn chart() -> String {
    repo_root().join("charts/starmesh").to_str().expect("utf-8 path").to_string()
}

/// `helm install` with `--set` VALUES (plus the image tags from STARMESH_E2E_IMAGE_TAG),
/// then waits for the Deployment Ready and exactly one leader. Returns the Deployment and
/// the leader pod.
fn install(release_ns: &str, values: &[&str]) -> (Value, String) {
    let chart = chart();
    let mut args = vec!["install", RELEASE, chart.as_str(), "-n", release_ns, "--create-namespace"];
    let tag = std::env::var("STARMESH_E2E_IMAGE_TAG").unwrap_or_default();
    let tag_args = [format!("image.tag={tag}"), format!("nodeImage.tag={tag}")];
    if !tag.is_empty() {
        for a in &tag_args {
            args.extend_from_slice(&["--set", a]);
        }
    }
    for v in values {
        args.extend_from_slice(&["--set", v]);
    }
    let diag = || diagnose(release_ns);
    let t0 = Instant::now();
    let notes = helm(&args);
    assert!(
        notes.contains("kubectl apply") && notes.contains("kubectl get"),
        "NOTES.txt should say what to run next:\n{notes}"
    );
    let deploy = poll(
        "operator Deployment Ready",
        Duration::from_secs(120),
        EVERY,
        || deployment_ready(release_ns),
        diag,
    );
    let ready_after = t0.elapsed();
    let leader = poll(
        "exactly one Lease holder",
        Duration::from_secs(60),
        EVERY,
        || single_leader(release_ns),
        diag,
    );
    println!(
        "TIMING helm install {values:?} -> operator Deployment Ready (2/2): {}; -> one leader: {}",
        secs(ready_after),
        secs(t0.elapsed())
    );
    (deploy, leader)
}

/// Applies the Stanton example into NS and waits until the operator reconciled it: the
/// layout Valid and observed, shard 0's objects owned by it. Returns the layout's uid and
/// the replicant StatefulSet's uid.
fn apply_stanton(app_ns: &str, release_ns: &str) -> (String, String) {
    let diag = || diagnose(release_ns);
    let examples = repo_root().join("manifests/examples");
    for f in ["stanton.yaml", "stanton-layout.yaml"] {
        let p = examples.join(f);
        kubectl(&["apply", "-n", app_ns, "-f", p.to_str().expect("utf-8")]);
    }
    let t1 = Instant::now();
    let layout = poll(
        "ServerLayout stanton observed and Valid",
        Duration::from_secs(90),
        EVERY,
        || observed_layout(app_ns, 1),
        diag,
    );
    let layout_uid = layout["metadata"]["uid"].as_str().expect("uid").to_string();
    let rep_uid = poll(
        "shard 0 objects",
        Duration::from_secs(60),
        EVERY,
        || shard_objects(app_ns, &layout_uid, 0),
        diag,
    );
    get_json(&["configmap", &builders::mesh_map_name(LAYOUT), "-n", app_ns])
        .expect("mesh map ConfigMap");
    println!(
        "TIMING kubectl apply -> layout reconciled by the in-cluster operator: {}",
        secs(t1.elapsed())
    );
    (layout_uid, rep_uid)
}

/// Helm never deletes a chart's crds/ (that would delete every user's StarSystems); they
/// are the only thing an uninstall leaves, by design. Remove them so the cluster is as
/// before the test.
fn delete_crds() {
    let crds = kubectl(&["get", "crd", "-o", "name"]);
    assert!(crds.contains("serverlayouts.starmesh.dev"), "CRDs should have been installed: {crds}");
    kubectl(&["delete", "crd", "starsystems.starmesh.dev", "serverlayouts.starmesh.dev"]);
}

// ---- the tests -----------------------------------------------------------------------

/// install → Ready, one leader → examples reconciled in-cluster → leader killed, standby
/// takes over and reconciles → upgrade rolls the operator, the mesh untouched →
/// uninstall leaves nothing.
#[test]
fn helm_install_failover_upgrade_uninstall() {
    let _serial = serial();
    require_node();
    let suffix = unique_suffix();
    let release_ns = format!("starmesh-e2e-{suffix}");
    let app_ns = format!("galaxy-e2e-{suffix}");
    let _cleanup =
        Cleanup { release_ns: release_ns.clone(), app_ns: app_ns.clone(), others: Vec::new() };
    let chart = chart();
    let chart = chart.as_str();
    let diag = || diagnose(&release_ns);

    // -- helm install; the operator becomes Ready and exactly one replica leads.
    let (deploy, leader) = install(&release_ns, &[]);

    // The pod spec is locked down as the chart promises.
    let pod_spec = &deploy["spec"]["template"]["spec"];
    let c = &pod_spec["containers"][0];
    assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true, "{pod_spec}");
    assert_eq!(pod_spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{c}");
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL", "{c}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{c}");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{c}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");

    // -- kubectl apply the Stanton example; the in-cluster operator reconciles it.
    kubectl(&["create", "namespace", &app_ns]);
    assert_least_privilege(&release_ns, &app_ns);
    let (layout_uid, rep_uid) = apply_stanton(&app_ns, &release_ns);
    let cols = kubectl(&["get", "starsystems,serverlayouts", "-n", &app_ns]);
    println!("{cols}");

    // -- kill the leader; the standby takes the Lease and reconciles. The nodes are
    // cordoned first so the ReplicaSet's replacement pod cannot start and race the standby
    // for the Lease (as when a node is lost): only the standby can take over. Deleting the
    // pod SIGTERMs it and the operator releases the Lease; kube-lease-manager's standby
    // retries when the released Lease would have expired, so expect up to
    // leaseDurationSeconds (15 s).
    let standbys: BTreeSet<String> =
        operator_pods(&release_ns).expect("pods").into_iter().filter(|p| *p != leader).collect();
    assert_eq!(standbys.len(), 1, "one standby besides {leader}: {standbys:?}");
    let standby = standbys.iter().next().expect("standby").clone();
    let cordoned = Cordon::all_nodes();
    let t2 = Instant::now();
    kubectl(&[
        "delete",
        "pod",
        &leader,
        "-n",
        &release_ns,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    poll(
        "the standby to take the Lease",
        Duration::from_secs(60),
        EVERY,
        || {
            let h = lease_holder(&release_ns)?;
            if h == standby { Ok(()) } else { Err(format!("holder {h}, standby {standby}")) }
        },
        diag,
    );
    println!(
        "TIMING leader {leader} deleted -> standby {standby} holds the Lease: {}",
        secs(t2.elapsed())
    );
    drop(cordoned);
    // The new leader works: scale the layout (scale subresource) to two shards.
    kubectl(&["scale", "serverlayout", LAYOUT, "-n", &app_ns, "--replicas=2"]);
    poll(
        "the new leader to reconcile 2 shards",
        Duration::from_secs(60),
        EVERY,
        || {
            observed_layout(&app_ns, 2)?;
            shard_objects(&app_ns, &layout_uid, 1)
        },
        diag,
    );
    poll(
        "Deployment Ready again, one leader",
        Duration::from_secs(120),
        EVERY,
        || {
            deployment_ready(&release_ns)?;
            single_leader(&release_ns)
        },
        diag,
    );

    // -- helm upgrade with a changed value rolls every operator pod; the mesh stays.
    let before = operator_pods(&release_ns).expect("pods");
    let rev_before = deploy["metadata"]["generation"].as_i64().expect("generation");
    let t3 = Instant::now();
    helm(&[
        "upgrade",
        RELEASE,
        chart,
        "-n",
        &release_ns,
        "--reuse-values",
        "--set",
        "logFormat=text",
    ]);
    let rolled = poll(
        "the upgrade to roll out",
        Duration::from_secs(180),
        EVERY,
        || {
            let d = deployment_ready(&release_ns)?;
            let now = operator_pods(&release_ns)?;
            if let Some(old) = now.intersection(&before).next() {
                return Err(format!("old pod {old} still there"));
            }
            Ok(d)
        },
        diag,
    );
    assert!(rolled["metadata"]["generation"].as_i64().expect("generation") > rev_before);
    let args = rolled["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--log-format=text"), "upgrade did not reach the pod template: {args}");
    let upgraded_leader = poll(
        "one leader after the upgrade",
        Duration::from_secs(60),
        EVERY,
        || single_leader(&release_ns),
        diag,
    );
    println!("TIMING helm upgrade -> rolled out, leader {upgraded_leader}: {}", secs(t3.elapsed()));
    let rep_after = shard_objects(&app_ns, &layout_uid, 0).expect("shard 0 after upgrade");
    assert_eq!(rep_after, rep_uid, "the upgrade must not re-create the mesh's StatefulSets");

    // -- delete the app (the operator drains the layout), then uninstall: nothing is left.
    let t4 = Instant::now();
    delete_namespace(&app_ns, &release_ns);
    println!(
        "TIMING app namespace deleted (layout drained by the operator): {}",
        secs(t4.elapsed())
    );
    helm(&["uninstall", RELEASE, "-n", &release_ns]);
    delete_namespace(&release_ns, &release_ns);
    let leftovers = kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ]);
    assert!(leftovers.trim().is_empty(), "uninstall left cluster objects:\n{leftovers}");
    let all = kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    let named: Vec<&str> = all.lines().filter(|l| l.contains("starmesh")).collect();
    assert!(named.is_empty(), "uninstall left starmesh RBAC: {named:?}");
    for ns in [&release_ns, &app_ns] {
        let out = kubectl_raw(&["get", "namespace", ns]);
        assert!(!out.ok, "namespace {ns} still exists");
    }
    delete_crds();
}

/// `watchNamespace`: the operator watches one namespace with Roles only (no ClusterRole),
/// and that is enough to reconcile the example there.
#[test]
fn helm_watch_namespace_uses_roles_only() {
    let _serial = serial();
    require_node();
    let suffix = unique_suffix();
    let release_ns = format!("starmesh-ns-{suffix}");
    let app_ns = format!("galaxy-ns-{suffix}");
    let other_ns = format!("other-ns-{suffix}");
    let _cleanup = Cleanup {
        release_ns: release_ns.clone(),
        app_ns: app_ns.clone(),
        others: vec![other_ns.clone()],
    };
    // The watched namespace must exist first: the chart puts a Role into it.
    kubectl(&["create", "namespace", &app_ns]);
    kubectl(&["create", "namespace", &other_ns]);
    install(&release_ns, &[&format!("watchNamespace={app_ns}")]);

    let cluster_roles = kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={RELEASE}"),
        "-o",
        "name",
    ]);
    assert!(
        cluster_roles.trim().is_empty(),
        "watchNamespace needs no cluster RBAC: {cluster_roles}"
    );
    assert!(operator_can(&release_ns, "watch", "serverlayouts.starmesh.dev", &app_ns));
    assert!(!operator_can(&release_ns, "watch", "serverlayouts.starmesh.dev", &other_ns));
    assert!(!operator_can(&release_ns, "create", "statefulsets.apps", &other_ns));

    apply_stanton(&app_ns, &release_ns);

    // The layout first: deleting the namespace would also delete the operator's Role in
    // it, and the operator could no longer drain the layout and release its finalizer.
    let t = Instant::now();
    kubectl(&["delete", "serverlayout", LAYOUT, "-n", &app_ns, "--timeout=120s"]);
    println!("TIMING layout deleted (drained by the operator): {}", secs(t.elapsed()));
    delete_namespace(&app_ns, &release_ns);
    helm(&["uninstall", RELEASE, "-n", &release_ns]);
    delete_namespace(&release_ns, &release_ns);
    kubectl(&["delete", "namespace", &other_ns]);
    let roles = kubectl(&["get", "roles,rolebindings", "-A", "-o", "name"]);
    assert!(!roles.contains("starmesh"), "uninstall left Roles: {roles}");
    delete_crds();
}
