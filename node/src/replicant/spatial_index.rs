//! A uniform grid hash over entity positions. A radius query visits only the
//! cells overlapping the query sphere's bounding box (or, when that box is
//! larger than the populated world, only the populated cells), so its cost
//! grows with the answer, not with the number of entities.

use std::collections::{HashMap, HashSet};

use crate::model::{EntityId, Vec3};

pub type CellKey = (i64, i64, i64);

#[derive(Debug)]
pub struct GridIndex {
    cell_size: f64,
    cells: HashMap<CellKey, HashSet<EntityId>>,
    positions: HashMap<EntityId, (Vec3, CellKey)>,
}

impl GridIndex {
    pub fn new(cell_size: f64) -> Self {
        assert!(
            cell_size.is_finite() && cell_size > 0.0,
            "cell size is configuration, checked at startup"
        );
        Self { cell_size, cells: HashMap::new(), positions: HashMap::new() }
    }

    pub fn cell_of(&self, p: Vec3) -> CellKey {
        // Positions are validated to be finite and bounded, so the casts cannot saturate meaningfully.
        let c = |v: f64| (v / self.cell_size).floor() as i64;
        (c(p.x), c(p.y), c(p.z))
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn contains(&self, id: EntityId) -> bool {
        self.positions.contains_key(&id)
    }

    pub fn position(&self, id: EntityId) -> Option<Vec3> {
        self.positions.get(&id).map(|(p, _)| *p)
    }

    pub fn upsert(&mut self, id: EntityId, p: Vec3) {
        let cell = self.cell_of(p);
        if let Some((pos, old)) = self.positions.get_mut(&id) {
            *pos = p;
            if *old == cell {
                return;
            }
            let old = std::mem::replace(old, cell);
            self.remove_from_cell(old, id);
        } else {
            self.positions.insert(id, (p, cell));
        }
        self.cells.entry(cell).or_default().insert(id);
    }

    pub fn remove(&mut self, id: EntityId) {
        if let Some((_, cell)) = self.positions.remove(&id) {
            self.remove_from_cell(cell, id);
        }
    }

    fn remove_from_cell(&mut self, cell: CellKey, id: EntityId) {
        if let Some(set) = self.cells.get_mut(&cell) {
            set.remove(&id);
            if set.is_empty() {
                // Empty cells are dropped so the populated-cells fallback stays proportional.
                self.cells.remove(&cell);
            }
        }
    }

    /// Appends the ids within `radius` of `center` to `out`.
    pub fn query(&self, center: Vec3, radius: f64, out: &mut Vec<EntityId>) {
        let r2 = radius * radius;
        let lo = self.cell_of(Vec3::new(center.x - radius, center.y - radius, center.z - radius));
        let hi = self.cell_of(Vec3::new(center.x + radius, center.y + radius, center.z + radius));
        let span = |a: i64, b: i64| (b.saturating_sub(a)).saturating_add(1) as u128;
        let box_cells = span(lo.0, hi.0) * span(lo.1, hi.1) * span(lo.2, hi.2);
        let mut visit = |set: &HashSet<EntityId>| {
            for id in set {
                if let Some((p, _)) = self.positions.get(id)
                    && p.dist2(center) <= r2
                {
                    out.push(*id);
                }
            }
        };
        if box_cells > self.cells.len() as u128 {
            for (k, set) in &self.cells {
                if (lo.0..=hi.0).contains(&k.0)
                    && (lo.1..=hi.1).contains(&k.1)
                    && (lo.2..=hi.2).contains(&k.2)
                {
                    visit(set);
                }
            }
        } else {
            for x in lo.0..=hi.0 {
                for y in lo.1..=hi.1 {
                    for z in lo.2..=hi.2 {
                        if let Some(set) = self.cells.get(&(x, y, z)) {
                            visit(set);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_finds_only_inside() {
        let mut g = GridIndex::new(10.0);
        g.upsert(1, Vec3::new(0.0, 0.0, 0.0));
        g.upsert(2, Vec3::new(5.0, 0.0, 0.0));
        g.upsert(3, Vec3::new(50.0, 0.0, 0.0));
        let mut out = vec![];
        g.query(Vec3::default(), 6.0, &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2]);
        g.upsert(3, Vec3::new(1.0, 1.0, 1.0));
        g.remove(1);
        out.clear();
        g.query(Vec3::default(), 6.0, &mut out);
        out.sort();
        assert_eq!(out, vec![2, 3]);
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn huge_radius_uses_populated_cells() {
        let mut g = GridIndex::new(1.0);
        g.upsert(1, Vec3::new(1e6, 0.0, 0.0));
        let mut out = vec![];
        // A bounding box of ~8e18 cells: must not iterate it.
        g.query(Vec3::default(), 2e6, &mut out);
        assert_eq!(out, vec![1]);
    }

    proptest! {
        #[test]
        fn matches_brute_force(pts in prop::collection::vec((-100.0..100.0f64, -100.0..100.0f64, -100.0..100.0f64), 0..60),
                               c in (-100.0..100.0f64, -100.0..100.0f64, -100.0..100.0f64), r in 0.0..150.0f64) {
            let mut g = GridIndex::new(7.0);
            for (i, p) in pts.iter().enumerate() { g.upsert(i as u64, Vec3::new(p.0, p.1, p.2)); }
            let center = Vec3::new(c.0, c.1, c.2);
            let mut out = vec![];
            g.query(center, r, &mut out);
            out.sort();
            let want: Vec<u64> = pts.iter().enumerate()
                .filter(|(_, p)| Vec3::new(p.0, p.1, p.2).dist2(center) <= r * r)
                .map(|(i, _)| i as u64).collect();
            prop_assert_eq!(out, want);
        }
    }
}
