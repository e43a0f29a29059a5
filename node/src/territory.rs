//! The territory map the replicant decides authority with, derived from a
//! (validated) StarSystem and ServerLayout through `starmesh_api::geometry`,
//! so the node and the operator agree on where every territory is.
//!
//! A position belongs to the innermost location sphere containing it; that
//! location belongs to its own territory if a server names it, else to its
//! nearest named ancestor's (`geometry::territory_of_locations`); a position
//! in no sphere is in `deep-space`.
//!
//! A dynamic layout's territories are cells: the sphere lookup finds the base
//! territory, then `Partition::cell_of` the leaf cell inside it
//! (`starmesh_api::partition`). The replicant changes the partition at a tick
//! boundary (`replicant::partition`); a static layout never has one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use starmesh_api::geometry;
use starmesh_api::partition::{Partition, PartitionError};
use starmesh_api::{LayoutMode, ServerLayoutSpec, StarSystemSpec};

use crate::model::{TerritoryName, Vec3};

pub const DEEP_SPACE: &str = starmesh_api::DEEP_SPACE;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TerritoryError {
    /// Validation should have caught it; kept so a broken spec can never
    /// produce a map with a hole in it.
    #[error("location {0:?} cannot be placed (broken or cyclic parent chain)")]
    Unplaced(String),
    #[error("location {0:?} needs a finite centre and a finite radius > 0")]
    BadShape(String),
    #[error("a static layout's territories are never split into cells")]
    StaticLayout,
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

#[derive(Clone, Debug)]
struct Sphere {
    center: Vec3,
    radius: f64,
    territory: TerritoryName,
}

#[derive(Clone, Debug)]
pub struct TerritoryMap {
    /// One per location, sorted by radius ascending, so the first hit is the innermost.
    spheres: Vec<Sphere>,
    territories: BTreeSet<TerritoryName>,
    deep_space: TerritoryName,
    static_owner: BTreeMap<TerritoryName, String>,
    dynamic: bool,
    /// The base territories (what a sphere lookup returns), sorted.
    bases: BTreeSet<String>,
    /// Always empty for a static layout.
    partition: Partition,
}

impl TerritoryMap {
    /// Territories are what the layout's static servers name (plus
    /// `deep-space`). A dynamic layout names none: each location orbiting
    /// the star (a planet with its moons, a belt, a Lagrange point) starts
    /// as one territory, owned by any live server.
    pub fn new(system: &StarSystemSpec, layout: &ServerLayoutSpec) -> Result<Self, TerritoryError> {
        let deep_space: TerritoryName = Arc::from(DEEP_SPACE);
        let mut static_owner = BTreeMap::new();
        let declared: BTreeSet<String> = match layout.mode {
            LayoutMode::Static => {
                for s in &layout.servers {
                    for t in &s.territories {
                        static_owner.insert(TerritoryName::from(t.as_str()), s.name.clone());
                    }
                }
                static_owner.keys().map(|t| t.to_string()).collect()
            }
            LayoutMode::Dynamic => system
                .locations
                .iter()
                .filter(|l| {
                    l.parent.as_deref().is_none_or(|p| p.is_empty() || p == system.star.name)
                })
                .map(|l| l.name.clone())
                .collect(),
        };
        let owner_of = geometry::territory_of_locations(system, &declared);
        let mut territories: BTreeSet<TerritoryName> =
            declared.iter().map(|t| TerritoryName::from(t.as_str())).collect();
        territories.insert(deep_space.clone());
        let mut spheres = Vec::with_capacity(system.locations.len());
        for (spec, placed) in system.locations.iter().zip(geometry::place_locations(system)) {
            let p = placed.ok_or_else(|| TerritoryError::Unplaced(spec.name.clone()))?;
            let center = Vec3::new(p.centre.x, p.centre.y, p.centre.z);
            if ![center.x, center.y, center.z, p.radius].iter().all(|c| c.is_finite())
                || p.radius <= 0.0
            {
                return Err(TerritoryError::BadShape(p.name));
            }
            let territory = owner_of
                .get(&p.name)
                .and_then(|t| territories.get(t.as_str()))
                .cloned()
                .unwrap_or_else(|| deep_space.clone());
            spheres.push(Sphere { center, radius: p.radius, territory });
        }
        spheres.sort_by(|a, b| a.radius.total_cmp(&b.radius));
        let bases = territories.iter().map(|t| t.to_string()).collect();
        Ok(Self {
            spheres,
            territories,
            deep_space,
            static_owner,
            dynamic: layout.mode == LayoutMode::Dynamic,
            bases,
            partition: Partition::default(),
        })
    }

    /// The territory a position belongs to: its leaf cell in a dynamic
    /// layout. Linear in the number of locations, which is tens per system,
    /// not entities, plus at most `MAX_SPLIT_DEPTH` plane tests.
    pub fn locate(&self, p: Vec3) -> TerritoryName {
        let base = self.locate_base(p);
        if !self.partition.is_split(&base) {
            return base;
        }
        let cell = self.partition.cell_of(&base, [p.x, p.y, p.z]);
        // Every leaf is in `territories`; the fallback only allocates if not.
        self.territories.get(cell.as_str()).cloned().unwrap_or_else(|| Arc::from(cell))
    }

    /// The base territory (before any split) a position belongs to.
    pub fn locate_base(&self, p: Vec3) -> TerritoryName {
        self.spheres
            .iter()
            .find(|s| s.center.dist2(p) <= s.radius * s.radius)
            .map_or_else(|| self.deep_space.clone(), |s| s.territory.clone())
    }

    /// Whether the layout is dynamic (its territories may be split into cells).
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
    }

    pub fn bases(&self) -> &BTreeSet<String> {
        &self.bases
    }

    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Replaces the partition (validated against the base territories); the
    /// territories become its leaf cells. A static layout refuses any split.
    pub fn set_partition(&mut self, partition: Partition) -> Result<(), TerritoryError> {
        if !self.dynamic && !partition.is_empty() {
            return Err(TerritoryError::StaticLayout);
        }
        partition.validate(&self.bases)?;
        let leaves = partition.leaves(self.bases.iter().map(String::as_str));
        self.territories = leaves
            .into_iter()
            .map(|c| match self.bases.get(&c) {
                // Keep the base's Arc: spheres hand out the same one.
                Some(_) => self
                    .spheres
                    .iter()
                    .find(|s| *s.territory == *c)
                    .map_or_else(|| TerritoryName::from(c.as_str()), |s| s.territory.clone()),
                None => TerritoryName::from(c.as_str()),
            })
            .collect();
        if let Some(d) = self.territories.get(DEEP_SPACE) {
            self.deep_space = d.clone();
        }
        self.partition = partition;
        Ok(())
    }

    /// Every territory, including `deep-space`, sorted.
    pub fn names(&self) -> Vec<TerritoryName> {
        self.territories.iter().cloned().collect()
    }

    pub fn static_owners(&self) -> &BTreeMap<TerritoryName, String> {
        &self.static_owner
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The same test world the integration tests load from disk.
    pub(crate) fn sol() -> (StarSystemSpec, ServerLayoutSpec) {
        let text = include_str!("../tests/fixtures/sol.yaml");
        let mut system = None;
        let mut layout = None;
        for r in starmesh_api::yaml::load_resources(text).expect("fixture loads") {
            match r {
                starmesh_api::Resource::StarSystem(s) => system = Some(s.spec),
                starmesh_api::Resource::ServerLayout(l) => layout = Some(l.spec),
            }
        }
        (system.expect("a StarSystem"), layout.expect("a ServerLayout"))
    }

    pub(crate) fn sol_map() -> TerritoryMap {
        let (s, l) = sol();
        TerritoryMap::new(&s, &l).expect("valid map")
    }

    #[test]
    fn innermost_sphere_wins_and_rest_is_deep_space() {
        let m = sol_map();
        assert_eq!(&*m.locate(Vec3::new(1000.0, 0.0, 0.0)), "earth");
        // Inside both earth (r=300) and moon (r=50): the moon is innermost.
        assert_eq!(&*m.locate(Vec3::new(1210.0, 0.0, 0.0)), "moon");
        assert_eq!(&*m.locate(Vec3::new(-500.0, 0.0, 0.0)), "station");
        assert_eq!(&*m.locate(Vec3::new(0.0, 0.0, 0.0)), DEEP_SPACE);
        assert_eq!(m.names().len(), 4);
        assert_eq!(m.static_owners().get("moon").map(String::as_str), Some("s-moon"));
    }

    #[test]
    fn unnamed_locations_belong_to_their_nearest_named_ancestor() {
        let (s, mut l) = sol();
        // Nobody names the moon or the station any more.
        l.servers.retain(|s| s.name != "s-moon" && s.name != "s-station");
        let m = TerritoryMap::new(&s, &l).unwrap();
        assert_eq!(&*m.locate(Vec3::new(1210.0, 0.0, 0.0)), "earth");
        // The station orbits the star directly: its nearest named ancestor is none.
        assert_eq!(&*m.locate(Vec3::new(-500.0, 0.0, 0.0)), DEEP_SPACE);
        assert_eq!(m.names().len(), 2);
    }

    #[test]
    fn dynamic_layouts_start_with_one_territory_per_top_level_location() {
        let (s, mut l) = sol();
        l.mode = LayoutMode::Dynamic;
        l.servers.clear();
        let m = TerritoryMap::new(&s, &l).unwrap();
        let names: Vec<String> = m.names().iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["deep-space", "earth", "station"]);
        assert_eq!(&*m.locate(Vec3::new(1210.0, 0.0, 0.0)), "earth");
        assert!(m.static_owners().is_empty());
    }

    #[test]
    fn dynamic_cells_locate_by_plane_and_replace_their_base() {
        use starmesh_api::partition::{Axis, Plane};
        let (s, mut l) = sol();
        l.mode = LayoutMode::Dynamic;
        l.servers.clear();
        let mut m = TerritoryMap::new(&s, &l).unwrap();
        let mut p = Partition::default();
        p.split("earth", Plane { axis: Axis::X, at: 1000.0 });
        p.split("earth/1", Plane { axis: Axis::Y, at: 0.0 });
        m.set_partition(p.clone()).unwrap();
        let names: Vec<String> = m.names().iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["deep-space", "earth/0", "earth/1/0", "earth/1/1", "station"]);
        assert_eq!(&*m.locate(Vec3::new(900.0, 0.0, 0.0)), "earth/0");
        assert_eq!(&*m.locate(Vec3::new(1210.0, -1.0, 0.0)), "earth/1/0");
        assert_eq!(&*m.locate(Vec3::new(1210.0, 1.0, 0.0)), "earth/1/1");
        assert_eq!(&*m.locate_base(Vec3::new(1210.0, 1.0, 0.0)), "earth");
        assert_eq!(&*m.locate(Vec3::new(0.0, 0.0, 0.0)), DEEP_SPACE);
        // A split of something that is not a territory is refused, map unchanged.
        let mut bad = p.clone();
        bad.split("mars", Plane { axis: Axis::X, at: 0.0 });
        assert!(m.set_partition(bad).is_err());
        assert_eq!(m.names().len(), 5);
        m.set_partition(Partition::default()).unwrap();
        assert_eq!(m.names().len(), 3);
        assert_eq!(&*m.locate(Vec3::new(1210.0, 1.0, 0.0)), "earth");
        // A static layout has no cells.
        let mut st = sol_map();
        assert!(st.set_partition(p).is_err());
        assert_eq!(st.names().len(), 4);
    }

    #[test]
    fn the_real_stanton_example_maps() {
        let system = starmesh_api::yaml::load_star_system(include_str!(
            "../../manifests/examples/stanton.yaml"
        ))
        .unwrap();
        let layout = starmesh_api::yaml::load_server_layout(include_str!(
            "../../manifests/examples/stanton-layout.yaml"
        ))
        .unwrap();
        let m = TerritoryMap::new(&system.spec, &layout.spec).unwrap();
        // Hurston's centre is on the x axis; its moon Arial is unnamed, so it is Hurston's.
        assert_eq!(&*m.locate(Vec3::new(12_850_000.0, 0.0, 0.0)), "hurston");
        assert_eq!(&*m.locate(Vec3::new(12_850_000.0, 0.0, 1_000.0)), "lorville");
        assert_eq!(m.static_owners().get("lorville").map(String::as_str), Some("cities"));
        assert_eq!(&*m.locate(Vec3::new(0.0, 5_000_000.0, 0.0)), DEEP_SPACE);
    }
}
