//! Runs the bad-resource corpus (`e2e/corpus/invalid`) through the loader and validation:
//! `operator` and `yaml` cases must fail with the expected reason and field; `schema` cases
//! (refused by the API server) must be refused here too, so `starmesh local` is no laxer.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use starmesh_api::validation::system_not_found;
use starmesh_api::yaml::{Resource, load_path};
use starmesh_api::{FieldError, validate_server_layout, validate_star_system};

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    file: String,
    by: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    field: String,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e/corpus/invalid")
}

/// Validation errors of every resource of a file, by resource name.
fn validate(resources: &[Resource]) -> BTreeMap<String, Vec<FieldError>> {
    let systems: BTreeMap<&str, _> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::StarSystem(s) => Some((r.name(), &s.spec)),
            Resource::ServerLayout(_) => None,
        })
        .collect();
    resources
        .iter()
        .map(|r| {
            let errors = match r {
                Resource::StarSystem(s) => validate_star_system(r.name(), &s.spec),
                Resource::ServerLayout(l) => {
                    let system = systems.get(l.spec.system_ref.as_str()).copied();
                    let mut e = validate_server_layout(r.name(), &l.spec, system);
                    // Schema cases name the example system, which is not in their file.
                    if system.is_none() && l.spec.system_ref != "stanton" {
                        e.push(system_not_found(&l.spec.system_ref));
                    }
                    e
                }
            };
            (r.name().to_string(), errors)
        })
        .collect()
}

#[test]
fn every_bad_resource_is_refused_as_expected() {
    let text = std::fs::read_to_string(dir().join("expected.yaml")).expect("expected.yaml");
    let expected: Expected = serde_saphyr::from_str(&text).expect("expected.yaml parses");
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("corpus dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml") && f != "expected.yaml")
        .collect();
    files.sort();
    let mut listed: Vec<String> = expected.cases.iter().map(|c| c.file.clone()).collect();
    listed.sort();
    assert_eq!(files, listed, "every corpus file has exactly one entry in expected.yaml");

    let mut failures = Vec::new();
    for case in &expected.cases {
        let loaded = load_path(&dir().join(&case.file));
        let outcome = match (&loaded, case.by.as_str()) {
            (Err(e), "yaml") => {
                let ok = Some(e.reason) == case.reason.as_deref() && e.field == case.field;
                ok.then_some(()).ok_or(format!("loader said {} at {:?}: {e}", e.reason, e.field))
            }
            (Err(e), "schema") => {
                // The schema refuses it; the loader refusing it too is enough.
                let _ = e;
                Ok(())
            }
            (Err(e), _) => Err(format!("the loader refused it: {e}")),
            (Ok(_), "yaml") => Err("the loader accepted it".to_string()),
            (Ok(resources), by) => {
                let all = validate(resources);
                let errors: Vec<&FieldError> = match &case.name {
                    Some(n) => all.get(n).map(|e| e.iter().collect()).unwrap_or_default(),
                    None => all.values().flatten().collect(),
                };
                let hit = errors.iter().any(|e| {
                    (by == "schema" || Some(e.reason) == case.reason.as_deref())
                        && e.field == case.field
                });
                hit.then_some(()).ok_or(format!("validation found {errors:?}"))
            }
        };
        if let Err(why) = outcome {
            failures.push(format!(
                "{} ({} {:?} {}): {why}",
                case.file, case.by, case.reason, case.field
            ));
        }
    }
    assert!(failures.is_empty(), "corpus mismatches:\n{}", failures.join("\n"));
}
