//! The Grafana dashboard and the alert rules of `monitoring/` (shipped by the chart) are
//! checked against the code: valid JSON; every PromQL (panels, rules, the handbook's
//! ```` ```promql ```` blocks) parses with the real `promtool` and names only metrics of
//! the generated reference (`docs/src/reference/metrics-*.md`, itself diffed against the
//! registries by `.ci/check-generated.sh`); the rules pass `promtool check rules` and
//! their unit tests (`promtool test rules monitoring/alerts.test.yaml`); every alert
//! links a runbook page that exists; the chart ships both files unchanged.
//!
//! Needs `promtool` (Debian's `prometheus`, from e2e/install-deps.sh) and helm
//! (e2e/cluster/install-helm.sh); without them it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use starmesh_api::reference::metric_names_in;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).current_dir(repo()).output().unwrap_or_else(|e| {
        panic!("cannot run {program} (install it with e2e/install-deps.sh): {e}")
    })
}

fn must(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// Every metric the generated reference lists, histogram series included.
fn reference() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for page in ["docs/src/reference/metrics-node.md", "docs/src/reference/metrics-operator.md"] {
        names.extend(metric_names_in(&read(page)));
    }
    assert!(names.len() > 40, "the reference lists only {} metrics", names.len());
    names
}

/// The starmesh metric names a PromQL expression uses.
fn metrics_in(promql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = promql;
    while let Some(at) = rest.find("starmesh_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Part of a longer identifier (`x_starmesh_y`) or a label value (`"starmesh_..."`) is not a metric.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// Grafana's variables replaced by values, so the expression is plain PromQL.
fn plain_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$system", ".*")
}

/// Each `(where, expr)` must parse: written as recording rules, checked by promtool.
fn promtool_parses(exprs: &[(String, String)]) {
    let mut rules = String::from("groups:\n  - name: parse-check\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(&plain_promql(e)).expect("json string");
        rules.push_str(&format!(
            "      - record: starmesh_check:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(f.path(), rules).expect("write rules");
    let out = run("promtool", &["check", "rules", f.path().to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "promtool cannot parse some PromQL ({} expressions: {:?}):\n{}",
        exprs.len(),
        exprs.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn assert_known(place: &str, expr: &str, known: &BTreeSet<String>) {
    let used = metrics_in(expr);
    assert!(!used.is_empty(), "{place}: no starmesh metric in {expr:?}");
    for m in used {
        assert!(
            known.contains(&m),
            "{place}: {m} is not in the generated metric reference (docs/src/reference/)"
        );
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("monitoring/dashboard.json"))
        .expect("monitoring/dashboard.json is valid JSON")
}

#[test]
fn promql_scanner_finds_metric_names_only() {
    let e = r#"sum by (pod) (rate(starmesh_tick_overruns_total{link="starmesh_x"}[5m])) / starmesh_a:b + not_starmesh_c"#;
    assert_eq!(
        metrics_in(e),
        BTreeSet::from(["starmesh_tick_overruns_total".into(), "starmesh_a".into()])
    );
}

#[test]
fn dashboard_panels_use_only_metrics_that_exist_and_parse() {
    let known = reference();
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut titles = String::new();
    for p in panels {
        let id = p["id"].as_i64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let title = p["title"].as_str().expect("panel title");
        titles.push_str(&format!("{title}\n"));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: data source is the variable");
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("{title}: no targets"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: target without expr"));
            assert_known(&format!("panel {title:?}"), expr, &known);
            exprs.push((format!("panel {title}"), expr.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = v["query"]["query"].as_str() {
            assert_known(&format!("variable {}", v["name"]), q, &known);
        }
    }
    // What the dashboard must show (issue 12), by panel title.
    for topic in [
        "Players by system",
        "Players by shard",
        "Players by territory",
        "tick duration",
        "Handoffs",
        "Takeovers",
        "Replication bandwidth",
        "Store backlog",
        "Scaling decisions",
    ] {
        assert!(titles.contains(topic), "no panel about {topic:?}; titles:\n{titles}");
    }
    promtool_parses(&exprs);
}

/// `alerts.yaml` as JSON: (alert name, expr, runbook_url) per rule.
fn alert_rules() -> Vec<(String, String, String)> {
    let v: Value =
        serde_saphyr::from_str(&read("monitoring/alerts.yaml")).expect("alerts.yaml is YAML");
    let mut out = Vec::new();
    for g in v["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("every rule is an alert").to_string();
            let expr = r["expr"].as_str().expect("expr").to_string();
            let url = r["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no runbook_url"));
            out.push((name, expr, url.to_string()));
        }
    }
    out
}

#[test]
fn every_alert_uses_existing_metrics_and_links_its_runbook() {
    let known = reference();
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "StarmeshShardNearCapacity",
            "StarmeshTickOverruns",
            "StarmeshStaleEpochRejectionsSpiking",
            "StarmeshStoreBacklogGrowing",
            "StarmeshDrainStuck",
            "StarmeshOperatorNotReconciling",
        ])
    );
    let prefix = "https://github.com/starmesh/starmesh/blob/main/";
    for (name, expr, url) in &rules {
        assert_known(name, expr, &known);
        let rel = url
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not under {prefix}"));
        let page = read(rel);
        assert!(page.starts_with(&format!("# {name}\n")), "{rel} is not the runbook of {name}");
        for part in
            ["## What it means", "## Confirm it", "## What to do", "```sh,cluster", "```promql"]
        {
            assert!(page.contains(part), "{rel} lacks {part:?}");
        }
        let summary = read("docs/src/SUMMARY.md");
        assert!(
            summary.contains(rel.trim_start_matches("docs/src/")),
            "{rel} is not in SUMMARY.md"
        );
    }
}

#[test]
fn promql_blocks_of_the_handbook_parse_and_use_existing_metrics() {
    let known = reference();
    let mut exprs = Vec::new();
    let mut stack = vec![repo().join("docs/src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("docs dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("page");
            let mut block: Option<String> = None;
            for line in text.lines() {
                match (&mut block, line.trim()) {
                    (None, "```promql") => block = Some(String::new()),
                    (Some(b), "```") => {
                        let place = format!("{}", p.strip_prefix(repo()).unwrap_or(&p).display());
                        assert_known(&place, b, &known);
                        exprs.push((place, std::mem::take(b)));
                        block = None;
                    }
                    (Some(b), _) => {
                        b.push_str(line);
                        b.push('\n');
                    }
                    (None, _) => {}
                }
            }
        }
    }
    assert!(exprs.len() >= 12, "only {} promql blocks in the handbook", exprs.len());
    promtool_parses(&exprs);
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let checked = must("promtool", &["check", "rules", "monitoring/alerts.yaml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    // Run from monitoring/: the test file names its rule file relative to itself.
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yaml"])
        .current_dir(repo().join("monitoring"))
        .output()
        .expect("run promtool (install it with e2e/install-deps.sh)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("SUCCESS"),
        "promtool test rules failed:\n{text}"
    );
    // Every alert has a unit test.
    let tests = read("monitoring/alerts.test.yaml");
    for (name, ..) in alert_rules() {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no promtool unit test"
        );
    }
}

fn helm() -> String {
    let out = run("bash", &["e2e/cluster/install-helm.sh"]);
    assert!(
        out.status.success(),
        "install-helm.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().last().expect("helm path").to_string()
}

fn render(helm: &str, template: &str, set: &str) -> Value {
    let yaml = must(
        helm,
        &[
            "template",
            "starmesh",
            "charts/starmesh",
            "--namespace",
            "starmesh-system",
            "--set",
            set,
            "--show-only",
            template,
        ],
    );
    // `must` joins stderr (helm's note about the crds symlink); keep the document.
    let doc = &yaml[yaml.find("---").unwrap_or(0)..];
    let doc: String = doc
        .lines()
        .filter(|l| !l.contains("found symbolic link"))
        .map(|l| format!("{l}\n"))
        .collect();
    serde_saphyr::from_str(&doc).unwrap_or_else(|e| panic!("{template}: {e}\n{doc}"))
}

#[test]
fn the_chart_ships_the_dashboard_and_the_rules_unchanged_and_only_when_asked() {
    let helm = helm();
    let cm =
        render(&helm, "templates/monitoring-dashboard.yaml", "monitoring.dashboard.enabled=true");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm["data"]["starmesh.json"].as_str().expect("data")).expect("JSON");
    assert_eq!(shipped, dashboard());

    let pr = render(
        &helm,
        "templates/monitoring-prometheusrule.yaml",
        "monitoring.prometheusRule.enabled=true",
    );
    assert_eq!(pr["kind"], "PrometheusRule");
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    let rules: Value =
        serde_saphyr::from_str(&read("monitoring/alerts.yaml")).expect("alerts.yaml");
    assert_eq!(pr["spec"], rules);

    // Off by default: the default render (manifests/install.yaml) has neither.
    let all =
        must(&helm, &["template", "starmesh", "charts/starmesh", "--namespace", "starmesh-system"]);
    assert!(
        !all.contains("kind: PrometheusRule") && !all.contains("grafana_dashboard"),
        "monitoring objects rendered by default"
    );
}
