//! Hot path: one player's tick in a crowded bubble — ~1000 of 10k entities in
//! range (what each player sees at 10,000 players crowding Stanton's ten spawn
//! points), every one changed: plan, encode as it goes on the wire, commit.
//! Subject: the bubble with the replicant's default level of detail
//! (`BubbleCap::default()`: the nearest 128, 32 of them every tick, the rest
//! every 4th). Baseline: the same bubble uncapped (`BubbleCap::UNLIMITED`,
//! what every bubble was before the cap). Averaged over a multiple of 4 ticks so
//! every far entity's phase comes round. Counted by callgrind.
//! `cargo bench -p starmesh-node --bench hot_crowd [-- --short]` (needs valgrind).

#[path = "support/hot.rs"]
mod hot;
#[path = "support/report.rs"]
mod report;

use prost::Message;
use starmesh_node::model::Interest;
use starmesh_node::replicant::interest::{BubbleCap, Subscription};
use starmesh_node::wire::pb;

const SIDE_KM: f64 = 3000.0;

fn main() {
    let (n, in_bubble): (u64, f64) = if report::short() { (1000, 300.0) } else { (10_000, 1000.0) };
    debug_assert!(in_bubble >= 2.0);
    let Some((mode, iters)) = hot::mode() else {
        hot::drive(
            &format!(
                "hot path: one player's tick, ~{in_bubble} of {n} entities in its bubble, capped (callgrind)"
            ),
            "the same bubble uncapped",
            8,
        );
        // What the cap leaves of the work, counted natively (no callgrind needed).
        let (held_c, sent_c) = player_ticks(n, in_bubble, BubbleCap::default(), 8);
        let (held_u, sent_u) = player_ticks(n, in_bubble, BubbleCap::UNLIMITED, 8);
        report::against(
            &format!("crowded bubble (~{in_bubble} in range): entity updates a tick, capped"),
            sent_c,
            "updates",
            sent_u,
            "the same bubble uncapped",
        );
        report::against(
            &format!("crowded bubble (~{in_bubble} in range): entities held, capped"),
            held_c,
            "entities",
            held_u,
            "the same bubble uncapped",
        );
        return;
    };
    let cap = match mode {
        hot::Mode::Subject => BubbleCap::default(),
        hot::Mode::Baseline => BubbleCap::UNLIMITED,
    };
    player_ticks(n, in_bubble, cap, iters);
}

/// `iters` ticks of one player whose bubble holds ~`in_bubble` of `n` entities, all
/// changed every tick; the ticks' work inside `callgrind_region`. Returns the entities
/// held at the end and the updates sent per tick.
fn player_ticks(n: u64, in_bubble: f64, cap: BubbleCap, iters: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = hot::shared(dir.path());
    let mut core = shared.lock();
    let world = &mut core.world;
    // The ship in the middle of the cube, the radius whose sphere holds at least
    // `in_bubble` of the entities (they move 0.01 km a tick: the count holds).
    let per = (n as f64).cbrt().ceil() as u64;
    let layers = n.div_ceil(per * per);
    let ship = per / 2 + (per / 2) * per + (layers / 2) * per * per;
    let center = hot::position(ship, n, SIDE_KM, 0);
    let mut d: Vec<f64> = (0..n).map(|i| hot::position(i, n, SIDE_KM, 0).dist(center)).collect();
    d.sort_by(f64::total_cmp);
    // Between two distance shells of the lattice, so no entity sits on the edge.
    let r0 = d[(in_bubble as usize).min(d.len()) - 1];
    let r1 = d.iter().copied().find(|x| *x > r0 + 1.0).unwrap_or(r0 + 2.0);
    let radius = (r0 + r1) / 2.0;
    // As the replicant attaches a player: its own ship (entity ship + 1) pinned.
    let mut sub =
        Subscription::new(Interest { center, radius }, 1 << 20).capped(cap, vec![ship + 1]);
    hot::write_all(world, n, SIDE_KM, 0);
    world.end_tick();
    // The player already holds its bubble: what follows are deltas.
    let p = sub.plan(world);
    sub.commit(&p);
    assert!(sub.known() > 10, "the bubble holds entities ({})", sub.known());
    let mut updates = 0usize;
    for round in 1..=iters {
        hot::write_all(world, n, SIDE_KM, round);
        let tick = world.end_tick().tick;
        updates += hot::callgrind_region(|| {
            let mut plan = sub.plan(world);
            let count = plan.updates.len();
            let msg = pb::GatewayUpdate {
                player_id: 1,
                batch: Some(pb::UpdateBatch { tick, updates: std::mem::take(&mut plan.updates) }),
                own: None,
            };
            let bytes = msg.encode_to_vec();
            sub.commit(&plan);
            assert!(!bytes.is_empty());
            count
        });
    }
    (sub.known() as f64, updates as f64 / iters as f64)
}
