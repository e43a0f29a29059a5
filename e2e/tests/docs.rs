//! Every ```` ```sh,cluster ```` block of the handbook runs against a real cluster: the
//! pages in `docs/src/SUMMARY.md` order (install without Helm and remove it, install with
//! Helm, the walk-through to bots playing, monitoring, the runbooks, upgrade, uninstall),
//! each page as one bash script from the repository root with `kubectl` and `helm` first
//! on `PATH`. The first failing page stops the run with its snippet's line and output.
//! The convention: `docs/README.md`; the extractor: `docs/snippets.rs`.
//!
//! Needs a FULL cluster with both images loaded (`e2e/run-cluster-tests.sh`). The
//! cluster must offer what kind offers and the pages assume: a default StorageClass. The
//! harness has no provisioner, so this test makes one (hostPath PersistentVolumes in a
//! default class, like `mesh.rs` does) before the pages run, and removes it after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use starmesh_e2e::repo_root;
use support::{envs, kubectl, kubectl_raw, tools};

mod support;

#[path = "../../docs/snippets.rs"]
mod snippets;

const CLASS: &str = "starmesh-docs";
/// One page's budget (the walk-through waits for Ready and a 90 s bots run).
const PAGE_TIMEOUT: Duration = Duration::from_secs(600);

fn apply_text(text: &str) {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(f.path(), text).expect("write manifest");
    kubectl(&["apply", "-f", f.path().to_str().expect("utf-8")]);
}

/// What the pages' cluster needs and kind has: a default StorageClass that binds the
/// replicants' claims. Removed on drop, pass or fail.
struct Storage {
    dirs: Vec<PathBuf>,
}

impl Storage {
    fn make(volumes: usize) -> Storage {
        apply_text(&format!(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: {CLASS}\n  annotations: {{storageclass.kubernetes.io/is-default-class: \"true\"}}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n"
        ));
        let mut dirs = Vec::new();
        for i in 0..volumes {
            let dir =
                std::env::temp_dir().join(format!("starmesh-docs-pv-{}-{i}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("PV folder");
            // The replicant runs as 65532; hostPath ignores fsGroup.
            std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).expect("chown PV folder");
            apply_text(&format!(
                "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {CLASS}-{i}\n  labels: {{starmesh-e2e: docs}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Delete\n  storageClassName: {CLASS}\n  hostPath: {{path: \"{}\", type: Directory}}\n",
                dir.display()
            ));
            dirs.push(dir);
        }
        Storage { dirs }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let _ = kubectl_raw(&["delete", "pv", "-l", "starmesh-e2e=docs", "--wait=false"]);
        let _ = kubectl_raw(&["delete", "storageclass", CLASS]);
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A folder with `kubectl` and `helm` (the harness's) to put first on `PATH`.
fn tool_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(&tools().helm, dir.path().join("helm")).expect("helm link");
    std::os::unix::fs::symlink("/usr/bin/kubectl", dir.path().join("kubectl"))
        .expect("kubectl link");
    dir
}

fn run_page(page: &str, script: &str, bin: &Path) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let log = tempfile::NamedTempFile::new().expect("log file");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(script).current_dir(repo_root()).env("PATH", path);
    for (k, v) in envs(tools()) {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .process_group(0)
        .spawn()
        .expect("spawn bash");
    let t0 = Instant::now();
    let ok = loop {
        match child.try_wait().expect("wait bash") {
            Some(s) => break s.success(),
            None if t0.elapsed() > PAGE_TIMEOUT => break false,
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    // Whatever is left of the page's process group goes, pass or fail.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = child.wait();
    let out = std::fs::read_to_string(log.path()).unwrap_or_default();
    println!("TIMING docs: {page}: {:.1}s", t0.elapsed().as_secs_f64());
    (ok, out)
}

#[test]
fn every_cluster_snippet_of_the_handbook_runs() {
    let src = repo_root().join("docs/src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("SUMMARY.md");
    let _storage = Storage::make(2);
    let bin = tool_dir();
    let mut ran = 0;
    for page in snippets::pages(&summary) {
        let text =
            std::fs::read_to_string(src.join(&page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let s = snippets::snippets(&text).unwrap_or_else(|e| panic!("docs/src/{page}: {e}"));
        let Some(script) =
            snippets::script(&format!("docs/src/{page}"), &s, snippets::Runner::Cluster)
        else {
            continue;
        };
        let (ok, out) = run_page(&page, &script, bin.path());
        println!("--- docs/src/{page}\n{out}");
        assert!(ok, "docs/src/{page}: its sh,cluster snippets failed (output above)");
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} pages with cluster snippets ran");
}
