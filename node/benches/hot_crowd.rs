//! Hot path: one player's tick in a crowded bubble — ~1000 of 10k entities in
//! range (what each player sees at 10,000 players crowding Stanton's ten spawn
//! points), every one changed: plan, encode as it goes on the wire, commit.
//! Subject: the bubble with the replicant's default level of detail
//! (`BubbleCap::default()`: the nearest 128, 32 of them every tick, the rest
//! every 4th). Baseline: the same bubble uncapped (`BubbleCap::UNLIMITED`,
//! what every bubble was before the cap). Averaged over a multiple of 4 ticks so
//! every far entity's phase comes round. Counted by callgrind.
//!
//! Second figure: one whole replicant tick (`tick::step`) of a shard where
//! `PLAYERS` players crowd ten spots, so each bubble holds ~`PLAYERS / 10` ships
//! (what `benches/players.rs` runs), every ship moved every tick, all players on
//! one gateway link with room for all of them. Baseline: the same tick with no
//! player attached; the difference over `PLAYERS` is the streaming cost of one
//! player per tick (plan, encode, commit), also printed.
//! `cargo bench -p starmesh-node --bench hot_crowd [-- --short]` (needs valgrind).

#[path = "support/hot.rs"]
mod hot;
#[path = "support/report.rs"]
mod report;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use starmesh_node::model::{Interest, Vec3};
use starmesh_node::replicant::interest::{BubbleCap, Subscription};
use starmesh_node::replicant::{Core, GatewayConn, Player, tick};
use starmesh_node::wire::pb;
use tokio::sync::{Notify, mpsc};

const SIDE_KM: f64 = 3000.0;
/// Ticks counted per run of the shard figure: a multiple of the cap's `far_every`.
const SHARD_TICKS: u64 = 4;

fn main() {
    let players: u64 = if report::short() { 200 } else { 1000 };
    if std::env::args().any(|a| a == "--shard-tick") {
        let Some((mode, iters)) = hot::mode() else { panic!("--shard-tick is for --measure runs") };
        shard_ticks(players, matches!(mode, hot::Mode::Subject), iters);
        return;
    }
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
        let (with, without) = hot::drive_with(
            &format!(
                "hot path: one replicant tick, {players} players at 10 spots (~{} per bubble, callgrind)",
                players / 10
            ),
            "the same tick with no player attached",
            SHARD_TICKS,
            &["--shard-tick"],
        );
        report::figure(
            &format!(
                "hot path: streaming one player's bubble in that tick (~{} in view)",
                players / 10
            ),
            (with - without).max(0.0) / players as f64,
            "instructions",
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
                ..Default::default()
            };
            let bytes = msg.encode_to_vec();
            sub.commit(&plan);
            assert!(!bytes.is_empty());
            count
        });
    }
    (sub.known() as f64, updates as f64 / iters as f64)
}

/// Ship `i` of `players`: at spot `i % 10` (ten spots 1,000 km apart in deep
/// space), on a 2 km lattice around it, moved a little each `round`.
fn ship_position(i: u64, round: u64) -> Vec3 {
    let (spot, j) = (i % 10, i / 10);
    Vec3::new(
        50_000.0 + spot as f64 * 1000.0 + (j % 5) as f64 * 2.0 + round as f64 * 0.01,
        ((j / 5) % 5) as f64 * 2.0,
        (j / 25) as f64 * 2.0,
    )
}

/// Moves every ship (entities `1..=players`) through `s1`.
fn move_ships(core: &mut Core, players: u64, round: u64) {
    for i in 0..players {
        hot::write_one(&mut core.world, i + 1, ship_position(i, round), round);
    }
}

/// `iters` whole replicant ticks (`tick::step`) inside `callgrind_region`, with
/// one player per ship attached (`with_players`) or none, after two warm-up
/// ticks so the views are full and what is counted are deltas.
fn shard_ticks(players: u64, with_players: bool, iters: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = hot::shared(dir.path());
    let mut core = shared.lock();
    let (tx, mut rx) = mpsc::channel(2 * players as usize + 64);
    move_ships(&mut core, players, 0);
    if with_players {
        let conn = core.next_conn();
        let radius = 50.0;
        core.gateways.insert(
            conn,
            GatewayConn {
                tx,
                kill: Arc::new(Notify::new()),
                players: (1..=players).collect::<BTreeSet<_>>(),
                stalled_ticks: 0,
            },
        );
        for pid in 1..=players {
            let center = ship_position(pid - 1, 0);
            let sub = Subscription::new(Interest { center, radius }, shared.cfg.budget_bytes)
                .capped(shared.cfg.bubble_cap, vec![pid]);
            core.players.insert(pid, Player { conn, entity: pid, sub, slow_ticks: 0 });
        }
    }
    let mut batches = 0usize;
    let mut updates = 0usize;
    for round in 1..=2 + iters {
        move_ships(&mut core, players, round);
        let counted = round > 2;
        let now = Instant::now();
        if counted {
            hot::callgrind_region(|| tick::step(&shared, &mut core, now));
        } else {
            tick::step(&shared, &mut core, now);
        }
        while let Ok(Ok(u)) = rx.try_recv() {
            if counted {
                batches += 1;
                updates += u.batch.map_or(0, |b| b.updates.len());
            }
        }
    }
    if with_players {
        assert_eq!(batches as u64, players * iters, "every player got a batch every tick");
        let held = core.players.values().map(|p| p.sub.known()).sum::<usize>() as u64 / players;
        assert!(
            held + 1 >= players / 10,
            "each bubble holds its spot ({held} of ~{})",
            players / 10
        );
        assert!(updates > batches, "batches carry updates ({updates} in {batches})");
    }
}
