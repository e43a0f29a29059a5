//! What a game server (and a gateway) knows of the StarSystem it serves:
//! its name, its jump gates at their absolute positions
//! (`starmesh_api::geometry::place_gates`) with the systems they lead to, and
//! the places a ship can dock at or land on. Read from `--system FILE`
//! (`STARMESH_SYSTEM_FILE`), the same YAML the replicant and the gateway take.

use std::path::Path;

use starmesh_api::LocationKind;

use crate::model::Vec3;
use crate::wire::pb;

/// A jump gate of this system.
#[derive(Clone, Debug, PartialEq)]
pub struct GateSpot {
    pub name: String,
    pub position: Vec3,
    /// The StarSystem it leads to, and the gate there.
    pub target_system: String,
    pub target_gate: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemView {
    pub name: String,
    pub gates: Vec<GateSpot>,
    /// Stations and landing zones, as waypoints (centre and radius).
    pub docks: Vec<pb::Waypoint>,
}

impl SystemView {
    pub fn from_spec(name: &str, spec: &starmesh_api::StarSystemSpec) -> Self {
        let placed = starmesh_api::geometry::place_gates(spec);
        let gates = spec
            .jump_gates
            .iter()
            .filter_map(|g| {
                let p = placed.get(&g.name)?;
                Some(GateSpot {
                    name: g.name.clone(),
                    position: Vec3::new(p.x, p.y, p.z),
                    target_system: g.target.system.clone(),
                    target_gate: g.target.gate.clone(),
                })
            })
            .collect();
        let docks = starmesh_api::geometry::place_locations(spec)
            .into_iter()
            .flatten()
            .filter(|p| matches!(p.kind, Some(LocationKind::Station | LocationKind::LandingZone)))
            .map(|p| pb::Waypoint {
                name: p.name,
                position: Some(pb::Vec3 { x: p.centre.x, y: p.centre.y, z: p.centre.z }),
                radius: p.radius,
            })
            .collect();
        Self { name: name.to_string(), gates, docks }
    }

    /// The first StarSystem in `path` (other resources in the file are ignored).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        for r in starmesh_api::yaml::load_path(path).map_err(|e| anyhow::anyhow!("{e}"))? {
            if let starmesh_api::Resource::StarSystem(s) = r {
                let name = s.metadata.name.clone().unwrap_or_default();
                return Ok(Self::from_spec(&name, &s.spec));
            }
        }
        anyhow::bail!("no StarSystem in {}", path.display())
    }

    /// The gate whose centre is within `radius` km of `p`, if any.
    pub fn gate_at(&self, p: Vec3, radius: f64) -> Option<&GateSpot> {
        self.gates.iter().find(|g| g.position.dist(p) <= radius)
    }

    /// The gate nearest to `p`.
    pub fn nearest_gate(&self, p: Vec3) -> Option<&GateSpot> {
        self.gates.iter().min_by(|a, b| a.position.dist(p).total_cmp(&b.position.dist(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanton_gates_and_docks() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/stanton.yaml");
        let s = SystemView::load(&path).unwrap();
        assert_eq!(s.name, "stanton");
        let g = s.gates.iter().find(|g| g.name == "stanton-pyro").unwrap();
        assert_eq!((g.target_system.as_str(), g.target_gate.as_str()), ("pyro", "pyro-stanton"));
        assert_eq!(g.position, Vec3::new(-45_000_000.0, 20_000_000.0, 0.0));
        assert_eq!(s.gate_at(g.position, 100.0).map(|g| g.name.as_str()), Some("stanton-pyro"));
        assert!(s.gate_at(Vec3::default(), 100.0).is_none());
        assert!(s.docks.iter().any(|d| d.name == "lorville"));
    }
}
