//! `starmesh local` end to end, as a user runs it: the real binary with bots
//! for a few seconds, `/metrics` scraped mid-run and checked by `promtool`,
//! the summary table read, the store read back, and a second run on the same
//! `--data` resuming exactly those entities.

mod local_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use local_support::mesh::{LocalMesh, leading_number, summary_rows};
use starmesh_node::store::{Store, embedded::EmbeddedStore};

fn promtool() -> &'static str {
    let ok = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "promtool is missing: install Debian's prometheus package (e2e/install-deps.sh)");
    "promtool"
}

fn check_metrics(text: &str) {
    let mut p = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut p.stdin.take().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = p.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Entities in the store: id -> (version, position rounded to km).
fn stored(data: &std::path::Path) -> BTreeMap<u64, (u64, [i64; 3])> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = EmbeddedStore::open(data).expect("open the store after the run");
    rt.block_on(store.load_all())
        .expect("load")
        .into_iter()
        .map(|e| {
            let p = [
                e.position.x.round() as i64,
                e.position.y.round() as i64,
                e.position.z.round() as i64,
            ];
            (e.id, (e.version, p))
        })
        .collect()
}

#[test]
fn local_runs_summarises_exports_metrics_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let mut run = LocalMesh::spawn(&data, &["--duration", "8s", "--bots", "20"]);
    run.wait_line("web map: http://", Duration::from_secs(60));
    run.wait_line("running for", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let (status, metrics) = run.get("/metrics");
    assert_eq!(status, 200, "{metrics}");
    for name in [
        "starmesh_players",
        "starmesh_entities",
        "starmesh_handoffs_total",
        "starmesh_commits_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    check_metrics(&metrics);
    let (status, page) = run.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("/map.js"), "the map page");

    let st = run.wait_exit(Duration::from_secs(60));
    let out = run.stdout();
    assert!(st.success(), "exit {st}:\n{}", out.join("\n"));
    let rows: BTreeMap<String, String> = summary_rows(&out).into_iter().collect();
    for k in ["players", "entities", "handoffs", "gate transfers", "takeovers", "tick p99", "lost"]
    {
        assert!(rows.contains_key(k), "summary row {k}: {rows:?}");
    }
    assert_eq!(leading_number(&rows["lost"]), 0, "{rows:?}");
    assert!(rows["tick p99"].ends_with("ms"), "servers ticked: {rows:?}");
    let entities = leading_number(&rows["entities"]);
    let store = stored(&data);
    assert_eq!(store.len() as u64, entities, "the summary counts what the store holds");
    assert!(entities > 0, "bots created entities: {rows:?}");
    drop(run);

    // Same --data, nothing to move them: the entities are back, where they were.
    let mut again = LocalMesh::spawn(&data, &["--duration", "3s", "--bots", "0", "--servers", "0"]);
    let resumed = again.wait_line("entities resumed from the store", Duration::from_secs(60));
    assert!(resumed.contains(&format!("({entities} entities resumed")), "{resumed}");
    again.wait_line("running for", Duration::from_secs(30));
    let want: BTreeMap<u64, [i64; 3]> = store.iter().map(|(id, (_, p))| (*id, *p)).collect();
    // The map's sampler needs one period to see the loaded world.
    let t = std::time::Instant::now();
    let shown = loop {
        let (_, state) = again.get("/api/state");
        let state: serde_json::Value = serde_json::from_str(&state).expect("state JSON");
        let shown: BTreeMap<u64, [i64; 3]> = state["entities"]
            .as_array()
            .expect("entities")
            .iter()
            .map(|r| {
                let id = r[0].as_str().and_then(|s| s.parse().ok()).expect("id as a string");
                let n = |i: usize| r[i].as_f64().expect("number");
                (id, [n(2) as i64, n(3) as i64, n(4) as i64])
            })
            .collect();
        if shown.len() == want.len() || t.elapsed() > Duration::from_secs(5) {
            break shown;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(shown, want, "every entity resumed at its stored position");
    let st = again.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "{}", again.stdout().join("\n"));
    let rows: BTreeMap<String, String> = summary_rows(&again.stdout()).into_iter().collect();
    assert_eq!(leading_number(&rows["entities"]), entities, "{rows:?}");
    assert_eq!(stored(&data), store, "a run with nothing moving changes nothing");
}
