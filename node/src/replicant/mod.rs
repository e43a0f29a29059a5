//! `starmesh replicant`: the shard's source of truth.
//!
//! Layout: the pure decisions live in `state` (entities, tick boundary,
//! handoff), `authority` (grants, epochs, takeover, drain), `spatial_index`
//! and `interest` (what each subscriber gets); `persistence` is the
//! write-behind queue and committer; `service` is the tonic glue; `tick` runs
//! the clock. All shared state sits in one `Core` behind one mutex that is
//! never held across an `.await`.

pub mod authority;
pub mod interest;
pub mod metrics;
pub mod persistence;
pub mod service;
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
use crate::store::Store;
use crate::territory::{MeshConfig, TerritoryMap};
use crate::wire::pb;

use authority::{Authority, Change};
use interest::Subscription;
use metrics::Metrics;
use persistence::WriteBehind;
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
    /// Highest committed write seq, merged into the outbound stream.
    pub committed: watch::Sender<u64>,
    pub sub: Option<Subscription>,
    pub slow_ticks: u64,
}

pub struct GatewayConn {
    pub tx: GatewayTx,
    pub kill: Arc<Notify>,
    pub players: BTreeSet<PlayerId>,
}

pub struct Player {
    pub conn: u64,
    pub entity: EntityId,
    pub sub: Subscription,
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
    pub streaming_in: HashSet<EntityId>,
    next_conn: u64,
}

impl Core {
    pub fn next_conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    fn conn_of(&self, server: &str) -> Option<u64> {
        self.world.authority.conn_of(server)
    }

    /// Sends a control message (grant, revoke, handoff, rejection). These
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
            Err(_) => {
                tracing::warn!(conn, server = %s.name, "server queue full for a control message; disconnecting it");
                m.subscribers_dropped.inc();
                self.drop_server(
                    conn,
                    Status::resource_exhausted("starmesh: outbound queue full"),
                    m,
                );
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
}

impl Shared {
    /// The core lock. A panic while holding it is a bug; recovering the
    /// guard keeps the rest of the replicant serving rather than cascading.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ready(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed) && !self.lock().wb.is_full()
    }
}

/// A running replicant (in-process; the binary wraps this).
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        for _ in 0..8 {
            self.shared.shutdown.notify_waiters();
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Recovers from the store, binds the listeners and starts serving.
pub async fn start(
    mesh: &MeshConfig,
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
    let map = TerritoryMap::new(mesh)?;
    let generation = store.begin_generation().await?;
    let static_owners = map.static_owners().clone();
    let authority = Authority::new(map.names(), static_owners, generation, cfg.lease);
    let mut world = World::new(map, authority, cfg.cell_size_km);
    let recovered = store.load_all().await?;
    tracing::info!(
        entities = recovered.len(),
        generation,
        store = store.name(),
        "recovered from store"
    );
    for e in recovered {
        world.load(e);
    }
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            world,
            servers: HashMap::new(),
            gateways: HashMap::new(),
            players: HashMap::new(),
            wb: WriteBehind::new(cfg.backlog_bound),
            committed_tick: None,
            tick_acks: HashMap::new(),
            streaming_in: HashSet::new(),
            next_conn: 0,
        }),
        metrics: Metrics::new(),
        store,
        cfg,
        system: mesh.system.clone(),
        shard: mesh.shard.clone(),
        commit_notify: Notify::new(),
        shutdown: Notify::new(),
        store_ok: AtomicBool::new(true),
    });
    shared.metrics.store_up.set(1);

    let grpc = tokio::net::TcpListener::bind(grpc_listen).await?;
    let metrics = tokio::net::TcpListener::bind(metrics_listen).await?;
    let grpc_addr = grpc.local_addr()?;
    let metrics_addr = metrics.local_addr()?;
    let tasks = vec![
        tokio::spawn(tick::run(shared.clone())),
        tokio::spawn(persistence::run_committer(shared.clone())),
        tokio::spawn(service::serve_grpc(shared.clone(), grpc)),
        tokio::spawn(service::serve_metrics(shared.clone(), metrics)),
    ];
    Ok(Running { grpc_addr, metrics_addr, shared, tasks })
}
