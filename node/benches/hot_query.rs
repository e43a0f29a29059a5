//! Hot path: one spatial query (`GridIndex::query`, the replicant's grid
//! with its configured cell size) returning ~100 of 10k entities, counted by
//! callgrind. Baseline: a linear scan of the same 10k positions.
//! `cargo bench -p starmesh-node --bench hot_query [-- --short]` (needs valgrind).

#[path = "support/hot.rs"]
mod hot;
#[path = "support/report.rs"]
mod report;

use starmesh_node::model::Vec3;
use starmesh_node::replicant::Config;
use starmesh_node::replicant::spatial_index::GridIndex;

const SIDE_KM: f64 = 3000.0;
const IN_RANGE: f64 = 100.0;

fn main() {
    let n: u64 = if report::short() { 1000 } else { 10_000 };
    let Some((mode, iters)) = hot::mode() else {
        hot::drive(
            &format!("hot path: one spatial query, ~100 of {n} entities (callgrind)"),
            "linear scan of the same positions",
            100,
        );
        return;
    };
    let positions: Vec<Vec3> = (0..n).map(|i| hot::position(i, n, SIDE_KM, 0)).collect();
    let mut index = GridIndex::new(Config::default().cell_size_km);
    for (i, p) in positions.iter().enumerate() {
        index.upsert(i as u64, *p);
    }
    let radius = SIDE_KM * (IN_RANGE * 3.0 / (4.0 * std::f64::consts::PI * n as f64)).cbrt();
    let center = hot::position(n / 2, n, SIDE_KM, 0);
    let mut out = Vec::with_capacity(1024);
    let mut found = 0;
    for _ in 0..iters {
        found = match mode {
            hot::Mode::Subject => hot::callgrind_region(|| {
                out.clear();
                index.query(center, radius, &mut out);
                out.len()
            }),
            hot::Mode::Baseline => hot::callgrind_region(|| {
                positions.iter().filter(|p| p.dist2(center) <= radius * radius).count()
            }),
        };
    }
    assert!(found > 10, "the query finds entities ({found})");
}
