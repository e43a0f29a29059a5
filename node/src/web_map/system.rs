//! The static half of the map: where every location and gate is, which
//! territory each location belongs to and which servers the layout names.
//! Computed once at start from the same `starmesh_api::geometry` the
//! replicant's territory map uses, so the map cannot disagree with authority.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use starmesh_api::{LayoutMode, ServerLayoutSpec, StarSystemSpec, geometry};

use crate::territory::DEEP_SPACE;

/// `territories`: every territory the replicant decides authority over
/// (including `deep-space`), as `TerritoryMap::names` returns them.
pub fn system_json(
    name: &str,
    system: &StarSystemSpec,
    layout: &ServerLayoutSpec,
    territories: &[String],
) -> Value {
    let declared: BTreeSet<String> =
        territories.iter().filter(|t| t.as_str() != DEEP_SPACE).cloned().collect();
    let owner_of = geometry::territory_of_locations(system, &declared);
    let locations: Vec<Value> = system
        .locations
        .iter()
        .zip(geometry::place_locations(system))
        .filter_map(|(spec, placed)| {
            // Validation rejects unplaceable locations, so none is skipped in practice.
            let p = placed?;
            let parent = p.parent.filter(|p| !p.is_empty() && *p != system.star.name);
            Some(json!({
                "name": spec.name,
                "kind": spec.kind.as_str(),
                "parent": parent,
                "x": p.centre.x, "y": p.centre.y, "z": p.centre.z,
                "radius": p.radius,
                "territory": owner_of.get(&spec.name).map_or(DEEP_SPACE, String::as_str),
            }))
        })
        .collect();
    let positions = geometry::place_gates(system);
    let gates: Vec<Value> = system
        .jump_gates
        .iter()
        .filter_map(|g| {
            let p = positions.get(&g.name)?;
            Some(json!({
                "name": g.name,
                "x": p.x, "y": p.y, "z": p.z,
                "target": format!("{}/{}", g.target.system, g.target.gate),
            }))
        })
        .collect();
    let servers: Vec<&str> = match layout.mode {
        LayoutMode::Static => layout.servers.iter().map(|s| s.name.as_str()).collect(),
        LayoutMode::Dynamic => Vec::new(),
    };
    json!({
        "name": name,
        "displayName": system.display_name.as_deref().unwrap_or(name),
        "star": {"name": system.star.name, "radius": system.star.radius},
        "locations": locations,
        "gates": gates,
        "territories": territories,
        "servers": servers,
        "tickRate": layout.tick_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanton_places_every_location_and_gate() {
        let s = starmesh_api::yaml::load_star_system(include_str!(
            "../../../manifests/examples/stanton.yaml"
        ))
        .expect("example loads");
        let l = starmesh_api::yaml::load_server_layout(include_str!(
            "../../../manifests/examples/stanton-layout.yaml"
        ))
        .expect("example loads");
        let territories: Vec<String> = crate::territory::TerritoryMap::new(&s.spec, &l.spec)
            .expect("valid")
            .names()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let v = system_json("stanton", &s.spec, &l.spec, &territories);
        let locs = v["locations"].as_array().expect("locations");
        assert_eq!(locs.len(), s.spec.locations.len());
        let find = |n: &str| locs.iter().find(|l| l["name"] == n).expect(n);
        // Arial is a moon nobody names: it belongs to Hurston's territory.
        assert_eq!(find("arial")["territory"], "hurston");
        assert_eq!(find("arial")["parent"], "hurston");
        assert_eq!(find("lorville")["territory"], "lorville");
        assert_eq!(find("hurston")["parent"], Value::Null);
        assert_eq!(v["gates"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["servers"].as_array().map(Vec::len), Some(6));
    }
}
