//! Where things are: absolute positions of locations and gates, and the spatial shape of
//! every territory. Pure functions over a (validated) `StarSystemSpec`.

use std::collections::{BTreeMap, HashMap};

use crate::{DEEP_SPACE, LocationKind, StarSystemSpec, Vector3};

impl Vector3 {
    pub const ZERO: Vector3 = Vector3 { x: 0.0, y: 0.0, z: 0.0 };

    #[allow(clippy::should_implement_trait)] // a plain method keeps call sites explicit
    pub fn add(self, other: Vector3) -> Vector3 {
        Vector3 { x: self.x + other.x, y: self.y + other.y, z: self.z + other.z }
    }

    pub fn distance(self, other: Vector3) -> f64 {
        let (dx, dy, dz) = (self.x - other.x, self.y - other.y, self.z - other.z);
        (dx * dx + dy * dy + dz * dz).sqrt()
    }
}

/// A location with its absolute position (relative to the star).
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedLocation {
    pub name: String,
    pub kind: Option<LocationKind>,
    pub parent: Option<String>,
    pub centre: Vector3,
    pub radius: f64,
}

/// The spatial extent of one territory: a sphere. Spheres nest; a point belongs to the
/// smallest sphere containing it, and to `deep-space` when none does.
#[derive(Debug, Clone, PartialEq)]
pub struct TerritoryShape {
    pub name: String,
    pub centre: Vector3,
    pub radius: f64,
}

/// Absolute positions of every location, in the order of the spec; `None` for a location
/// whose parent chain is broken or cyclic (validation reports those).
pub fn place_locations(spec: &StarSystemSpec) -> Vec<Option<PlacedLocation>> {
    let by_name: HashMap<&str, usize> =
        spec.locations.iter().enumerate().map(|(i, l)| (l.name.as_str(), i)).collect();
    let mut memo: HashMap<usize, Option<Vector3>> = HashMap::new();
    (0..spec.locations.len())
        .map(|i| {
            let centre = absolute_centre(spec, &by_name, i, &mut memo, 0)?;
            let l = &spec.locations[i];
            Some(PlacedLocation {
                name: l.name.clone(),
                kind: Some(l.kind),
                parent: l.parent.clone(),
                centre,
                radius: l.radius,
            })
        })
        .collect()
}

fn absolute_centre(
    spec: &StarSystemSpec,
    by_name: &HashMap<&str, usize>,
    index: usize,
    memo: &mut HashMap<usize, Option<Vector3>>,
    depth: usize,
) -> Option<Vector3> {
    if let Some(known) = memo.get(&index) {
        return *known;
    }
    // Deeper than the number of locations means a cycle.
    if depth > spec.locations.len() {
        return None;
    }
    let location = &spec.locations[index];
    let parent_centre = match location.parent.as_deref() {
        None | Some("") => Some(Vector3::ZERO),
        Some(p) if p == spec.star.name => Some(Vector3::ZERO),
        Some(p) => match by_name.get(p) {
            Some(&pi) => absolute_centre(spec, by_name, pi, memo, depth + 1),
            None => None,
        },
    };
    let offset = match (location.position, location.orbit) {
        (Some(p), None) => Some(p),
        (None, Some(o)) => {
            let a = o.angle_degrees.to_radians();
            Some(Vector3 { x: o.radius * a.cos(), y: o.radius * a.sin(), z: 0.0 })
        }
        _ => None,
    };
    let centre = match (parent_centre, offset) {
        (Some(c), Some(o)) => Some(c.add(o)),
        _ => None,
    };
    memo.insert(index, centre);
    centre
}

/// Absolute position of each gate by name.
pub fn place_gates(spec: &StarSystemSpec) -> BTreeMap<String, Vector3> {
    let placed = place_locations(spec);
    let centres: HashMap<&str, Vector3> =
        placed.iter().flatten().map(|p| (p.name.as_str(), p.centre)).collect();
    spec.jump_gates
        .iter()
        .filter_map(|g| {
            let base = match g.parent.as_deref() {
                None | Some("") => Some(Vector3::ZERO),
                Some(p) if p == spec.star.name => Some(Vector3::ZERO),
                Some(p) => centres.get(p).copied(),
            }?;
            Some((g.name.clone(), base.add(g.position)))
        })
        .collect()
}

/// Every location's sphere as a territory shape, plus nothing for deep space (it is the
/// remainder). Static layouts pick which of these a server owns; a location a server does
/// not name belongs to the territory of its nearest named ancestor.
pub fn location_shapes(spec: &StarSystemSpec) -> Vec<TerritoryShape> {
    place_locations(spec)
        .into_iter()
        .flatten()
        .map(|p| TerritoryShape { name: p.name, centre: p.centre, radius: p.radius })
        .collect()
}

/// The location whose sphere is the smallest containing `point`, or `deep-space`.
pub fn location_at(shapes: &[TerritoryShape], point: Vector3) -> &str {
    shapes
        .iter()
        .filter(|s| s.centre.distance(point) <= s.radius)
        .min_by(|a, b| a.radius.total_cmp(&b.radius))
        .map(|s| s.name.as_str())
        .unwrap_or(DEEP_SPACE)
}

/// For each location, the territory it belongs to given the set of territory names a layout
/// declares: the location itself if declared, else its nearest declared ancestor, else
/// `deep-space`.
pub fn territory_of_locations(
    spec: &StarSystemSpec,
    declared: &std::collections::BTreeSet<String>,
) -> BTreeMap<String, String> {
    let parents: HashMap<&str, &str> = spec
        .locations
        .iter()
        .filter_map(|l| l.parent.as_deref().map(|p| (l.name.as_str(), p)))
        .collect();
    spec.locations
        .iter()
        .map(|l| {
            let mut current = l.name.as_str();
            let mut steps = 0;
            let territory = loop {
                if declared.contains(current) {
                    break current.to_string();
                }
                match parents.get(current) {
                    Some(p) if steps <= spec.locations.len() => {
                        current = p;
                        steps += 1;
                    }
                    _ => break DEEP_SPACE.to_string(),
                }
            };
            (l.name.clone(), territory)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, Orbit, Star};

    fn loc(
        name: &str,
        kind: LocationKind,
        parent: Option<&str>,
        orbit: f64,
        radius: f64,
    ) -> Location {
        Location {
            name: name.into(),
            kind,
            parent: parent.map(Into::into),
            position: None,
            orbit: Some(Orbit { radius: orbit, angle_degrees: 0.0 }),
            radius,
        }
    }

    fn system() -> StarSystemSpec {
        StarSystemSpec {
            display_name: None,
            star: Star { name: "sun".into(), radius: 1000.0 },
            locations: vec![
                loc("rock", LocationKind::Planet, None, 100_000.0, 5_000.0),
                loc("pebble", LocationKind::Moon, Some("rock"), 2_000.0, 500.0),
                loc("camp", LocationKind::LandingZone, Some("pebble"), 100.0, 10.0),
            ],
            jump_gates: vec![],
        }
    }

    #[test]
    fn nested_orbits_add_up() {
        let placed = place_locations(&system());
        let camp = placed[2].as_ref().map(|p| p.centre);
        assert_eq!(camp, Some(Vector3 { x: 102_100.0, y: 0.0, z: 0.0 }));
    }

    #[test]
    fn innermost_sphere_wins_and_the_rest_is_deep_space() {
        let shapes = location_shapes(&system());
        assert_eq!(location_at(&shapes, Vector3 { x: 102_105.0, y: 0.0, z: 0.0 }), "camp");
        assert_eq!(location_at(&shapes, Vector3 { x: 102_300.0, y: 0.0, z: 0.0 }), "pebble");
        assert_eq!(location_at(&shapes, Vector3 { x: 98_000.0, y: 0.0, z: 0.0 }), "rock");
        assert_eq!(location_at(&shapes, Vector3 { x: 0.0, y: 50_000.0, z: 0.0 }), DEEP_SPACE);
    }

    #[test]
    fn undeclared_locations_fall_to_their_nearest_declared_ancestor() {
        let declared = ["rock".to_string(), "camp".to_string()].into_iter().collect();
        let map = territory_of_locations(&system(), &declared);
        assert_eq!(map["pebble"], "rock");
        assert_eq!(map["camp"], "camp");
    }

    #[test]
    fn a_cycle_places_nothing() {
        let mut spec = system();
        spec.locations[0].parent = Some("camp".into());
        assert!(place_locations(&spec).iter().all(Option::is_none));
    }
}
