//! Writes the node's half of the handbook's reference into DIR (default
//! `docs/src/reference`): `cli.md` (every `starmesh` subcommand and flag, from the clap
//! definition in `node/src/main.rs`, included below so it is the very same one) and
//! `metrics-node.md` (every family the replicant, game server and gateway register).
//! The operator's half is `operator/src/bin/operator-reference.rs`.
//! `.ci/check-generated.sh` regenerates both and diffs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use starmesh_api::reference::header;

// The binary's own definition; its `main` and helpers are unused here.
#[allow(dead_code)]
#[path = "../main.rs"]
mod starmesh_main;

const COMMAND: &str = "cargo run -p starmesh-node --bin node-reference";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => PathBuf::from("docs/src/reference"),
        [d] if !d.starts_with('-') => PathBuf::from(d),
        _ => {
            eprintln!("usage: node-reference [DIR]   (default docs/src/reference)");
            return ExitCode::from(2);
        }
    };
    let cli = format!(
        "{}# Command line: `starmesh`\n\nOne binary, a subcommand per role. Every flag with an \
         environment variable can be set through it (the operator sets them in the pods).\n\n{}",
        header(COMMAND),
        starmesh_node::reference::cli_markdown(&starmesh_main::Cli::command())
    );
    let metrics = format!("{}{}", header(COMMAND), starmesh_node::reference::metrics_page());
    for (file, text) in [("cli.md", cli), ("metrics-node.md", metrics)] {
        let path = dir.join(file);
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("node-reference: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
