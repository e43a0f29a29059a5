//! `starmesh replicant`: the shard's source of truth.
//!
//! Layout: the pure decisions live in `state` (entities, tick boundary,
//! handoff), `authority` (grants, epochs, takeover, drain), `spatial_index`
//! and `interest` (what each subscriber gets); `persistence` is the
//! write-behind queue and committer; `service` is the tonic glue; `tick` runs
//! the clock. All shared state sits in one `Core` behind one mutex that is
//! never held across an `.await`.

pub mod authority;
pub mod components;
pub mod gate;
pub mod interest;
pub mod metrics;
pub mod partition;
pub mod persistence;
pub mod rejections;
pub mod service;
pub mod shard_move;
pub mod spatial_index;
pub mod state;
pub mod tick;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;

use crate::model::{EntityId, PlayerId, ServerName};
use crate::resources::Mesh;
use crate::store::Store;
use crate::wire::pb;

use authority::{Authority, Change};
use interest::Subscription;
use metrics::Metrics;
use persistence::WriteBehind;
use rejections::Rejections;
use state::World;

#[derive(Clone, Debug)]
pub struct Config {
    pub tick_hz: u32,
    pub lease: Duration,
    /// Bytes per tick each subscriber may be sent.
    pub budget_bytes: usize,
    /// Outbound queue per stream, in messages.
    pub queue_capacity: usize,
    /// Entity changes that may wait for the store before writes are refused.
    pub backlog_bound: usize,
    pub evict_after: Duration,
    pub cell_size_km: f64,
    /// A subscriber whose queue stays full this long is disconnected.
    pub slow_subscriber_timeout: Duration,
    /// Jump-gate peers: (StarSystem name, `host:port` of its replicant's gRPC).
    pub gate_peers: Vec<(String, String)>,
    /// Level of detail of every player's bubble (`interest::BubbleCap`).
    pub bubble_cap: interest::BubbleCap,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tick_hz: 30,
            lease: Duration::from_secs(3),
            budget_bytes: 64 * 1024,
            queue_capacity: 256,
            backlog_bound: 1_000_000,
            evict_after: Duration::from_secs(60),
            cell_size_km: 100.0,
            slow_subscriber_timeout: Duration::from_secs(10),
            gate_peers: Vec::new(),
            bubble_cap: interest::BubbleCap::default(),
        }
    }
}

impl Config {
    pub fn ticks(&self, d: Duration) -> u64 {
        (d.as_secs_f64() * f64::from(self.tick_hz)).ceil() as u64
    }
}

pub type ServerTx = mpsc::Sender<Result<pb::ReplicantMessage, Status>>;
pub type GatewayTx = mpsc::Sender<Result<pb::GatewayUpdate, Status>>;

pub struct ServerConn {
    pub name: ServerName,
    pub tx: ServerTx,
    pub kill: Arc<Notify>,
    /// (highest committed write seq, tick of the commit), merged into the outbound stream.
    pub committed: watch::Sender<(u64, u64)>,
    pub sub: Option<Subscription>,
    pub slow_ticks: u64,
}

pub struct GatewayConn {
    pub tx: GatewayTx,
    pub kill: Arc<Notify>,
    pub players: BTreeSet<PlayerId>,
    /// Consecutive ticks its queue had no room at all (it is dropped past
    /// `slow_subscriber_timeout`).
    pub stalled_ticks: u64,
}

pub struct Player {
    pub conn: u64,
    pub entity: EntityId,
    pub sub: Subscription,
    /// Consecutive ticks it had updates and was not served (its link's turn
    /// order: longest-waiting first).
    pub slow_ticks: u64,
}

pub struct Core {
    pub world: World,
    pub servers: HashMap<u64, ServerConn>,
    pub gateways: HashMap<u64, GatewayConn>,
    pub players: HashMap<PlayerId, Player>,
    pub wb: WriteBehind,
    pub committed_tick: Option<u64>,
    /// conn -> highest seq applied this tick (becomes the tick group's acks).
    pub tick_acks: HashMap<u64, u64>,
    /// conn -> this tick's rejected writes, sent as one message per tick.
    pub tick_rejections: HashMap<u64, Rejections>,
    /// (conn, entity) for every entity a write of that connection created this
    /// tick, confirmed to the writer once the tick's rejections are out
    /// (`tick::confirm_created`).
    pub tick_created: Vec<(u64, EntityId)>,
    pub streaming_in: HashSet<EntityId>,
    /// Evicted entities a takeover needs back in memory (picked up by the next tick).
    pub stream_in_wanted: Vec<EntityId>,
    /// Jump-gate transfers in transit, departed and arriving (`gate`).
    pub gates: gate::GateBook,
    /// The partition's version and the changes waiting for the next tick boundary.
    pub partition: partition::Book,
    /// The custom component types servers declared (`components`).
    pub components: components::Registry,
    next_conn: u64,
}

impl Core {
    /// An empty core around `world` (no connections yet). Public so the
    /// deterministic simulation test (`tests/authority_simulation.rs`) can
    /// drive the real core and tick without a network.
    pub fn new(world: World, backlog_bound: usize) -> Self {
        Self {
            world,
            servers: HashMap::new(),
            gateways: HashMap::new(),
            players: HashMap::new(),
            wb: WriteBehind::new(backlog_bound),
            committed_tick: None,
            tick_acks: HashMap::new(),
            tick_rejections: HashMap::new(),
            tick_created: Vec::new(),
            streaming_in: HashSet::new(),
            stream_in_wanted: Vec::new(),
            gates: gate::GateBook::default(),
            partition: partition::Book::default(),
            components: components::Registry::default(),
            next_conn: 0,
        }
    }

    pub fn next_conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn conn_of(&self, server: &str) -> Option<u64> {
        self.world.authority.conn_of(server)
    }

    /// Sends a control message (grant, revoke, handoff, input). These
    /// must not be lost, so a server whose queue is full is disconnected
    /// (it loses its territories) rather than silently missing one.
    pub fn send_control(
        &mut self,
        conn: u64,
        msg: pb::replicant_message::Msg,
        m: &Metrics,
    ) -> bool {
        let Some(s) = self.servers.get(&conn) else { return false };
        let msg = pb::ReplicantMessage { msg: Some(msg) };
        let len = prost::Message::encoded_len(&msg);
        match s.tx.try_send(Ok(msg)) {
            Ok(()) => {
                m.count("server", "out", len);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(conn, server = %s.name, "server queue full for a control message; disconnecting it");
                m.subscribers_dropped.inc();
                self.drop_server(
                    conn,
                    Status::resource_exhausted("starmesh: outbound queue full"),
                    m,
                );
                false
            }
            // The stream is already gone (the server died); the session's own close
            // path may not have run yet. Not a slow subscriber: just a disconnect.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::info!(conn, server = %s.name, "server stream closed; giving its territories away");
                self.drop_server(conn, Status::cancelled("starmesh: stream closed"), m);
                false
            }
        }
    }

    /// Ends a server's session and gives its territories away at once.
    pub fn drop_server(&mut self, conn: u64, status: Status, m: &Metrics) {
        let Some(s) = self.servers.remove(&conn) else { return };
        let _ = s.tx.try_send(Err(status));
        s.kill.notify_one();
        let changes = self.world.authority.disconnect(&s.name, conn);
        self.apply_changes(changes, m);
    }

    pub fn drop_gateway(&mut self, conn: u64, status: Option<Status>) {
        let Some(g) = self.gateways.remove(&conn) else { return };
        if let Some(st) = status {
            let _ = g.tx.try_send(Err(st));
        }
        g.kill.notify_one();
        for p in g.players {
            if self.players.get(&p).is_some_and(|pl| pl.conn == conn) {
                self.players.remove(&p);
            }
        }
    }

    /// Tells servers about authority changes; a new owner also gets the state
    /// of every entity in the territory, so it can resume simulating them.
    pub fn apply_changes(&mut self, changes: Vec<Change>, m: &Metrics) {
        use pb::replicant_message::Msg;
        for c in changes {
            match c {
                Change::Revoked { territory, server, epoch } => {
                    tracing::info!(%territory, %server, epoch, "authority revoked");
                    if let Some(conn) = self.conn_of(&server) {
                        self.send_control(
                            conn,
                            Msg::Revoke(pb::AuthorityRevoke {
                                territory: territory.to_string(),
                                epoch,
                            }),
                            m,
                        );
                    }
                }
                Change::Granted { territory, server, epoch } => {
                    tracing::info!(%territory, %server, epoch, "authority granted");
                    let Some(conn) = self.conn_of(&server) else { continue };
                    if !self.send_control(
                        conn,
                        Msg::Grant(pb::AuthorityGrant { territory: territory.to_string(), epoch }),
                        m,
                    ) {
                        continue;
                    }
                    // Evicted entities of the territory are streamed back in; the
                    // owner gets each as a handoff once it is loaded.
                    self.world.evicted_in(&territory, &mut self.stream_in_wanted);
                    let tick = self.world.tick();
                    let states: Vec<_> = self
                        .world
                        .entities_in(&territory)
                        .map(crate::wire::validate::entity_to_pb)
                        .collect();
                    for e in states {
                        let h = pb::EntityHandoff {
                            entity: Some(e),
                            from_territory: territory.to_string(),
                            to_territory: territory.to_string(),
                            epoch,
                            tick,
                        };
                        if !self.send_control(conn, Msg::HandoffIn(h), m) {
                            break;
                        }
                    }
                }
            }
        }
    }
}

pub struct Shared {
    pub core: Mutex<Core>,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    pub cfg: Config,
    pub system: String,
    pub shard: String,
    pub commit_notify: Notify,
    pub shutdown: Notify,
    pub store_ok: AtomicBool,
    /// Set by `Running::shutdown`: retry loops (gate transfers) stop.
    pub stopping: AtomicBool,
    /// This system's jump gates and the replicants they lead to.
    pub gates: gate::Gates,
    /// False until everything committed has been read back from the store:
    /// until then the replicant serves nothing, because an empty world is
    /// not the truth.
    pub loaded: watch::Sender<bool>,
}

impl Shared {
    /// The core lock. A panic while holding it is a bug; recovering the
    /// guard keeps the rest of the replicant serving rather than cascading.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` when ready, else why not (the `/readyz` body).
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !*self.loaded.borrow() {
            Some("loading: the store is not reachable yet; not serving an empty world")
        } else if !self.store_ok.load(Ordering::Relaxed) {
            Some("store unavailable: serving from memory, buffering commits")
        } else if self.lock().wb.is_full() {
            Some("store backlog full: refusing writes")
        } else {
            None
        }
    }

    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }
}

/// A running replicant (in-process; the binary wraps this).
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Running {
    /// Waits until the world has been loaded from the store and gRPC is served.
    pub async fn loaded(&self) {
        let mut rx = self.shared.loaded.subscribe();
        // The sender lives in `shared`, which `self` holds: it cannot close.
        let _ = rx.wait_for(|l| *l).await;
    }

    pub async fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        for _ in 0..8 {
            self.shared.shutdown.notify_waiters();
        }
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // The recovery task may have spawned more while we waited.
        let late: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in late {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Binds the listeners and serves `/metrics` and `/readyz` at once; then, in
/// the background, recovers from the store (retrying with backoff while it is
/// unreachable, `/readyz` saying why) and only then serves gRPC.
pub async fn start(
    mesh: &Mesh,
    cfg: Config,
    store: Arc<dyn Store>,
    grpc_listen: SocketAddr,
    metrics_listen: SocketAddr,
) -> anyhow::Result<Running> {
    anyhow::ensure!(cfg.tick_hz > 0 && cfg.tick_hz <= 1000, "tick rate must be 1..=1000 Hz");
    anyhow::ensure!(
        cfg.cell_size_km.is_finite() && cfg.cell_size_km > 0.0,
        "cell size must be > 0"
    );
    let gates = gate::Gates::new(&mesh.gates, &cfg.gate_peers)?;
    if let Ok(step) = std::env::var(gate::CRASH_ENV) {
        tracing::warn!(%step, "{} is set: this replicant will abort at that step (test-only fault injection)", gate::CRASH_ENV);
    }
    let map = mesh.map.clone();
    // A placeholder until recovery: nothing reads it before `loaded`.
    let authority = Authority::new(map.names(), map.static_owners().clone(), 0, cfg.lease);
    let world = World::new(map, authority, cfg.cell_size_km);
    let shared = Arc::new(Shared {
        core: Mutex::new(Core::new(world, cfg.backlog_bound)),
        metrics: Metrics::new(),
        store,
        cfg,
        system: mesh.system.clone(),
        shard: mesh.shard.clone(),
        commit_notify: Notify::new(),
        shutdown: Notify::new(),
        store_ok: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        gates,
        loaded: watch::Sender::new(false),
    });

    let grpc = tokio::net::TcpListener::bind(grpc_listen).await?;
    let metrics = tokio::net::TcpListener::bind(metrics_listen).await?;
    let grpc_addr = grpc.local_addr()?;
    let metrics_addr = metrics.local_addr()?;
    let tasks =
        Arc::new(Mutex::new(vec![tokio::spawn(service::serve_metrics(shared.clone(), metrics))]));
    let recovery =
        tokio::spawn(recover_then_serve(shared.clone(), mesh.map.clone(), grpc, tasks.clone()));
    tasks.lock().unwrap_or_else(|p| p.into_inner()).push(recovery);
    Ok(Running { grpc_addr, metrics_addr, shared, tasks })
}

/// Reads back everything committed, retrying until the store answers, then
/// starts the clock, the committer and the gRPC services.
async fn recover_then_serve(
    shared: Arc<Shared>,
    map: crate::territory::TerritoryMap,
    grpc: tokio::net::TcpListener,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) {
    let mut backoff = Duration::from_millis(100);
    let (generation, partition, mut recovered, transfers) = loop {
        let attempt = async {
            let generation = shared.store.begin_generation().await?;
            // The cells first: every entity loaded is placed in them.
            let partition = shared.store.load_partition().await?;
            let entities = shared.store.load_all().await?;
            let transfers = shared.store.gate_load().await?;
            Ok::<_, crate::store::StoreError>((generation, partition, entities, transfers))
        };
        match attempt.await {
            Ok(r) => break r,
            Err(e) => {
                shared.metrics.store_up.set(0);
                tracing::warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "not ready: cannot load the world from the store; not serving an empty world, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.shutdown.notified() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    let started = std::time::Instant::now();
    {
        let mut map = map;
        let partition_version = partition::recovered(&mut map, partition);
        let mut core = shared.lock();
        let mut authority =
            Authority::new(map.names(), map.static_owners().clone(), generation, shared.cfg.lease);
        authority.set_balanced(map.is_dynamic());
        shared
            .metrics
            .cells
            .with_label_values(&[&shared.system, &shared.shard])
            .set(map.names().len() as i64);
        core.world = World::new(map, authority, shared.cfg.cell_size_km);
        core.partition.version = partition_version;
        // A gate transfer record is the truth about its entity: a row of the
        // same id is the state it left with (or an older one a racing group
        // commit wrote back), never a second copy.
        let gone: HashSet<EntityId> = transfers.iter().map(|t| t.entity.id).collect();
        recovered.retain(|e| !gone.contains(&e.id));
        core.gates.outbound = transfers.into_iter().map(|t| (t.entity.id, t)).collect();
        shared.metrics.gate_in_transit.set(core.gates.in_transit() as i64);
        let n = recovered.len();
        for mut e in recovered {
            e.version = recovered_version(e.version, generation);
            core.world.load(e);
        }
        tick::update_gauges(&shared, &core);
        tracing::info!(
            entities = n,
            generation,
            store = shared.store.name(),
            index_ms = started.elapsed().as_millis() as u64,
            "recovered from store; ready"
        );
    }
    shared.metrics.store_up.set(1);
    shared.store_ok.store(true, Ordering::Relaxed);
    let spawned = [
        tokio::spawn(tick::run(shared.clone())),
        tokio::spawn(persistence::run_committer(shared.clone())),
        tokio::spawn(service::serve_grpc(shared.clone(), grpc)),
    ];
    tasks.lock().unwrap_or_else(|p| p.into_inner()).extend(spawned);
    tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(tokio::spawn(shard_move::run(shared.clone())));
    let resumed = gate::resume(&shared);
    tasks.lock().unwrap_or_else(|p| p.into_inner()).extend(resumed);
    shared.loaded.send_replace(true);
}

/// An entity's version after a restart: at least `generation << 32`, this incarnation's floor.
/// Players may have seen versions that were streamed but never committed (write-behind) and
/// so were lost with the crash; restarting from the stored version would show them a version
/// line going backwards, indistinguishable from a second writer. Each incarnation's versions
/// start above every earlier one's instead (2^32 writes per entity per incarnation: years at
/// any tick rate), so a version only ever grows, across crashes too.
pub fn recovered_version(stored: u64, generation: u64) -> u64 {
    stored.max(generation << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_version_is_above_every_earlier_incarnation() {
        // Generation 3 may have shown versions up to 3<<32 | n; generation 4 starts above them.
        let seen_before_crash = (3 << 32) | 900;
        let stored = (3 << 32) | 700; // the last commit before the crash
        let after = recovered_version(stored, 4);
        assert!(after > seen_before_crash);
        // A store already ahead (an entity from another shard's line) is kept.
        assert_eq!(recovered_version(9 << 32, 4), 9 << 32);
    }
}
