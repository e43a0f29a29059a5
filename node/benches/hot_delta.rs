//! Hot path: the update batch for one subscriber (a player's bubble holding
//! ~100 entities of 10k, every one changed since it was last sent): plan it
//! (`Subscription::plan`: query, priorities, budget), encode it as it goes on
//! the wire, commit it. Counted by callgrind. Baseline: encoding the same
//! batch alone, the wire's share of the work.
//! `cargo bench -p starmesh-node --bench hot_delta [-- --short]` (needs valgrind).

#[path = "support/hot.rs"]
mod hot;
#[path = "support/report.rs"]
mod report;

use prost::Message;
use starmesh_node::model::Interest;
use starmesh_node::replicant::interest::Subscription;
use starmesh_node::wire::pb;

const SIDE_KM: f64 = 3000.0;
const IN_BUBBLE: f64 = 100.0;

fn batch(updates: Vec<pb::EntityUpdate>, tick: u64) -> pb::GatewayUpdate {
    pb::GatewayUpdate { player_id: 1, batch: Some(pb::UpdateBatch { tick, updates }), own: None }
}

fn main() {
    let n: u64 = if report::short() { 1000 } else { 10_000 };
    let Some((mode, iters)) = hot::mode() else {
        hot::drive(
            &format!("hot path: one subscriber's delta batch, ~100 of {n} entities (callgrind)"),
            "encode the same batch (protobuf)",
            20,
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = hot::shared(dir.path());
    let mut core = shared.lock();
    let world = &mut core.world;
    // The radius whose sphere holds ~IN_BUBBLE of the evenly spread entities.
    let radius = SIDE_KM * (IN_BUBBLE * 3.0 / (4.0 * std::f64::consts::PI * n as f64)).cbrt();
    let center = hot::position(n / 2, n, SIDE_KM, 0);
    let mut sub = Subscription::new(Interest { center, radius }, 64 * 1024);
    hot::write_all(world, n, SIDE_KM, 0);
    world.end_tick();
    // The subscriber already knows its bubble: what follows are deltas.
    let p = sub.plan(world);
    sub.commit(&p);
    assert!(sub.known() > 10, "the bubble holds entities ({})", sub.known());
    for round in 1..=iters {
        hot::write_all(world, n, SIDE_KM, round);
        let tick = world.end_tick().tick;
        match mode {
            hot::Mode::Subject => {
                let len = hot::callgrind_region(|| {
                    // As the tick does: the updates move into the message.
                    let mut plan = sub.plan(world);
                    let bytes = batch(std::mem::take(&mut plan.updates), tick).encode_to_vec();
                    sub.commit(&plan);
                    bytes.len()
                });
                assert!(len > 0);
            }
            hot::Mode::Baseline => {
                let plan = sub.plan(world);
                assert_eq!(plan.updates.len(), sub.known(), "every known entity changed");
                let len = hot::callgrind_region(|| batch(plan.updates, tick).encode_to_vec().len());
                assert!(len > 0);
            }
        }
    }
}
