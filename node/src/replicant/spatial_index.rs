//! A uniform grid hash over entity positions. A radius query visits only the
//! cells overlapping the query sphere (or, when its bounding box is larger
//! than the populated world, only the populated cells), so its cost grows
//! with the answer, not with the number of entities.
//!
//! Each cell holds its entities' positions, so a query reads them without a
//! second lookup; an entity knows its slot in its cell, so a move is O(1).
//! The maps use `FastHasher`: with SipHash, hashing was ~40% of planning a
//! player's bubble (callgrind, `benches/hot_delta.rs`; BENCHMARKS.md).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{EntityId, Vec3};

pub type CellKey = (i64, i64, i64);

/// FxHash's multiply-rotate (as in rustc), for the replicant's integer keys:
/// entity ids and grid cells. Not DoS-resistant, which these keys do not
/// need: ids and positions come from the shard's own game servers, and a
/// cell is 100 km wide.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.add(v as u64);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown picks buckets by the low bits and tags by the high ones:
        // the rotation brings the product's well-mixed high bits down.
        self.0.rotate_left(26)
    }
}

pub type FastBuild = BuildHasherDefault<FastHasher>;
pub type FastMap<K, V> = HashMap<K, V, FastBuild>;
pub type FastSet<K> = HashSet<K, FastBuild>;

#[derive(Debug)]
pub struct GridIndex {
    cell_size: f64,
    cells: FastMap<CellKey, Vec<(EntityId, Vec3)>>,
    /// id -> (position, cell, slot in the cell's vector).
    positions: FastMap<EntityId, (Vec3, CellKey, usize)>,
}

impl GridIndex {
    pub fn new(cell_size: f64) -> Self {
        assert!(
            cell_size.is_finite() && cell_size > 0.0,
            "cell size is configuration, checked at startup"
        );
        Self { cell_size, cells: FastMap::default(), positions: FastMap::default() }
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
        self.positions.get(&id).map(|(p, _, _)| *p)
    }

    pub fn upsert(&mut self, id: EntityId, p: Vec3) {
        let cell = self.cell_of(p);
        if let Some(&(_, old, slot)) = self.positions.get(&id) {
            if old == cell {
                self.positions.insert(id, (p, cell, slot));
                if let Some(e) = self.cells.get_mut(&cell).and_then(|v| v.get_mut(slot)) {
                    e.1 = p;
                }
                return;
            }
            self.remove_from_cell(old, slot);
        }
        let v = self.cells.entry(cell).or_default();
        v.push((id, p));
        let slot = v.len() - 1;
        self.positions.insert(id, (p, cell, slot));
    }

    pub fn remove(&mut self, id: EntityId) {
        if let Some((_, cell, slot)) = self.positions.remove(&id) {
            self.remove_from_cell(cell, slot);
        }
    }

    /// Takes slot `slot` out of `cell`; the entity moved into it gets its new slot.
    fn remove_from_cell(&mut self, cell: CellKey, slot: usize) {
        let Some(v) = self.cells.get_mut(&cell) else { return };
        if slot >= v.len() {
            return;
        }
        v.swap_remove(slot);
        if let Some(&(moved, _)) = v.get(slot)
            && let Some(e) = self.positions.get_mut(&moved)
        {
            e.2 = slot;
        }
        if v.is_empty() {
            // Empty cells are dropped so the populated-cells fallback stays proportional.
            self.cells.remove(&cell);
        }
    }

    /// Appends the ids within `radius` of `center` to `out`.
    pub fn query(&self, center: Vec3, radius: f64, out: &mut Vec<EntityId>) {
        let r2 = radius * radius;
        let lo = self.cell_of(Vec3::new(center.x - radius, center.y - radius, center.z - radius));
        let hi = self.cell_of(Vec3::new(center.x + radius, center.y + radius, center.z + radius));
        let span = |a: i64, b: i64| (b.saturating_sub(a)).saturating_add(1) as u128;
        let box_cells = span(lo.0, hi.0) * span(lo.1, hi.1) * span(lo.2, hi.2);
        let visit = |v: &Vec<(EntityId, Vec3)>, out: &mut Vec<EntityId>| {
            for (id, p) in v {
                if p.dist2(center) <= r2 {
                    out.push(*id);
                }
            }
        };
        if box_cells > self.cells.len() as u128 {
            for (k, v) in &self.cells {
                if (lo.0..=hi.0).contains(&k.0)
                    && (lo.1..=hi.1).contains(&k.1)
                    && (lo.2..=hi.2).contains(&k.2)
                {
                    visit(v, out);
                }
            }
        } else {
            // Squared distance from the center to cell `i`'s slab along one axis.
            let cs = self.cell_size;
            let gap2 = |i: i64, c: f64| {
                // A little slack: `cell_of` divides, this multiplies, and a
                // point on the sphere must not be culled by a rounding.
                let slack = (i.unsigned_abs() as f64 + 1.0) * cs * 1e-12;
                let (a, b) = (i as f64 * cs - slack, (i + 1) as f64 * cs + slack);
                let d = if c < a {
                    a - c
                } else if c > b {
                    c - b
                } else {
                    0.0
                };
                d * d
            };
            // Cells of the bounding box the sphere does not reach are skipped
            // without a lookup (about half of them).
            for x in lo.0..=hi.0 {
                let dx = gap2(x, center.x);
                for y in lo.1..=hi.1 {
                    let dxy = dx + gap2(y, center.y);
                    if dxy > r2 {
                        continue;
                    }
                    for z in lo.2..=hi.2 {
                        if dxy + gap2(z, center.z) > r2 {
                            continue;
                        }
                        if let Some(v) = self.cells.get(&(x, y, z)) {
                            visit(v, out);
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

        /// Moves (within and across cells) and removals keep every cell's
        /// slots right: queries match a brute-force model throughout.
        #[test]
        fn moves_and_removals_match_brute_force(
            ops in prop::collection::vec((0..20u64, prop::option::of((-50.0..50.0f64, -50.0..50.0f64, -50.0..50.0f64))), 1..120),
            c in (-50.0..50.0f64, -50.0..50.0f64, -50.0..50.0f64), r in 0.0..80.0f64) {
            let mut g = GridIndex::new(7.0);
            let mut model: HashMap<u64, Vec3> = HashMap::new();
            let center = Vec3::new(c.0, c.1, c.2);
            for (id, op) in ops {
                match op {
                    Some(p) => { g.upsert(id, Vec3::new(p.0, p.1, p.2)); model.insert(id, Vec3::new(p.0, p.1, p.2)); }
                    None => { g.remove(id); model.remove(&id); }
                }
                let mut out = vec![];
                g.query(center, r, &mut out);
                out.sort();
                let mut want: Vec<u64> = model.iter().filter(|(_, p)| p.dist2(center) <= r * r).map(|(i, _)| *i).collect();
                want.sort();
                prop_assert_eq!(out, want);
                prop_assert_eq!(g.len(), model.len());
                for (id, p) in &model { prop_assert_eq!(g.position(*id), Some(*p)); }
            }
        }
    }
}
