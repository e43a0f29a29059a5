//! Cells: how a dynamic layout's territories are split by load. Pure; shared by the
//! replicant (which locates entities in cells and hands them over), the operator and
//! `starmesh local` (which decide the splits), so all three name and place cells alike.
//!
//! A dynamic layout starts with one territory per top-level location plus `deep-space`
//! (its *base* territories). Any leaf cell can be split in two by an axis-aligned plane
//! (a k-d tree): `hurston` becomes `hurston/0` (the side below the plane) and
//! `hurston/1` (at or above it), `hurston/1` may become `hurston/1/0` and `hurston/1/1`,
//! and so on. Merging is the inverse: two sibling leaves give their parent back. Names
//! are stable, readable in `kubectl get -o yaml` and usable as Prometheus label values;
//! `/` cannot occur in a location name (DNS-1123), so the base territory is always the
//! part before the first `/`.
//!
//! Why planes at the players' median rather than fixed octants: players crowd into
//! landing zones, so a fixed grid splits empty space; the median halves the load.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Deepest split: 2^6 = 64 cells per base territory at most, which bounds the work of
/// locating an entity and the size of the layout's status.
pub const MAX_SPLIT_DEPTH: usize = 6;

/// The separator between a cell and its children.
pub const SEPARATOR: char = '/';

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    X,
    Y,
    Z,
}

impl Axis {
    pub const ALL: [Axis; 3] = [Axis::X, Axis::Y, Axis::Z];

    pub fn index(self) -> usize {
        match self {
            Axis::X => 0,
            Axis::Y => 1,
            Axis::Z => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Axis::X => "x",
            Axis::Y => "y",
            Axis::Z => "z",
        }
    }
}

/// One split: `cell` is divided by the plane `position[axis] = at`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Plane {
    pub axis: Axis,
    /// Kilometres, in the star system's absolute frame.
    pub at: f64,
}

/// Every split of one shard's territories. An empty partition is the base territories.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(transparent)]
pub struct Partition {
    splits: BTreeMap<String, Plane>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PartitionError {
    #[error("cell {0:?} is not a cell name (base territory, then /0 or /1 per split)")]
    BadName(String),
    #[error("cell {cell:?} belongs to {base:?}, which is not a territory of this layout")]
    UnknownTerritory { cell: String, base: String },
    #[error("cell {0:?} is split but its parent is not")]
    Orphan(String),
    #[error("cell {cell:?} is {depth} splits deep; at most {max} are allowed", max = MAX_SPLIT_DEPTH)]
    TooDeep { cell: String, depth: usize },
    #[error("cell {0:?} has a non-finite split plane")]
    BadPlane(String),
}

/// The cell `side` (0: below the plane, 1: at or above) of `cell`.
pub fn child(cell: &str, side: u8) -> String {
    format!("{cell}{SEPARATOR}{}", side.min(1))
}

/// The cell `cell` was split from, or `None` for a base territory.
pub fn parent(cell: &str) -> Option<&str> {
    cell.rsplit_once(SEPARATOR).map(|(p, _)| p)
}

/// The base territory a cell lies in.
pub fn base_territory(cell: &str) -> &str {
    cell.split(SEPARATOR).next().unwrap_or(cell)
}

/// How many splits deep a cell is (0 for a base territory).
pub fn depth(cell: &str) -> usize {
    cell.matches(SEPARATOR).count()
}

/// The other child of the same parent, or `None` for a base territory.
pub fn sibling(cell: &str) -> Option<String> {
    let (p, side) = cell.rsplit_once(SEPARATOR)?;
    match side {
        "0" => Some(child(p, 1)),
        "1" => Some(child(p, 0)),
        _ => None,
    }
}

fn well_formed(cell: &str) -> bool {
    let mut parts = cell.split(SEPARATOR);
    parts.next().is_some_and(|b| !b.is_empty()) && parts.all(|s| s == "0" || s == "1")
}

impl Partition {
    /// A partition from its splits, checked against the base territories it may split.
    pub fn new(
        splits: impl IntoIterator<Item = (String, Plane)>,
        bases: &BTreeSet<String>,
    ) -> Result<Self, PartitionError> {
        let p = Partition { splits: splits.into_iter().collect() };
        p.validate(bases)?;
        Ok(p)
    }

    /// Every rule a partition must keep; a partition read from the wire or from a
    /// status is checked with this before it is used.
    pub fn validate(&self, bases: &BTreeSet<String>) -> Result<(), PartitionError> {
        for (cell, plane) in &self.splits {
            if !well_formed(cell) {
                return Err(PartitionError::BadName(cell.clone()));
            }
            let base = base_territory(cell);
            if !bases.contains(base) {
                return Err(PartitionError::UnknownTerritory {
                    cell: cell.clone(),
                    base: base.to_string(),
                });
            }
            if depth(cell) >= MAX_SPLIT_DEPTH {
                return Err(PartitionError::TooDeep { cell: cell.clone(), depth: depth(cell) + 1 });
            }
            if let Some(p) = parent(cell)
                && !self.splits.contains_key(p)
            {
                return Err(PartitionError::Orphan(cell.clone()));
            }
            if !plane.at.is_finite() {
                return Err(PartitionError::BadPlane(cell.clone()));
            }
        }
        Ok(())
    }

    pub fn splits(&self) -> impl Iterator<Item = (&String, &Plane)> {
        self.splits.iter()
    }

    pub fn plane(&self, cell: &str) -> Option<&Plane> {
        self.splits.get(cell)
    }

    pub fn is_split(&self, cell: &str) -> bool {
        self.splits.contains_key(cell)
    }

    pub fn len(&self) -> usize {
        self.splits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.splits.is_empty()
    }

    /// The leaf cell of `base` that contains `position`.
    pub fn cell_of(&self, base: &str, position: [f64; 3]) -> String {
        let mut cell = base.to_string();
        // Bounded by validation (depth), and by the loop guard if a caller skipped it.
        for _ in 0..=MAX_SPLIT_DEPTH {
            let Some(plane) = self.splits.get(&cell) else { break };
            let side = u8::from(position[plane.axis.index()] >= plane.at);
            cell = child(&cell, side);
        }
        cell
    }

    /// Every leaf cell (the unit of ownership), sorted.
    pub fn leaves<'a>(&self, bases: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack: Vec<String> = bases.into_iter().map(str::to_string).collect();
        while let Some(cell) = stack.pop() {
            if self.splits.contains_key(&cell) && depth(&cell) < MAX_SPLIT_DEPTH {
                stack.push(child(&cell, 0));
                stack.push(child(&cell, 1));
            } else {
                out.push(cell);
            }
        }
        out.sort();
        out
    }

    /// Splits leaf `cell` (no-op if it is already split).
    pub fn split(&mut self, cell: &str, plane: Plane) {
        self.splits.entry(cell.to_string()).or_insert(plane);
    }

    /// Merges `cell`'s two children back into it. Only when both are leaves: a merge
    /// removes exactly one split, so the cell count falls by one.
    pub fn merge(&mut self, cell: &str) -> bool {
        let leaf_children = !self.is_split(&child(cell, 0)) && !self.is_split(&child(cell, 1));
        leaf_children && self.splits.remove(cell).is_some()
    }
}

/// Where to split a crowded cell: across the axis along which `positions` spread
/// widest, at their median, so each side gets about half. `None` when fewer than two
/// distinct finite positions (nothing to halve).
pub fn choose_plane(positions: &[[f64; 3]]) -> Option<Plane> {
    let finite: Vec<[f64; 3]> =
        positions.iter().copied().filter(|p| p.iter().all(|c| c.is_finite())).collect();
    if finite.len() < 2 {
        return None;
    }
    let spread = |axis: Axis| {
        let i = axis.index();
        let (lo, hi) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p[i]), hi.max(p[i])));
        hi - lo
    };
    let axis = Axis::ALL.into_iter().max_by(|a, b| spread(*a).total_cmp(&spread(*b)))?;
    if spread(axis) <= 0.0 {
        return None;
    }
    let mut values: Vec<f64> = finite.iter().map(|p| p[axis.index()]).collect();
    values.sort_by(f64::total_cmp);
    // The upper median: the plane is inclusive above, so with an even count half land
    // on each side; if many share the median value, move up to the next distinct one
    // so the lower side is never empty.
    let mid = values.len() / 2;
    let at = values[mid];
    let at = if values[..mid].iter().any(|v| *v < at) {
        at
    } else {
        values.iter().copied().find(|v| *v > at)?
    };
    Some(Plane { axis, at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases() -> BTreeSet<String> {
        ["hurston", "deep-space"].into_iter().map(String::from).collect()
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(child("hurston", 1), "hurston/1");
        assert_eq!(parent("hurston/1/0"), Some("hurston/1"));
        assert_eq!(parent("hurston"), None);
        assert_eq!(base_territory("hurston/1/0"), "hurston");
        assert_eq!(depth("hurston/1/0"), 2);
        assert_eq!(sibling("hurston/1/0").as_deref(), Some("hurston/1/1"));
        assert_eq!(sibling("hurston"), None);
    }

    #[test]
    fn cells_locate_by_planes_and_leaves_cover_everything() {
        let mut p = Partition::default();
        p.split("hurston", Plane { axis: Axis::X, at: 10.0 });
        p.split("hurston/1", Plane { axis: Axis::Y, at: 0.0 });
        p.validate(&bases()).unwrap();
        assert_eq!(p.cell_of("hurston", [9.9, 5.0, 0.0]), "hurston/0");
        assert_eq!(p.cell_of("hurston", [10.0, -1.0, 0.0]), "hurston/1/0");
        assert_eq!(p.cell_of("hurston", [10.0, 0.0, 0.0]), "hurston/1/1");
        assert_eq!(p.cell_of("deep-space", [10.0, 0.0, 0.0]), "deep-space");
        assert_eq!(
            p.leaves(["hurston", "deep-space"]),
            vec!["deep-space", "hurston/0", "hurston/1/0", "hurston/1/1"]
        );
        // Merging needs leaf children: hurston's child 1 is split, so no.
        assert!(!p.merge("hurston"));
        assert!(p.merge("hurston/1"));
        assert!(p.merge("hurston"));
        assert!(p.is_empty());
    }

    #[test]
    fn bad_partitions_are_refused_with_the_cell_named() {
        let plane = Plane { axis: Axis::Z, at: 1.0 };
        let e = |cells: &[&str]| {
            Partition::new(cells.iter().map(|c| (c.to_string(), plane)), &bases()).unwrap_err()
        };
        assert_eq!(e(&["hurston/2"]), PartitionError::BadName("hurston/2".into()));
        assert_eq!(e(&["/0"]), PartitionError::BadName("/0".into()));
        assert!(matches!(e(&["crusader"]), PartitionError::UnknownTerritory { .. }));
        assert_eq!(e(&["hurston/0"]), PartitionError::Orphan("hurston/0".into()));
        let deep = ["hurston", "hurston/0", "hurston/0/0", "hurston/0/0/0", "hurston/0/0/0/0"];
        let mut cells: Vec<String> = deep.iter().map(|c| c.to_string()).collect();
        cells.push("hurston/0/0/0/0/0".into());
        assert!(Partition::new(cells.iter().map(|c| (c.clone(), plane)), &bases()).is_ok());
        cells.push("hurston/0/0/0/0/0/0".into());
        assert!(matches!(
            Partition::new(cells.iter().map(|c| (c.clone(), plane)), &bases()),
            Err(PartitionError::TooDeep { .. })
        ));
        let nan = Plane { axis: Axis::X, at: f64::NAN };
        assert_eq!(
            Partition::new([("hurston".to_string(), nan)], &bases()).unwrap_err(),
            PartitionError::BadPlane("hurston".into())
        );
    }

    #[test]
    fn planes_halve_the_crowd_along_its_widest_spread() {
        let crowd: Vec<[f64; 3]> = (0..10).map(|i| [f64::from(i), 0.5, 100.0]).collect();
        let plane = choose_plane(&crowd).unwrap();
        assert_eq!(plane.axis, Axis::X);
        let below = crowd.iter().filter(|p| p[0] < plane.at).count();
        assert_eq!(below, 5);
        // Many players on one spot: the lower side still gets them, never an empty half.
        let mut stacked = vec![[1.0, 0.0, 0.0]; 8];
        stacked.push([2.0, 0.0, 0.0]);
        let plane = choose_plane(&stacked).unwrap();
        assert_eq!(plane.at, 2.0);
        assert_eq!(choose_plane(&[[1.0, 1.0, 1.0]; 4]), None);
        assert_eq!(choose_plane(&[[f64::NAN, 0.0, 0.0], [1.0, 0.0, 0.0]]), None);
    }

    #[test]
    fn serialises_as_a_map_of_cell_to_plane() {
        let mut p = Partition::default();
        p.split("hurston", Plane { axis: Axis::Y, at: -3.5 });
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"hurston":{"axis":"y","at":-3.5}}"#);
        let back: Partition = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }
}
