//! `starmesh local` with a dynamic layout follows its players: the real
//! binary on a small system where every bot spawns at the one station
//! (`fixtures/crowd.yaml`: split above 8 players, merge below 3, cooldown
//! 2 s, 1..=3 servers). While the bots fly, the crowded territory splits and
//! servers are started; once they have left (`--bots-for`), the cells merge
//! back and the extra servers are drained, then stopped. Every decision is in
//! the log with its numbers, the replicant's metrics count the changes, and
//! the run loses nothing.

mod local_support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use local_support::mesh::{LocalMesh, leading_number, summary_rows};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crowd.yaml")
}

/// The value of the first sample of `family` whose labels contain `labels`.
fn sample(metrics: &str, family: &str, labels: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .find(|l| l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The log without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_crowd_splits_its_territory_and_leaving_merges_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let system = fixture().display().to_string();
    let mut run = LocalMesh::spawn_logging(
        &data,
        &["--system", &system, "--bots", "30", "--bots-for", "16s", "--duration", "45s"],
        "warn,starmesh::autoscale=info",
    );
    run.wait_line("autoscaler: split above 8 players", Duration::from_secs(60));
    run.wait_line("running for", Duration::from_secs(30));

    let t = Instant::now();
    let (mut most_cells, mut splits, mut merges) = (0, 0, 0);
    let mut cells_at_end = None;
    while run.child.try_wait().expect("try_wait").is_none() && t.elapsed() < Duration::from_secs(60)
    {
        let (status, m) = run.get("/metrics");
        if status == 200 {
            let cells = sample(&m, "starmesh_cells", "system=\"crowd\"");
            most_cells = most_cells.max(cells.unwrap_or(0));
            cells_at_end = cells.or(cells_at_end);
            splits = splits
                .max(sample(&m, "starmesh_partition_changes_total", "kind=\"split\"").unwrap_or(0));
            merges = merges
                .max(sample(&m, "starmesh_partition_changes_total", "kind=\"merge\"").unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = run.wait_exit(Duration::from_secs(60));
    let out = run.stdout();
    let log = strip_ansi(&run.stderr.lock().unwrap_or_else(|p| p.into_inner()).join("\n"));
    eprintln!(
        "cells: most {most_cells}, at the end {cells_at_end:?}; splits {splits}, merges {merges}"
    );
    assert!(status.success(), "exit {status}\n{}", out.join("\n"));

    // Three base territories (haven, drift, deep-space); the crowd split haven.
    assert!(splits >= 1 && most_cells > 3, "a split: {splits}, {most_cells} cells\n{log}");
    assert!(merges >= 1, "a merge once the bots left: {merges}\n{log}");
    assert_eq!(cells_at_end, Some(3), "merged back to the base territories\n{log}");
    // Each decision is logged with its reason and numbers.
    for needle in [
        "action=\"split\"",
        "above splitAbovePlayers 8",
        "action=\"servers_up\"",
        "action=\"merge\"",
        "below mergeBelowPlayers 3",
        "action=\"servers_down\"",
        "action=\"drained\"",
    ] {
        assert!(log.contains(needle), "{needle} in the log:\n{log}");
    }

    // ...and on the terminal.
    for needle in ["autoscaler: split", "autoscaler: merge", "autoscaler: drained"] {
        assert!(out.iter().any(|l| l.contains(needle)), "{needle} on stdout:\n{}", out.join("\n"));
    }

    let rows = summary_rows(&out);
    let row = |k: &str| {
        rows.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} row in {rows:?}"))
    };
    assert_eq!(leading_number(&row("lost")), 0, "{rows:?}");
    // Servers went only once drained: no cell was ever taken from a dead one.
    assert_eq!(leading_number(&row("takeovers")), 0, "{rows:?}");
}
