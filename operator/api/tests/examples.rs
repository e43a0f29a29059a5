//! Every example in `manifests/examples` loads, validates, and its gates lead to gates that
//! exist and lead back.

use std::collections::BTreeMap;
use std::path::PathBuf;

use starmesh_api::yaml::{Resource, load_path};
use starmesh_api::{ServerLayout, StarSystem, validate_server_layout, validate_star_system};

fn examples() -> (BTreeMap<String, StarSystem>, Vec<ServerLayout>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples");
    let mut systems = BTreeMap::new();
    let mut layouts = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        for r in load_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            match r {
                Resource::StarSystem(s) => {
                    systems.insert(r_name(&s.metadata), s);
                }
                Resource::ServerLayout(l) => layouts.push(l),
            }
        }
    }
    (systems, layouts)
}

fn r_name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

#[test]
fn every_example_is_valid() {
    let (systems, layouts) = examples();
    for name in ["stanton", "pyro", "nyx"] {
        assert!(systems.contains_key(name), "missing example system {name}");
    }
    assert_eq!(layouts.len(), 2);
    for (name, s) in &systems {
        let errors = validate_star_system(name, &s.spec);
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    for l in &layouts {
        let name = r_name(&l.metadata);
        let system = systems.get(&l.spec.system_ref).map(|s| &s.spec);
        assert!(system.is_some(), "{name}: system {} not among the examples", l.spec.system_ref);
        let errors = validate_server_layout(&name, &l.spec, system);
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

#[test]
fn stanton_is_as_described() {
    let (systems, layouts) = examples();
    let stanton = &systems["stanton"].spec;
    let planets = stanton.locations.iter().filter(|l| l.kind == starmesh_api::LocationKind::Planet);
    assert_eq!(planets.count(), 4);
    let layout = layouts.iter().find(|l| l.spec.system_ref == "stanton").expect("stanton layout");
    assert_eq!(layout.spec.mode, starmesh_api::LayoutMode::Static);
    assert_eq!(layout.spec.servers.len(), 6);
    let pyro = layouts.iter().find(|l| l.spec.system_ref == "pyro").expect("pyro layout");
    assert_eq!(pyro.spec.mode, starmesh_api::LayoutMode::Dynamic);
}

#[test]
fn gates_lead_to_gates_that_lead_back() {
    let (systems, _) = examples();
    for (name, s) in &systems {
        for g in &s.spec.jump_gates {
            let other = systems
                .get(&g.target.system)
                .unwrap_or_else(|| panic!("{name}/{}: no system {}", g.name, g.target.system));
            let back = other
                .spec
                .jump_gates
                .iter()
                .find(|o| o.name == g.target.gate)
                .unwrap_or_else(|| panic!("{name}/{}: no gate {}", g.name, g.target.gate));
            assert_eq!(
                (back.target.system.as_str(), back.target.gate.as_str()),
                (name.as_str(), g.name.as_str())
            );
        }
    }
}
