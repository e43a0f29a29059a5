//! Hot path: one replicant tick (`replicant::tick::step`) over 10k entities
//! that all changed in the tick (end of tick, handoff checks, the group for
//! the store; no subscribers: their cost is `hot_delta`'s), counted by
//! callgrind. Baseline: encoding those entities to protobuf, the least a
//! tick must do with them to persist them.
//! `cargo bench -p starmesh-node --bench hot_tick [-- --short]` (needs valgrind).

#[path = "support/hot.rs"]
mod hot;
#[path = "support/report.rs"]
mod report;

use std::time::Instant;

use prost::Message;
use starmesh_node::replicant::tick;
use starmesh_node::wire::validate::entity_to_pb;

const SIDE_KM: f64 = 3000.0;

fn main() {
    let n: u64 = if report::short() { 1000 } else { 10_000 };
    let Some((mode, iters)) = hot::mode() else {
        hot::drive(
            &format!("hot path: one replicant tick, {n} entities changed (callgrind)"),
            "encode the changed entities (protobuf)",
            3,
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = hot::shared(dir.path());
    let mut core = shared.lock();
    // A first tick creates every entity; the measured ones only change them.
    hot::write_all(&mut core.world, n, SIDE_KM, 0);
    tick::step(&shared, &mut core, Instant::now());
    for round in 1..=iters {
        hot::write_all(&mut core.world, n, SIDE_KM, round);
        match mode {
            hot::Mode::Subject => {
                let wanted =
                    hot::callgrind_region(|| tick::step(&shared, &mut core, Instant::now()));
                assert!(wanted.is_empty(), "nothing is evicted in this bench");
            }
            hot::Mode::Baseline => {
                let bytes = hot::callgrind_region(|| {
                    core.world
                        .entities()
                        .map(|e| entity_to_pb(e).encode_to_vec().len())
                        .sum::<usize>()
                });
                assert!(bytes > 0);
            }
        }
    }
    assert_eq!(core.world.len() as u64, n);
}
