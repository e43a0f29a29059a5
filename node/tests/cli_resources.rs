//! The replicant binary takes its world from the real resources: StarSystem
//! and ServerLayout YAML (two files, or one holding both), validated by
//! starmesh-api before anything starts.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::process::{Replicant, http_get};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples").join(name)
}

#[test]
fn invalid_resources_exit_non_zero_with_field_paths_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("stanton.yaml");
    let text = std::fs::read_to_string(example("stanton.yaml")).unwrap().replace(
        "{name: arial, kind: moon, parent: hurston",
        "{name: arial, kind: moon, parent: nowhere",
    );
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_starmesh"))
        .args(["replicant", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--system")
        .arg(&bad)
        .arg("--layout")
        .arg(example("stanton-layout.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run starmesh");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.locations[4].parent"), "{err}");
    assert!(out.stdout.is_empty(), "nothing started: {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(!dir.path().join("data").exists(), "no store was opened");
}

#[test]
fn serves_the_stanton_example_with_system_and_shard_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (sys, layout, data) = (example("stanton.yaml"), example("stanton-layout.yaml"), dir.path());
    let r = Replicant::spawn(
        env!("CARGO_BIN_EXE_starmesh"),
        &[
            "--system".as_ref(),
            sys.as_os_str(),
            "--layout".as_ref(),
            layout.as_os_str(),
            "--shard".as_ref(),
            "2".as_ref(),
            "--data-dir".as_ref(),
            data.as_os_str(),
        ],
    );
    r.wait_ready(Duration::from_secs(30));
    let text = http_get(r.metrics, "/metrics").1;
    // Gauges are refreshed at load and once a second; the territories are the layout's.
    for t in ["hurston", "lorville", "deep-space"] {
        let series = format!(
            "starmesh_entities{{shard=\"2\",state=\"resident\",system=\"stanton\",territory=\"{t}\"}} 0"
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    assert!(!text.contains("territory=\"arial\""), "an unnamed moon is Hurston's territory");
}
