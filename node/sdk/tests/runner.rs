//! The runner drives a studio's `Game` (not the example game) against a real
//! replicant on loopback: `entered` for the entities of a granted territory,
//! `tick` whose `entity_mut` changes are written (and `quiet_mut` ones are
//! not on their own), typed custom components (`custom::Registry`), and on
//! another server the neighbourhood stream: `neighbour` and
//! `component_changed` for entities it does not hold.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use starmesh_node::replicant::{self, Config};
use starmesh_node::store::embedded::EmbeddedStore;
use starmesh_sdk::{
    Entity, EntityId, Game, Metrics, Neighbour, ServerConfig, Slot, Vec3, custom, pb,
};

const SHIP: EntityId = 7;

#[derive(Default, Debug)]
struct Seen {
    entered: Vec<EntityId>,
    ticks: u64,
    neighbours: Vec<EntityId>,
    moved: u64,
    /// The counters carried by the neighbour's components, in order.
    components: Vec<u64>,
}

const COUNTER: &str = "test.counter";

/// The tick counter: a typed custom component of the entity.
fn counter(components: &[u8]) -> Option<u64> {
    let c = custom::decode(components).into_iter().find(|c| c.type_name == COUNTER)?;
    assert_eq!(c.schema_version, 1);
    Some(u64::from_le_bytes(c.data.get(..8)?.try_into().ok()?))
}

/// s-earth: moves its ship along x every tick and counts ticks in its
/// components, written only every 5th tick (quiet in between).
struct Mover(Arc<Mutex<Seen>>, custom::Registry);

impl Game for Mover {
    fn tick(&mut self, entities: &mut [Slot<'_>], dt: f64) {
        self.0.lock().unwrap().ticks += 1;
        for s in entities {
            let n = counter(&s.entity().components).unwrap_or(0) + 1;
            let e = if n.is_multiple_of(5) { s.entity_mut() } else { s.quiet_mut() };
            self.1.set(e, COUNTER, &n.to_le_bytes()).expect("registered, small");
            e.position = Vec3::new(1000.0 + (n % 100) as f64, 0.0, 0.0);
            e.velocity = Vec3::new(1.0 / dt.max(1e-3), 0.0, 0.0);
        }
    }

    fn entered(&mut self, e: &Entity) {
        self.0.lock().unwrap().entered.push(e.id);
    }

    // Declared in the runner's Hello: its writes go typed, checked by the replicant.
    fn components(&self) -> custom::Registry {
        self.1.clone()
    }
}

/// s-moon: holds no ship, watches earth.
struct Watcher(Arc<Mutex<Seen>>);

impl Game for Watcher {
    fn neighbourhood(&self) -> Option<(Vec3, f64)> {
        Some((Vec3::new(1000.0, 0.0, 0.0), 400.0))
    }

    fn neighbour(&mut self, n: Neighbour<'_>) {
        let mut s = self.0.lock().unwrap();
        match n {
            Neighbour::Entered(e) => s.neighbours.push(e.id),
            Neighbour::Moved { .. } => s.moved += 1,
            Neighbour::Left(_) => {}
        }
    }

    fn component_changed(&mut self, id: EntityId, components: &Bytes) {
        if id == SHIP
            && let Some(n) = counter(components)
        {
            self.0.lock().unwrap().components.push(n);
        }
    }
}

fn sol() -> starmesh_node::resources::Mesh {
    let f = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sol.yaml");
    starmesh_node::resources::load(&[f], "0").expect("the test world is valid")
}

/// Creates the ship in earth with a plain ServerLink client, then goes away.
async fn create_ship(addr: std::net::SocketAddr) {
    use pb::{replicant_message::Msg, server_message};
    let mut c = pb::server_link_client::ServerLinkClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let msg = |m| pb::ServerMessage { msg: Some(m) };
    // Declares the counter type, as the runner does from `Game::components`.
    let components =
        vec![pb::ComponentType { type_name: COUNTER.into(), schema_version: 1, max_bytes: 8 }];
    let hello = pb::Hello { server_name: "s-earth".into(), protocol_version: 1, components };
    tx.send(msg(server_message::Msg::Hello(hello))).await.unwrap();
    let mut rx =
        c.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let epoch = loop {
        match rx.message().await {
            Ok(Some(pb::ReplicantMessage { msg: Some(Msg::Grant(g)) }))
                if g.territory == "earth" =>
            {
                break g.epoch;
            }
            Ok(Some(_)) => {}
            other => panic!("no earth grant: {other:?}"),
        }
    };
    let w = pb::EntityWrite {
        seq: 1,
        epoch,
        id: SHIP,
        kind: 1,
        position: Some(pb::Vec3 { x: 1000.0, y: 0.0, z: 0.0 }),
        velocity: Some(pb::Vec3::default()),
        location: String::new(),
        components: Bytes::new(),
        custom: vec![pb::CustomComponent {
            type_name: COUNTER.into(),
            schema_version: 1,
            data: Bytes::from(0u64.to_le_bytes().to_vec()),
        }],
    };
    tx.send(msg(server_message::Msg::Write(w))).await.unwrap();
    loop {
        match rx.message().await {
            Ok(Some(pb::ReplicantMessage { msg: Some(Msg::Committed(c)) })) if c.seq >= 1 => break,
            Ok(Some(_)) => {}
            other => panic!("not committed: {other:?}"),
        }
    }
}

async fn lookup(addr: std::net::SocketAddr) -> pb::EntityState {
    let mut a = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await.unwrap();
    let l = a.lookup(pb::LookupRequest { id: SHIP }).await.unwrap().into_inner();
    l.entity.expect("resident")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_game_is_run_by_the_runner_with_authority_writes_and_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let cfg = Config { tick_hz: 50, lease: Duration::from_millis(800), ..Config::default() };
    let any = "127.0.0.1:0".parse().unwrap();
    let r = replicant::start(&sol(), cfg, store, any, any).await.expect("replicant starts");
    tokio::time::timeout(Duration::from_secs(30), r.loaded()).await.expect("loaded");
    create_ship(r.grpc_addr).await;
    let created = lookup(r.grpc_addr).await;

    let (mover, watcher) =
        (Arc::new(Mutex::new(Seen::default())), Arc::new(Mutex::new(Seen::default())));
    let run = |name: &str| ServerConfig {
        replicant: r.grpc_addr.to_string(),
        name: name.into(),
        tick_hz: 50,
    };
    let m1 = Arc::new(Metrics::new(0.02));
    let t1 = tokio::spawn(starmesh_sdk::run(
        run("s-earth"),
        Mover(mover.clone(), custom::Registry::new().register(COUNTER, 1).unwrap()),
        m1.clone(),
    ));
    let t2 = tokio::spawn(starmesh_sdk::run(
        run("s-moon"),
        Watcher(watcher.clone()),
        Arc::new(Metrics::new(0.02)),
    ));

    let t = std::time::Instant::now();
    loop {
        let done = {
            let w = watcher.lock().unwrap();
            w.neighbours.contains(&SHIP) && w.components.len() >= 3 && w.moved >= 3
        };
        if done {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "mover {:?} watcher {:?}",
            mover.lock().unwrap(),
            watcher.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = lookup(r.grpc_addr).await;
    t1.abort();
    t2.abort();
    let (mv, w) = (mover.lock().unwrap(), watcher.lock().unwrap());
    assert_eq!(mv.entered, [SHIP], "the runner handed the ship to the game once");
    assert!(now.version > created.version, "the game's writes were applied");
    let n = counter(&now.components).expect("a counter");
    assert!(
        n.is_multiple_of(5),
        "only every 5th tick's state is written (quiet_mut in between): {n}"
    );
    // 1: the runner's own first write after the handoff (it confirms the new
    // owner at once); after that only what the game asked for.
    assert!(w.components.iter().all(|c| *c == 1 || c.is_multiple_of(5)), "{:?}", w.components);
    assert!(w.components.windows(2).all(|p| p[0] < p[1]), "in order: {:?}", w.components);
    assert!(mv.ticks >= n, "ticks {} counter {n}", mv.ticks);
    assert_eq!(m1.writes_rejected.get(), 0);
}
