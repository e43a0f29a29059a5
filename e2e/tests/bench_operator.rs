//! Benchmark (issue 9, figure 5): time from `kubectl apply` of a ServerLayout with twenty
//! game servers to Ready, beside `kubectl apply` of the equivalent plain objects in the same
//! run. The plain objects are rendered by the operator's own builders
//! (`starmesh_operator::builders`) from the same layout, so they are the very StatefulSets,
//! Services, Deployment and ConfigMap the operator applies, minus the owner reference; the
//! plain path applies them the way the operator does (Services first, their cluster IPs go
//! into the mesh map ConfigMap, then the workloads), with two `kubectl apply`s.
//!
//! Order: the operator's run first, then its namespace is deleted (and gone), then the plain
//! run. The node image is therefore already unpacked by the kubelet for the plain run, which
//! favours the plain side: the ratio is if anything pessimistic for the operator.
//!
//! Prints `TIMING bench_operator: ...` lines and the ratio. Needs a FULL cluster with the
//! images loaded (`STARMESH_E2E_TESTS=bench_operator bash e2e/run-cluster-tests.sh`); without
//! one it FAILS, never skips. `the_twenty_server_layout_is_valid` needs no cluster
//! (`BENCH_PRINT=1` makes it print the rendered plain workloads).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use starmesh_api::{ServerLayout, StarSystem};
use starmesh_e2e::{poll, repo_root};
use starmesh_operator::builders::{self, LayoutRef, ShardIps};
use support::{get_json, helm, kubectl, kubectl_raw, secs, tool, tools, unique_suffix};

mod support;

const RELEASE: &str = "starmesh";
const OPERATOR: &str = "starmesh-operator";
const LAYOUT: &str = "bench";
const SERVERS: usize = 20;
/// Fine enough for a figure of tens of seconds; each poll is one or two kubectl calls.
const EVERY: Duration = Duration::from_millis(500);

/// Twenty static servers over Stanton's locations: each planet and moon its own server,
/// then landing zones, stations, Lagrange points and deep space grouped.
const SERVER_TERRITORIES: [(&str, &[&str]); SERVERS] = [
    ("hurston", &["hurston"]),
    ("crusader", &["crusader"]),
    ("arccorp", &["arccorp"]),
    ("microtech", &["microtech"]),
    ("arial", &["arial"]),
    ("aberdeen", &["aberdeen"]),
    ("magda", &["magda"]),
    ("ita", &["ita"]),
    ("cellin", &["cellin"]),
    ("daymar", &["daymar"]),
    ("yela", &["yela"]),
    ("lyria", &["lyria"]),
    ("wala", &["wala"]),
    ("calliope", &["calliope"]),
    ("clio", &["clio"]),
    ("euterpe", &["euterpe"]),
    ("cities", &["lorville", "orison", "area18", "new-babbage"]),
    ("stations", &["everus-harbor", "seraphim-station", "baijini-point", "port-tressler"]),
    ("lagrange", &["hur-l1", "cru-l1", "hur-l1-rest-stop", "cru-l1-rest-stop"]),
    ("deep-space", &["deep-space", "aaron-halo"]),
];

/// The layout under test. CPU requests are small so that 22 pods fit the harness's one
/// 2-core node (the defaults ask 100m per server); everything else is the API default.
fn layout_yaml(class: &str) -> String {
    let servers: String = SERVER_TERRITORIES
        .iter()
        .map(|(name, ts)| format!("    - {{name: {name}, territories: [{}]}}\n", ts.join(", ")))
        .collect();
    let small = "{requests: {cpu: 10m, memory: 32Mi}, limits: {cpu: '1', memory: 256Mi}}";
    format!(
        r#"apiVersion: starmesh.dev/v1alpha1
kind: ServerLayout
metadata:
  name: {LAYOUT}
spec:
  systemRef: stanton
  shards: 1
  mode: Static
  tickRate: 30
  servers:
{servers}  persistence:
    backend: embedded
    embedded: {{volumeSize: 1Gi, storageClassName: {class}}}
  resources: {{replicant: {small}, server: {small}, gateway: {small}}}
  gateway: {{replicas: 1, serviceType: ClusterIP, port: 7777}}
"#
    )
}

fn stanton() -> StarSystem {
    let text = std::fs::read_to_string(repo_root().join("manifests/examples/stanton.yaml"))
        .expect("read stanton.yaml");
    starmesh_api::yaml::load_star_system(&text).expect("stanton.yaml loads")
}

/// The layout as the builders need it: loaded from the same YAML, in `ns`, with a uid (the
/// builders' owner reference needs one; it is stripped from the plain objects).
fn loaded_layout(class: &str, ns: &str) -> ServerLayout {
    let mut l = starmesh_api::yaml::load_server_layout(&layout_yaml(class)).expect("layout loads");
    l.metadata.namespace = Some(ns.to_string());
    l.metadata.uid = Some("00000000-0000-4000-8000-000000000000".to_string());
    l
}

/// Plain objects carry no owner: a reference to a ServerLayout that does not exist would
/// have the garbage collector delete them.
fn plain<K: Resource>(mut obj: K) -> K {
    obj.meta_mut().owner_references = None;
    obj
}

fn yaml_docs<T: Serialize>(objs: &[T]) -> String {
    objs.iter()
        .map(|o| serde_saphyr::to_string(o).expect("object to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The Services of shard 0, as the operator builds them.
fn plain_services(l: &LayoutRef<'_>) -> Vec<Service> {
    vec![
        plain(builders::replicant_service(l, 0)),
        plain(builders::servers_service(l, 0)),
        plain(builders::gateway_service(l, 0)),
    ]
}

/// The mesh map ConfigMap and the workloads of shard 0, as the operator builds them once it
/// knows the Services' cluster IPs (no gate peers: the layouts of Pyro and Nyx do not exist,
/// exactly as for the operator in this test).
fn plain_workloads(l: &LayoutRef<'_>, system: &StarSystem, ips: &[ShardIps]) -> String {
    let map = builders::mesh_map(l, ips, &[]);
    let cm = plain(builders::mesh_map_configmap(l, system, &map).expect("mesh map ConfigMap"));
    let servers = i32::try_from(SERVERS).expect("small");
    let sts = [
        plain(builders::replicant_statefulset(l, 0)),
        plain(builders::servers_statefulset(l, 0, servers)),
    ];
    let dep = plain(builders::gateway_deployment(l, 0));
    [yaml_docs(&[cm]), yaml_docs(&sts), yaml_docs(&[dep])].join("---\n")
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write manifest");
    p
}

fn diagnose(nss: &[&str]) -> String {
    let mut s = String::new();
    for ns in nss {
        for args in [
            vec!["-n", ns, "get", "serverlayouts,sts,deploy,svc,pods,pvc", "-o", "wide"],
            vec!["-n", ns, "get", "serverlayouts", "-o", "jsonpath={.items[*].status}"],
            vec!["-n", ns, "get", "events", "--sort-by=.lastTimestamp"],
            vec!["-n", ns, "logs", "-l", "starmesh.dev/layout", "--tail=20", "--prefix"],
        ] {
            let out = kubectl_raw(&args);
            s.push_str(&format!(
                "\n--- kubectl {} ---\n{}{}",
                args.join(" "),
                out.stdout,
                out.stderr
            ));
        }
    }
    let out = kubectl_raw(&["get", "pv,nodes", "-o", "wide"]);
    s.push_str(&format!("\n--- kubectl get pv,nodes ---\n{}{}", out.stdout, out.stderr));
    s
}

/// Every pod of shard 0 Running and Ready: 1 replicant, `SERVERS` servers, 1 gateway.
fn pods_ready(ns: &str) -> Result<(), String> {
    let selector = format!("starmesh.dev/layout={LAYOUT},starmesh.dev/shard=0");
    let pods = get_json(&["pods", "-n", ns, "-l", &selector])?;
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
    if counts == [1, SERVERS, 1] {
        Ok(())
    } else {
        Err(format!("ready replicant/servers/gateway pods {counts:?}, want [1, {SERVERS}, 1]"))
    }
}

/// The layout's Ready=True, observed at its generation, with its one shard ready.
fn layout_ready(ns: &str) -> Result<(), String> {
    let l = get_json(&["serverlayout", LAYOUT, "-n", ns])?;
    let st = &l["status"];
    if st["observedGeneration"] != l["metadata"]["generation"] {
        return Err(format!("not observed yet: {st}"));
    }
    let ready = st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    if ready == Some("True") && st["readyShards"].as_i64() == Some(1) {
        Ok(())
    } else {
        Err(format!("Ready={ready:?} status {st}"))
    }
}

/// Cluster IP of each Service in `kubectl apply -o json` output (one object or a List).
fn cluster_ips(applied: &str) -> Result<Vec<(String, String)>, String> {
    let v: Value = serde_json::from_str(applied).map_err(|e| format!("{e}: {applied}"))?;
    let items = match v["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![v],
    };
    items
        .iter()
        .map(|s| {
            let name = s["metadata"]["name"].as_str().ok_or("service without a name")?;
            let ip = s["spec"]["clusterIP"].as_str().ok_or("service without a clusterIP")?;
            Ok((name.to_string(), ip.to_string()))
        })
        .collect()
}

fn wait_namespace_gone(ns: &str, nss: &[&str]) {
    kubectl(&["delete", "namespace", ns, "--wait=false"]);
    poll(
        &format!("namespace {ns} gone"),
        Duration::from_secs(180),
        EVERY,
        || match get_json(&["namespace", ns]) {
            Ok(_) => Err("still there".to_string()),
            Err(e) if e.contains("NotFound") => Ok(()),
            Err(e) => Err(e),
        },
        || diagnose(nss),
    );
}

struct Cleanup {
    release_ns: String,
    nss: Vec<String>,
    pvs: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.nss {
            if std::thread::panicking() {
                kubectl_raw(&[
                    "patch",
                    "-n",
                    ns,
                    &format!("serverlayout/{LAYOUT}"),
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ]);
            }
            kubectl_raw(&["delete", "namespace", ns, "--timeout=120s"]);
        }
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

#[test]
fn the_twenty_server_layout_is_valid() {
    let system = stanton();
    let l = loaded_layout("any-class", "default");
    assert_eq!(l.spec.servers.len(), SERVERS);
    let errors =
        starmesh_api::validation::validate_server_layout(LAYOUT, &l.spec, Some(&system.spec));
    assert!(errors.is_empty(), "the bench layout is invalid: {errors:?}");
    // And the builders render it: 20 server replicas, the plain objects without owners.
    let lref = LayoutRef::new(&l, "starmesh/node:test").expect("layout ref");
    let ips = [ShardIps { index: 0, replicant: "10.0.0.1".into(), gateway: "10.0.0.2".into() }];
    let text = plain_workloads(&lref, &system, &ips);
    if std::env::var_os("BENCH_PRINT").is_some() {
        println!("{text}");
    }
    assert!(text.contains("replicas: 20"), "{text}");
    assert!(!text.contains("ownerReferences"), "{text}");
    assert_eq!(text.matches("kind: StatefulSet").count(), 2, "{text}");
    let services = yaml_docs(&plain_services(&lref));
    assert_eq!(services.matches("kind: Service").count(), 3, "{services}");
}

#[test]
fn twenty_servers_operator_apply_to_ready_beside_plain_objects() {
    let t = tools();
    let nodes = kubectl(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.trim().is_empty(), "the cluster in {} has no node", t.kubeconfig.display());

    let suffix = unique_suffix();
    let release_ns = format!("sm-bop-op-{suffix}");
    let op_ns = format!("sm-bop-layout-{suffix}");
    let plain_ns = format!("sm-bop-plain-{suffix}");
    let class = format!("starmesh-bench-{suffix}");
    let mut cleanup = Cleanup {
        release_ns: release_ns.clone(),
        nss: vec![op_ns.clone(), plain_ns.clone()],
        pvs: Vec::new(),
        dirs: Vec::new(),
    };
    let nss = [op_ns.as_str(), plain_ns.as_str(), release_ns.as_str()];
    let diag = || diagnose(&nss);
    let work = tempfile::tempdir().expect("temp dir");

    // -- the operator, in-cluster, as in helm.rs.
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
    // The node image exactly as the operator uses it (its --node-image flag).
    let dep = get_json(&["deployment", OPERATOR, "-n", &release_ns]).expect("operator Deployment");
    let node_image = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .and_then(|a| {
            a.iter().filter_map(Value::as_str).find_map(|s| s.strip_prefix("--node-image="))
        })
        .map(String::from)
        .expect("the operator Deployment has --node-image");

    // -- storage: one hostPath PV per replicant (one per run; Retain: not reused).
    for i in 0..2 {
        let dir = std::env::temp_dir().join(format!("starmesh-bench-pv-{suffix}-{i}"));
        std::fs::create_dir_all(&dir).expect("PV folder");
        std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
        cleanup.dirs.push(dir.clone());
        let name = format!("starmesh-bench-{suffix}-{i}");
        let f = write_temp(
            work.path(),
            &format!("pv-{i}.yaml"),
            &support::pv_yaml(&name, &class, &dir, "bench-operator"),
        );
        kubectl(&["apply", "-f", f.to_str().expect("utf-8")]);
        cleanup.pvs.push(name);
    }
    let stanton_yaml = repo_root().join("manifests/examples/stanton.yaml");
    let stanton_yaml = stanton_yaml.to_str().expect("utf-8");
    let system = stanton();

    // -- 1. the operator: the StarSystem first (not timed), then the layout.
    kubectl(&["create", "namespace", &op_ns]);
    kubectl(&["apply", "-n", &op_ns, "-f", stanton_yaml]);
    let layout_file = write_temp(work.path(), "layout.yaml", &layout_yaml(&class));
    let t_op = Instant::now();
    kubectl(&["apply", "-n", &op_ns, "-f", layout_file.to_str().expect("utf-8")]);
    poll("layout Ready=True", Duration::from_secs(300), EVERY, || layout_ready(&op_ns), diag);
    let op_ready = t_op.elapsed();
    // Ready=True implies the pods are; checked directly too, at once.
    pods_ready(&op_ns).expect("layout Ready=True but not every pod is Ready");
    let op_sts = get_json(&["statefulset", &builders::servers_name(LAYOUT, 0), "-n", &op_ns])
        .expect("the operator's servers StatefulSet");
    println!(
        "TIMING bench_operator: kubectl apply of a {SERVERS}-server layout -> Ready=True \
         ({} pods Ready): {}",
        SERVERS + 2,
        secs(op_ready)
    );
    let t_del = Instant::now();
    wait_namespace_gone(&op_ns, &nss);
    println!(
        "TIMING bench_operator: layout namespace deleted -> gone (drain included): {}",
        secs(t_del.elapsed())
    );

    // -- 2. the same objects, plain: Services, then the mesh map and the workloads.
    kubectl(&["create", "namespace", &plain_ns]);
    let l = loaded_layout(&class, &plain_ns);
    let lref = LayoutRef::new(&l, &node_image).expect("layout ref");
    let svc_file =
        write_temp(work.path(), "plain-services.yaml", &yaml_docs(&plain_services(&lref)));
    let t_plain = Instant::now();
    let applied =
        kubectl(&["apply", "-n", &plain_ns, "-f", svc_file.to_str().expect("utf-8"), "-o", "json"]);
    let ips = cluster_ips(&applied).expect("cluster IPs of the applied Services");
    let ip_of = |name: &str| {
        ips.iter()
            .find(|(n, _)| n == name)
            .map(|(_, ip)| ip.clone())
            .unwrap_or_else(|| panic!("no Service {name} in {ips:?}"))
    };
    let shard_ips = [ShardIps {
        index: 0,
        replicant: ip_of(&builders::replicant_name(LAYOUT, 0)),
        gateway: ip_of(&builders::gateway_name(LAYOUT, 0)),
    }];
    let wl_file = write_temp(
        work.path(),
        "plain-workloads.yaml",
        &plain_workloads(&lref, &system, &shard_ips),
    );
    kubectl(&["apply", "-n", &plain_ns, "-f", wl_file.to_str().expect("utf-8")]);
    poll("plain pods Ready", Duration::from_secs(300), EVERY, || pods_ready(&plain_ns), diag);
    let plain_ready = t_plain.elapsed();
    println!(
        "TIMING bench_operator: kubectl apply of the equivalent plain objects (3 Services, \
         ConfigMap, 2 StatefulSets, Deployment; two applies) -> {} pods Ready: {}",
        SERVERS + 2,
        secs(plain_ready)
    );

    // The two runs made the same servers: same replicas, image and environment names.
    let plain_sts = get_json(&["statefulset", &builders::servers_name(LAYOUT, 0), "-n", &plain_ns])
        .expect("the plain servers StatefulSet");
    for field in ["replicas", "podManagementPolicy"] {
        assert_eq!(op_sts["spec"][field], plain_sts["spec"][field], "spec.{field}");
    }
    let c = |s: &Value| s["spec"]["template"]["spec"]["containers"][0].clone();
    let (oc, pc) = (c(&op_sts), c(&plain_sts));
    assert_eq!(oc["image"], pc["image"], "image");
    assert_eq!(oc["env"], pc["env"], "environment");
    assert_eq!(oc["resources"], pc["resources"], "resources");

    let ratio = op_ready.as_secs_f64() / plain_ready.as_secs_f64();
    println!(
        "TIMING bench_operator: ratio operator / plain = {ratio:.2} ({} / {}; load {})",
        secs(op_ready),
        secs(plain_ready),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    assert!(ratio.is_finite() && ratio > 0.0, "ratio {ratio}");
    drop(cleanup);
}
