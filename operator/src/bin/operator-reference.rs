//! Writes the operator's half of the handbook's reference into DIR (default
//! `docs/src/reference`): `resources.md` (every StarSystem and ServerLayout field, from the
//! CRD schema the API server enforces) and `metrics-operator.md` (every family the
//! operator registers). The node's half is `node/src/bin/node-reference.rs`.
//! `.ci/check-generated.sh` regenerates both and diffs.

use std::path::PathBuf;
use std::process::ExitCode;

use kube::CustomResourceExt;
use starmesh_api::reference::{crd_markdown, header, metrics_markdown};
use starmesh_api::{ServerLayout, StarSystem, crds};

const COMMAND: &str = "cargo run -p starmesh-operator --bin operator-reference";

fn resources() -> Result<String, String> {
    let mut s = header(COMMAND);
    s.push_str(
        "# Resource reference\n\n\
         Every field of the two resources, as the API server enforces it (the CRD schema\n\
         generated from the Rust types in `operator/api/`). The operator checks further rules\n\
         the schema cannot express (unique names, references between locations, territories\n\
         that exist) and reports them as `Valid=False` with the field path.\n\n",
    );
    for crd in [StarSystem::crd(), ServerLayout::crd()] {
        let mut v = serde_json::to_value(&crd).map_err(|e| e.to_string())?;
        crds::for_kubernetes_1_20(&mut v);
        s.push_str(&crd_markdown(&v)?);
    }
    Ok(s)
}

fn metrics() -> Result<String, String> {
    let m = starmesh_operator::metrics::Metrics::new().map_err(|e| e.to_string())?;
    let mut s = header(COMMAND);
    s.push_str("# Metrics: operator\n\n");
    s.push_str(&metrics_markdown(
        "starmesh-operator",
        "Served on `/metrics` of the operator (port `metrics.port` of the chart, 8080). \
         A histogram also exposes `_bucket`, `_sum` and `_count` series.",
        &m.described,
    ));
    Ok(s)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => PathBuf::from("docs/src/reference"),
        [d] if !d.starts_with('-') => PathBuf::from(d),
        _ => {
            eprintln!("usage: operator-reference [DIR]   (default docs/src/reference)");
            return ExitCode::from(2);
        }
    };
    for (file, page) in [("resources.md", resources()), ("metrics-operator.md", metrics())] {
        let path = dir.join(file);
        let written = page.and_then(|text| {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            eprintln!("operator-reference: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
