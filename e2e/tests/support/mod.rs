//! Shared by the in-cluster tests: the real kubectl and helm against the cluster in
//! `KUBECONFIG`, with their caches and config in a temp dir (nothing under ~), and the
//! pieces every mesh test needs (a hostPath volume, applying a manifest, the bots' report).
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use starmesh_e2e::{Output, repo_root, require_kubeconfig, run};

pub struct Tools {
    pub kubeconfig: PathBuf,
    pub helm: PathBuf,
    /// kubectl's and helm's caches and config, so the test writes nothing under ~.
    home: tempfile::TempDir,
}

pub fn tools() -> &'static Tools {
    static T: OnceLock<Tools> = OnceLock::new();
    T.get_or_init(|| {
        let kubeconfig = PathBuf::from(require_kubeconfig(
            "Boot a FULL cluster and load the images: e2e/run-cluster-tests.sh does both.",
        ));
        let helm = match std::env::var_os("HELM") {
            Some(h) => PathBuf::from(h),
            None => {
                let script = repo_root().join("e2e/cluster/install-helm.sh");
                let out = run(&script, &[], &[]);
                assert!(out.ok, "install-helm.sh failed:\n{}", out.stderr);
                PathBuf::from(out.stdout.lines().last().expect("install-helm.sh prints a path"))
            }
        };
        Tools { kubeconfig, helm, home: tempfile::tempdir().expect("temp dir") }
    })
}

pub fn envs(t: &Tools) -> Vec<(&'static str, PathBuf)> {
    let h = t.home.path();
    vec![
        ("KUBECONFIG", t.kubeconfig.clone()),
        // kubectl 1.32 against the 1.20 server: keep its discovery cache out of ~.
        ("KUBECACHEDIR", h.join("kube-cache")),
        ("HELM_CACHE_HOME", h.join("helm-cache")),
        ("HELM_CONFIG_HOME", h.join("helm-config")),
        ("HELM_DATA_HOME", h.join("helm-data")),
    ]
}

pub fn tool(program: &Path, args: &[&str]) -> Output {
    let e = envs(tools());
    let e: Vec<(&str, &Path)> = e.iter().map(|(k, v)| (*k, v.as_path())).collect();
    run(program, args, &e)
}

pub fn kubectl_raw(args: &[&str]) -> Output {
    tool(Path::new("/usr/bin/kubectl"), args)
}

pub fn kubectl(args: &[&str]) -> String {
    let out = kubectl_raw(args);
    assert!(out.ok, "kubectl {args:?} failed:\n{}\n{}", out.stderr, out.stdout);
    out.stdout
}

pub fn helm(args: &[&str]) -> String {
    let out = tool(&tools().helm, args);
    assert!(out.ok, "helm {args:?} failed:\n{}\n{}", out.stderr, out.stdout);
    out.stdout
}

/// `kubectl get ... -o json`, or the error text (for polling).
pub fn get_json(args: &[&str]) -> Result<Value, String> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = kubectl_raw(&a);
    if !out.ok {
        return Err(out.stderr.trim().to_string());
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("bad JSON from kubectl: {e}"))
}

pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}", (nanos as u64) & 0xff_ffff)
}

pub fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// A 1 GiB hostPath PersistentVolume of `class` at `dir` (the cluster has no provisioner),
/// labelled with the test that made it.
pub fn pv_yaml(name: &str, class: &str, dir: &Path, test: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
  labels: {{starmesh-e2e: {test}}}
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

/// `kubectl apply -n NS` of a manifest given as text.
pub fn apply_text(ns: &str, text: &str) {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(f.path(), text).expect("write manifest");
    kubectl(&["apply", "-n", ns, "-f", f.path().to_str().expect("utf-8")]);
}

/// The bots' JSON report (the object with `entities_lost`) in a pod's log, if printed.
pub fn report_from_logs(logs: &str) -> Option<Value> {
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
