//! Shard placement over loopback, with two real shards (each a replicant on the test
//! world, its four game servers and a gateway) told about each other as the operator's
//! mesh map tells them in a cluster (`Hub::set_shards`). Real bots join the gateway of
//! shard 0:
//! - new players are redirected to the least-loaded shard (1), follow the redirect and
//!   play there; their ships exist in shard 1 only;
//! - the same players joining shard 0 again land in shard 1 again, even while shard 1 is
//!   draining (the ship decides, never the load: no second ship; only the gateways are
//!   told here, so the replicant does not move the ships yet);
//! - new players joining the draining shard's gateway are sent to shard 0;
//! - players playing in a shard that starts draining are moved to the other shard while
//!   they play (their ships transferred by the replicants, the bots told `Transferred`
//!   by their gateway and following it), without a forced disconnect.
//!
//! Every run: no ship lost or duplicated, and each ship in exactly one shard (asked of
//! both replicants' Admin `Lookup`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use starmesh_node::bots::{self, BotsConfig, GateOptions, Stop};
use starmesh_node::gateway::{self, GatewayConfig, placement, placement::World};
use starmesh_node::mesh_map::ShardLoad;
use starmesh_node::replicant::{Config, shard_move, tick};
use starmesh_node::server::{self, ServerConfig, game::ExampleGame, metrics::Metrics};
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_node::wire::pb;

struct Shard {
    _dir: tempfile::TempDir,
    replicant: starmesh_node::replicant::Running,
    servers: Vec<tokio::task::JoinHandle<()>>,
    gateway: gateway::Running,
}

async fn shard() -> Shard {
    let dir = tempfile::tempdir().expect("dir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let replicant = start(&sol(), fast_config(), store).await;
    let servers = ["s-earth", "s-moon", "s-station", "s-deep"]
        .iter()
        .map(|name| {
            let cfg = ServerConfig {
                replicant: replicant.grpc_addr.to_string(),
                name: name.to_string(),
                tick_hz: 50,
            };
            let m = Arc::new(Metrics::new(cfg.period().as_secs_f64()));
            tokio::spawn(server::run(cfg, ExampleGame, m))
        })
        .collect();
    let cfg = GatewayConfig {
        replicant: replicant.grpc_addr.to_string(),
        input_rate: 20.0,
        input_burst: 40.0,
        bubble_radius: 2000.0,
    };
    let world = World::load(&[sol_path()]).expect("world");
    let lo = "127.0.0.1:0".parse().expect("addr");
    let gateway = gateway::serve_with_links(cfg, world, lo, lo, 2).await.expect("gateway");
    let t = Instant::now();
    while !gateway.hub.connected() {
        assert!(t.elapsed() < Duration::from_secs(10), "gateway never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Shard { _dir: dir, replicant, servers, gateway }
}

impl Shard {
    fn load(&self, index: i32, players: Option<u64>, draining: bool) -> ShardLoad {
        ShardLoad {
            index,
            gateway: self.gateway.grpc_addr,
            replicant: self.replicant.grpc_addr,
            draining,
            players,
        }
    }

    async fn holds(&self, ship: u64) -> bool {
        let mut a =
            pb::admin_client::AdminClient::connect(format!("http://{}", self.replicant.grpc_addr))
                .await
                .expect("admin");
        a.lookup(pb::LookupRequest { id: ship }).await.expect("lookup").into_inner().present
    }

    async fn stop(self) {
        for s in self.servers {
            s.abort();
        }
        self.replicant.shutdown().await;
    }
}

/// Only the gateways learn the map: their replicants do not know a shard drains, so no
/// ship moves (placement alone is under test).
fn tell_gateways(shards: &[&Shard], loads: &[ShardLoad]) {
    for (i, s) in shards.iter().enumerate() {
        s.gateway.hub.set_shards(i32::try_from(i).expect("index"), loads.to_vec());
    }
}

/// Both gateways and both replicants learn the same map (as each reads the operator's
/// ConfigMap).
fn tell(shards: &[&Shard], loads: &[ShardLoad]) {
    for (i, s) in shards.iter().enumerate() {
        let own = i32::try_from(i).expect("index");
        s.gateway.hub.set_shards(own, loads.to_vec());
        s.replicant.shared.gates.set_shards(own, loads.to_vec());
    }
}

async fn bots_at(gateway: std::net::SocketAddr, n: usize, prefix: &str) -> bots::Report {
    bots_for(gateway, n, prefix, Duration::from_secs(4)).await
}

async fn bots_for(
    gateway: std::net::SocketAddr,
    n: usize,
    prefix: &str,
    duration: Duration,
) -> bots::Report {
    let cfg = BotsConfig {
        gateway: gateway.to_string(),
        n,
        duration,
        prefix: prefix.to_string(),
        speed: 50.0,
        probe_interval: Duration::from_millis(250),
        token_key: None,
    };
    let r = bots::run_with(cfg, GateOptions::default(), Stop::never()).await.expect("bots ran");
    assert!(r.ok(), "bots {prefix}: {:?}\n{}", r.violations, r.table());
    assert_eq!(r.connected, n, "{}", r.table());
    assert_eq!((r.entities_lost, r.entities_duplicated), (0, 0), "{}", r.table());
    r
}

fn ship(name: &str) -> u64 {
    placement::ship_of(placement::player_id(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_players_go_to_the_least_loaded_shard_and_return_to_their_ship() {
    let (a, b) = (shard().await, shard().await);
    const N: usize = 6;

    // Shard 0 busy, shard 1 empty: new players joining shard 0 go to shard 1.
    tell_gateways(&[&a, &b], &[a.load(0, Some(50), false), b.load(1, Some(0), false)]);
    let r = bots_at(a.gateway.grpc_addr, N, "fresh").await;
    assert_eq!(r.redirects, N as u64, "every new player redirected once: {}", r.table());
    assert_eq!(a.gateway.hub.metrics.joins.get(), 0, "shard 0 took nobody");
    assert_eq!(b.gateway.hub.metrics.joins.get(), N as u64);
    for i in 0..N {
        let s = ship(&format!("fresh-{i}"));
        assert!(b.holds(s).await, "fresh-{i}'s ship is in shard 1");
        assert!(!a.holds(s).await, "fresh-{i}'s ship is not in shard 0");
    }

    // Shard 1 now draining (and "full"): the same players still land where their ship is.
    tell_gateways(&[&a, &b], &[a.load(0, Some(0), false), b.load(1, Some(N as u64), true)]);
    let r = bots_at(a.gateway.grpc_addr, N, "fresh").await;
    assert_eq!(r.redirects, N as u64, "back to their ships in shard 1: {}", r.table());
    assert_eq!(a.gateway.hub.metrics.joins.get(), 0, "no second ship in shard 0");
    for i in 0..N {
        let s = ship(&format!("fresh-{i}"));
        assert!(b.holds(s).await && !a.holds(s).await, "fresh-{i} in exactly one shard");
    }

    // New players at the draining shard's gateway go to shard 0.
    let r = bots_at(b.gateway.grpc_addr, N, "later").await;
    assert_eq!(r.redirects, N as u64, "{}", r.table());
    assert_eq!(a.gateway.hub.metrics.joins.get(), N as u64);
    for i in 0..N {
        let s = ship(&format!("later-{i}"));
        assert!(a.holds(s).await && !b.holds(s).await, "later-{i} in shard 0 only");
    }
    a.stop().await;
    b.stop().await;
}

/// A shard whose replicant cannot answer makes a join fail (retryable) rather than risk a
/// second ship: the player may already have one there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_shard_refuses_the_join_instead_of_guessing() {
    let a = shard().await;
    let dead: std::net::SocketAddr = {
        // A port nothing listens on: bound, then closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gone =
        ShardLoad { index: 1, gateway: dead, replicant: dead, draining: false, players: Some(0) };
    a.gateway.hub.set_shards(0, vec![a.load(0, Some(9), false), gone]);
    let mut c = pb::player_link_client::PlayerLinkClient::connect(format!(
        "http://{}",
        a.gateway.grpc_addr
    ))
    .await
    .expect("connect");
    let e = c
        .join(pb::JoinRequest { name: "nobody".into(), ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("shard 1"), "{e:?}");
    // Alone again: it joins here.
    a.gateway.hub.set_shards(0, vec![a.load(0, Some(9), false)]);
    let j = c
        .join(pb::JoinRequest { name: "nobody".into(), ..Default::default() })
        .await
        .expect("joined")
        .into_inner();
    assert!(j.redirect.is_empty() && !j.token.is_empty(), "{j:?}");
    a.stop().await;
}

/// Player ships in a replicant's world now.
fn players_in(s: &Shard) -> usize {
    let core = s.replicant.shared.lock();
    core.world.entities().filter(|e| shard_move::is_player_ship(e.id)).count()
}

/// Shard 1 drains while its players play: its replicant moves their ships to shard 0
/// (position unchanged), their gateway tells them to continue at shard 0's gateway, and
/// the bots follow. Every ship ends in shard 0 exactly once, shard 1 holds no player, and
/// the bots see nothing lost or duplicated and no forced disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn players_of_a_draining_shard_are_moved_to_another_shard_while_playing() {
    let (a, b) = (shard().await, shard().await);
    const N: usize = 12;
    // Shard 0 busy, shard 1 empty: every player goes to shard 1.
    tell(&[&a, &b], &[a.load(0, Some(50), false), b.load(1, Some(0), false)]);
    let gw = a.gateway.grpc_addr;
    let bots =
        tokio::spawn(async move { bots_for(gw, N, "drained", Duration::from_secs(12)).await });
    let t = Instant::now();
    while players_in(&b) < N {
        assert!(t.elapsed() < Duration::from_secs(8), "only {} ships in shard 1", players_in(&b));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: Vec<_> = (0..N)
        .map(|i| {
            let id = ship(&format!("drained-{i}"));
            let core = b.replicant.shared.lock();
            let e = core.world.entity(id).expect("ship in shard 1");
            (id, e.position)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Shard 1 drains: its ships move to shard 0 while the bots keep playing.
    tell(&[&a, &b], &[a.load(0, Some(0), false), b.load(1, Some(N as u64), true)]);
    let drain = Instant::now();
    while players_in(&b) > 0 {
        assert!(
            drain.elapsed() < Duration::from_secs(8),
            "{} ships left in shard 1",
            players_in(&b)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let emptied = drain.elapsed();
    let r = bots.await.expect("bots task");
    eprintln!("shard 1 emptied {emptied:?} after the drain began\n{}", r.table());
    assert_eq!(r.redirects, N as u64, "one redirect to shard 1 at join: {}", r.table());
    assert_eq!(r.gate_transfers, N as u64, "every bot followed its ship: {}", r.table());
    assert_eq!(r.reconnects, 0, "no forced disconnect: {}", r.table());
    // At least once per player (again to the stream a bot keeps on the old gateway a
    // while to check its ship does not show there).
    let told = b.gateway.hub.metrics.shard_moves.get();
    assert!(told >= N as u64, "{told} players told of a move");
    assert_eq!(a.gateway.hub.metrics.shard_moves.get(), 0);
    assert_eq!(a.gateway.hub.metrics.joins.get(), N as u64, "each player joined shard 0 once");
    for (id, at) in before {
        assert!(a.holds(id).await, "ship {id} is in shard 0");
        assert!(!b.holds(id).await, "ship {id} is not in shard 1");
        let mut admin =
            pb::admin_client::AdminClient::connect(format!("http://{}", b.replicant.grpc_addr))
                .await
                .expect("admin");
        let l = admin.lookup(pb::LookupRequest { id }).await.expect("lookup").into_inner();
        assert!(l.departed && !l.in_transit, "shard 1 keeps a tombstone for {id}: {l:?}");
        // Not teleported: the ship moved on from where it was in shard 1, by its own
        // flight only (speed 50 km/s over at most ~12 s).
        let now = a.replicant.shared.lock().world.entity(id).expect("in shard 0").position;
        assert!(now.dist(at) < 50.0 * 15.0, "ship {id} jumped from {at:?} to {now:?}");
    }
    assert_eq!(players_in(&b), 0);
    assert_eq!(players_in(&a), N);
    // What the operator waits for before deleting the shard: no player attached there
    // (`starmesh_players`), once the old streams have closed.
    let attached = |s: &Shard| {
        let core = s.replicant.shared.lock();
        tick::player_counts(&core).values().sum::<u64>()
    };
    let t = Instant::now();
    while attached(&b) > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{} players still attached", attached(&b));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("shard 1: 0 players attached {:?} after the bots ended", t.elapsed());
    // Players joining later at either gateway go to their ship in shard 0.
    let r = bots_at(b.gateway.grpc_addr, N, "drained").await;
    assert_eq!(r.redirects, N as u64, "{}", r.table());
    assert_eq!(players_in(&b), 0, "no second ship in the drained shard");
    a.stop().await;
    b.stop().await;
}

/// A move in transit survives a restart of the draining replicant while the target shard
/// is down: the transfer is durably recorded before the first `Arrive`, resumed from the
/// store at start, and the ship arrives in shard 0 exactly once, where it was (a handoff
/// from `shard:1` to shard 0's server, not a gate arrival).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_in_transit_survives_a_restart_of_the_draining_replicant() {
    use starmesh_node::replicant::gate;
    use starmesh_node::wire::pb::replicant_message::Msg;

    let dir = tempfile::tempdir().expect("dir");
    let open = || Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let b = start(&sol(), fast_config(), open()).await;
    let id = ship("mover");
    // A server creates the ship in deep space, as the game does on a spawn; committed.
    let mut sb = ServerClient::connect(b.grpc_addr, "s-deep").await;
    let epoch = sb.grant_for("deep-space").await;
    sb.send(write(1, epoch, id, (3000.0, 10.0, 0.0))).await;
    sb.committed(1).await;
    let before = b.replicant_entity(id);

    // Shard 0 is down (nothing listens there): the move is recorded and retried.
    let dead: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let loads = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
        vec![
            ShardLoad { index: 0, gateway: dead, replicant: a, draining: false, players: Some(0) },
            ShardLoad { index: 1, gateway: dead, replicant: b, draining: true, players: Some(1) },
        ]
    };
    b.shared.gates.set_shards(1, loads(dead, b.grpc_addr));
    let out = sb
        .until(|m| match m {
            Msg::HandoffOut(h) if h.entity.as_ref().is_some_and(|e| e.id == id) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(out.to_territory, "shard:0", "the server lets go of the ship");
    let t = Instant::now();
    while b.shared.metrics.gate_arrive_retries.get() == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "no Arrive attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let core = b.shared.lock();
        let l = gate::lookup(&core, id);
        assert!(l.in_transit && !l.present, "{l:?}");
    }

    // The draining replicant stops (its pod killed mid-drain) and lets go of its store.
    drop(sb);
    let weak = Arc::downgrade(&b.shared);
    b.shutdown().await;
    let t = Instant::now();
    while weak.upgrade().is_some() {
        assert!(t.elapsed() < Duration::from_secs(10), "the old replicant still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Shard 0 comes up; shard 1 restarts, still draining, and resumes the move.
    let a_dir = tempfile::tempdir().expect("dir");
    let a =
        start(&sol(), fast_config(), Arc::new(EmbeddedStore::open(a_dir.path()).expect("store")))
            .await;
    let mut sa = ServerClient::connect(a.grpc_addr, "s-deep").await;
    let a_epoch = sa.grant_for("deep-space").await;
    let b = start(&sol(), fast_config(), open()).await;
    {
        let core = b.shared.lock();
        let l = gate::lookup(&core, id);
        assert!(l.in_transit && !l.present, "resumed from the record, not the entity row: {l:?}");
    }
    b.shared.gates.set_shards(1, loads(a.grpc_addr, b.grpc_addr));
    let arrived = sa
        .until(|m| match m {
            Msg::HandoffIn(h) if h.entity.as_ref().is_some_and(|e| e.id == id) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(arrived.from_territory, "shard:1");
    assert_eq!((arrived.to_territory.as_str(), arrived.epoch), ("deep-space", a_epoch));
    let e = arrived.entity.expect("state");
    let p = e.position.expect("position");
    assert_eq!((p.x, p.y, p.z), (before.position.x, before.position.y, before.position.z));
    assert_eq!(e.version, before.version + 1, "the version line continues");
    let t = Instant::now();
    loop {
        let l = gate::lookup(&b.shared.lock(), id);
        if l.departed {
            assert!(!l.present && !l.in_transit, "{l:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never settled: {l:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.shared.lock().world.contains(id), "in shard 0");
    assert_eq!(a.shared.metrics.gate_transfers.with_label_values(&["arrived"]).get(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

trait EntityOf {
    fn replicant_entity(&self, id: u64) -> starmesh_node::model::Entity;
}

impl EntityOf for starmesh_node::replicant::Running {
    fn replicant_entity(&self, id: u64) -> starmesh_node::model::Entity {
        self.shared.lock().world.entity(id).expect("entity in the world").clone()
    }
}

/// A player away long enough for its ship to be evicted to the store, and no server owning
/// its territory any more: the draining shard streams the ship in and moves it like the
/// others, so the drained shard keeps only a tombstone (a returning player is sent to
/// shard 0, which holds the ship).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_ship_of_a_draining_shard_moves_too() {
    use starmesh_node::replicant::gate;

    let cfg = || Config { evict_after: Duration::from_millis(300), ..fast_config() };
    let (da, db) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let a = start(&sol(), cfg(), Arc::new(EmbeddedStore::open(da.path()).expect("store"))).await;
    let b = start(&sol(), cfg(), Arc::new(EmbeddedStore::open(db.path()).expect("store"))).await;
    let id = ship("away");
    let sb = {
        let mut s = ServerClient::connect(b.grpc_addr, "s-deep").await;
        let epoch = s.grant_for("deep-space").await;
        s.send(write(1, epoch, id, (3000.0, -10.0, 0.0))).await;
        s.committed(1).await;
        s
    };
    let t = Instant::now();
    while b.shared.lock().world.entity(id).is_some() {
        assert!(t.elapsed() < Duration::from_secs(10), "never evicted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.shared.lock().world.contains(id), "evicted, still held by shard 1");

    let dead: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    b.shared.gates.set_shards(
        1,
        vec![
            ShardLoad {
                index: 0,
                gateway: dead,
                replicant: a.grpc_addr,
                draining: false,
                players: Some(0),
            },
            ShardLoad {
                index: 1,
                gateway: dead,
                replicant: b.grpc_addr,
                draining: true,
                players: Some(0),
            },
        ],
    );
    let t = Instant::now();
    loop {
        let l = gate::lookup(&b.shared.lock(), id);
        if l.departed {
            assert!(!l.present, "{l:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "evicted ship never moved: {l:?}; Arrive retries {}, a: {:?}",
            b.shared.metrics.gate_arrive_retries.get(),
            ["arrived", "refused", "replayed"].map(|k| a
                .shared
                .metrics
                .gate_transfers
                .with_label_values(&[k])
                .get())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.shared.lock().world.contains(id), "in shard 0");
    drop(sb);
    a.shutdown().await;
    b.shutdown().await;
}
