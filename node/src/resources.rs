//! Reading the replicant's world from the same YAML `kubectl apply` takes
//! (the operator mounts it from a ConfigMap): one StarSystem and one
//! ServerLayout, in one file or two, loaded and validated by `starmesh-api`
//! so every problem is reported with the same field path the operator uses.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use starmesh_api::{Resource, ServerLayout, StarSystem, validation, yaml};

use crate::model::Vec3;
use crate::territory::{TerritoryError, TerritoryMap};

/// What a replicant serves: a StarSystem's territories, for one shard.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// The StarSystem's `metadata.name`: the `system` label of metrics.
    pub system: String,
    pub shard: String,
    pub map: TerritoryMap,
    /// The StarSystem's jump gates, at absolute positions.
    pub gates: Vec<MeshGate>,
}

/// A jump gate of the served StarSystem.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshGate {
    pub name: Arc<str>,
    /// Absolute (`geometry::place_gates`), km.
    pub position: Vec3,
    pub target_system: Arc<str>,
    pub target_gate: Arc<str>,
}

/// Every problem found, one per line, each naming its file or field.
#[derive(Debug)]
pub struct MeshError(pub Vec<String>);

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MeshError {}

/// Loads every file, then requires exactly one StarSystem and one
/// ServerLayout that serves it, both valid.
pub fn load(files: &[PathBuf], shard: &str) -> Result<Mesh, MeshError> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match yaml::load_path(f) {
            Ok(rs) => sources.push((f.display().to_string(), rs)),
            Err(e) => problems.push(format!("{}: {e}", f.display())),
        }
    }
    if !problems.is_empty() {
        return Err(MeshError(problems));
    }
    from_resources(&sources, shard)
}

/// `load` for resources already read, each with the name of where it came
/// from (a file, or a compiled-in example: `starmesh local` checks those
/// from memory, so nothing is written before everything is valid).
pub fn from_resources(sources: &[(String, Vec<Resource>)], shard: &str) -> Result<Mesh, MeshError> {
    let mut systems: Vec<&StarSystem> = Vec::new();
    let mut layouts: Vec<&ServerLayout> = Vec::new();
    let mut problems = Vec::new();
    for (_, rs) in sources {
        for r in rs {
            match r {
                Resource::StarSystem(s) => systems.push(s),
                Resource::ServerLayout(l) => layouts.push(l),
            }
        }
    }
    let (system, layout) = match (systems.as_slice(), layouts.as_slice()) {
        ([s], [l]) => (*s, *l),
        _ => {
            return Err(MeshError(vec![format!(
                "expected exactly one StarSystem and one ServerLayout in {}, found {} and {}",
                sources.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", "),
                systems.len(),
                layouts.len()
            )]));
        }
    };
    let system_name = system.metadata.name.clone().unwrap_or_default();
    let layout_name = layout.metadata.name.clone().unwrap_or_default();
    for e in validation::validate_star_system(&system_name, &system.spec) {
        problems.push(format!("StarSystem {system_name}: {e}"));
    }
    if layout.spec.system_ref != system_name {
        let e = validation::system_not_found(&layout.spec.system_ref);
        problems.push(format!("ServerLayout {layout_name}: {e}"));
    }
    for e in validation::validate_server_layout(&layout_name, &layout.spec, Some(&system.spec)) {
        problems.push(format!("ServerLayout {layout_name}: {e}"));
    }
    if shard.is_empty() || shard.len() > crate::wire::validate::MAX_NAME_LEN {
        problems.push(format!(
            "--shard {shard:?} must be 1..={} bytes",
            crate::wire::validate::MAX_NAME_LEN
        ));
    }
    if !problems.is_empty() {
        return Err(MeshError(problems));
    }
    let map = TerritoryMap::new(&system.spec, &layout.spec)
        .map_err(|e: TerritoryError| MeshError(vec![format!("StarSystem {system_name}: {e}")]))?;
    let placed = starmesh_api::geometry::place_gates(&system.spec);
    let gates = system
        .spec
        .jump_gates
        .iter()
        .filter_map(|g| {
            // Validation guarantees every gate is placed; an unplaced one is skipped, not guessed.
            let p = placed.get(&g.name)?;
            Some(MeshGate {
                name: Arc::from(g.name.as_str()),
                position: Vec3::new(p.x, p.y, p.z),
                target_system: Arc::from(g.target.system.as_str()),
                target_gate: Arc::from(g.target.gate.as_str()),
            })
        })
        .collect();
    Ok(Mesh { system: system_name, shard: shard.to_string(), map, gates })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples").join(name)
    }

    #[test]
    fn loads_two_files_or_one_holding_both() {
        let m = load(&[manifest("stanton.yaml"), manifest("stanton-layout.yaml")], "0").unwrap();
        assert_eq!((m.system.as_str(), m.shard.as_str()), ("stanton", "0"));
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sol.yaml");
        let m = load(&[fixture], "3").unwrap();
        assert_eq!((m.system.as_str(), m.shard.as_str()), ("sol", "3"));
    }

    #[test]
    fn reports_field_paths_and_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        let text = std::fs::read_to_string(manifest("stanton.yaml"))
            .unwrap()
            .replace("radius: 1500000}", "radius: -1}");
        std::fs::write(&bad, text).unwrap();
        let e = load(&[bad, manifest("stanton-layout.yaml")], "0").unwrap_err().to_string();
        assert!(e.contains("spec.locations[0].radius"), "{e}");
        // A layout for another system.
        let e = load(&[manifest("pyro.yaml"), manifest("stanton-layout.yaml")], "0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.systemRef"), "{e}");
        let e = load(&[manifest("stanton.yaml")], "0").unwrap_err().to_string();
        assert!(e.contains("found 1 and 0"), "{e}");
        let e = load(&[dir.path().join("missing.yaml")], "0").unwrap_err().to_string();
        assert!(e.contains("missing.yaml"), "{e}");
    }
}
