//! The node's half of the handbook's reference (`docs/src/reference/`): the `starmesh`
//! command line rendered from its clap definition, and every metric family the replicant,
//! game server and gateway register. `node/src/bin/node-reference.rs` writes the pages.

use clap::Command;
use starmesh_api::reference::{MetricDoc, metrics_markdown};

/// `starmesh` and every subcommand: usage, what it does, one table row per flag.
pub fn cli_markdown(cmd: &Command) -> String {
    let mut cmd = cmd.clone();
    // Fills in the generated parts (usage, help/version flags) as `--help` shows them.
    cmd.build();
    let mut s = String::new();
    command(&mut s, &cmd, cmd.get_name(), 2);
    s
}

fn command(s: &mut String, cmd: &Command, path: &str, depth: usize) {
    s.push_str(&format!("{} `{path}`\n\n", "#".repeat(depth)));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        s.push_str(&format!("{}\n\n", about.to_string().trim()));
    }
    let args: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
        .collect();
    let subs: Vec<_> =
        cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help").collect();
    if !args.is_empty() {
        s.push_str("| flag | environment | default | description |\n|---|---|---|---|\n");
        for a in args {
            // A switch (`--json`) takes no value, and its `false` default says nothing.
            let takes = a.get_action().takes_values();
            let value = match a.get_value_names() {
                _ if !takes => String::new(),
                Some(v) => v.iter().map(|n| format!(" <{n}>")).collect(),
                None => format!(" <{}>", a.get_id().as_str().to_uppercase()),
            };
            let name = match (a.get_long(), a.get_short()) {
                (Some(l), Some(c)) => format!("`-{c}`, `--{l}{value}`"),
                (Some(l), None) => format!("`--{l}{value}`"),
                (None, Some(c)) => format!("`-{c}{value}`"),
                (None, None) => format!("`{}`", value.trim()),
            };
            let env = a.get_env().map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
            let defaults: Vec<String> = if takes {
                a.get_default_values()
                    .iter()
                    .map(|d| format!("`{}`", d.to_string_lossy()))
                    .collect()
            } else {
                Vec::new()
            };
            let mut help =
                a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let possible: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|p| !p.is_hide_set())
                .map(|p| format!("`{}`", p.get_name()))
                .collect();
            if !possible.is_empty() && takes {
                help = format!("{help} One of {}.", possible.join(", "));
            }
            if a.is_required_set() {
                help = format!("Required. {help}");
            }
            if matches!(a.get_action(), clap::ArgAction::Append) {
                help = format!("{help} Repeatable.");
            }
            s.push_str(&format!(
                "| {name} | {env} | {} | {} |\n",
                defaults.join(", "),
                cell(&help)
            ));
        }
        s.push('\n');
    }
    for sub in subs {
        command(s, sub, &format!("{path} {}", sub.get_name()), depth + 1);
    }
}

fn cell(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}

/// Each role's metric families, in the order the page lists them.
pub fn metric_sections() -> Vec<(&'static str, &'static str, Vec<MetricDoc>)> {
    vec![
        (
            "Replicant (`starmesh replicant`)",
            "Served on `--metrics-listen` (default `127.0.0.1:9100`); `starmesh local` serves these on `--listen` with the web map.",
            crate::replicant::metrics::Metrics::new().described,
        ),
        (
            "Game server (`starmesh server`)",
            "Served on the server's metrics address. The tick-duration buckets are fractions of the tick period.",
            crate::server::metrics::Metrics::new(1.0 / 30.0).described,
        ),
        (
            "Gateway (`starmesh gateway`)",
            "Served on the gateway's metrics address.",
            crate::gateway::Metrics::new().described,
        ),
    ]
}

/// The node's metric page.
pub fn metrics_page() -> String {
    let mut s = String::from(
        "# Metrics: node\n\nEvery family the `starmesh` binary registers, by role. \
         A histogram also exposes `_bucket`, `_sum` and `_count` series. Labels such as \
         `namespace` and `pod` are added by Prometheus from the scrape target.\n\n",
    );
    for (heading, intro, docs) in metric_sections() {
        s.push_str(&metrics_markdown(heading, intro, &docs));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    #[test]
    fn cli_rows_name_flag_env_default_and_help() {
        let cmd = Command::new("tool").about("A tool.").subcommand(
            Command::new("run")
                .about("Runs it.")
                .arg(
                    Arg::new("port")
                        .long("port")
                        .env("TOOL_PORT")
                        .default_value("80")
                        .help("Port | number"),
                )
                .arg(Arg::new("mode").long("mode").value_parser(["a", "b"]).required(true))
                .arg(Arg::new("peer").long("peer").action(ArgAction::Append).value_name("ADDR"))
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("As JSON"))
                .arg(Arg::new("secret").long("secret").hide(true)),
        );
        let page = cli_markdown(&cmd);
        assert!(page.starts_with("## `tool`\n\nA tool.\n\n"), "{page}");
        for row in [
            "### `tool run`\n\nRuns it.",
            "| `--port <PORT>` | `TOOL_PORT` | `80` | Port \\| number |",
            "| `--mode <MODE>` |  |  | Required. One of `a`, `b`. |",
            "| `--peer <ADDR>` |  |  | Repeatable. |",
            "| `--json` |  |  | As JSON |",
        ] {
            assert!(page.contains(row), "missing {row:?} in\n{page}");
        }
        assert!(!page.contains("secret") && !page.contains("--help"), "{page}");
    }

    #[test]
    fn every_role_registers_something_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (heading, _, docs) in metric_sections() {
            assert!(!docs.is_empty(), "{heading} lists no metric");
            for d in docs {
                assert!(d.name.starts_with("starmesh_"), "{}", d.name);
                assert!(names.insert(d.name.clone()), "{} registered by two roles", d.name);
            }
        }
        assert!(
            names.contains("starmesh_players") && names.contains("starmesh_tick_duration_seconds")
        );
    }
}
