//! `starmesh gateway`: where players connect. A player's connection is to
//! the gateway, which keeps one GatewayLink stream to the shard's replicant
//! and multiplexes every player over it; so a handoff or a game server crash
//! changes nothing for the connection, and a replicant reconnect is hidden
//! from players (the gateway re-attaches them all).
//!
//! Per player: a token bucket bounds inputs (`rate_limit`), a coalescer
//! bounds the outbound bubble (`bubble`), messages are size-limited and
//! validated, and the player's ship is created by whichever game server owns
//! its spawn point (`placement`).

pub mod auth;
pub mod bubble;
pub mod deadline;
pub mod forward;
pub mod placement;
pub mod rate_limit;
pub mod shards;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::Stream;
use prometheus::{IntCounter, IntGauge, Registry};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::model::{EntityId, PlayerId, Vec3};
use crate::wire::pb::{self, gateway_message, player_update};
use crate::wire::validate::{
    MAX_COORD_KM, MAX_NAME_LEN, MAX_RADIUS_KM, MAX_SPEED_KM_S, vec3_to_pb,
};

use bubble::Coalescer;
use placement::World;
use rate_limit::TokenBucket;

/// Bound on one message from a player (a command with a full route fits easily).
pub const MAX_PLAYER_MESSAGE_BYTES: usize = 16 * 1024;
pub const MAX_ROUTE_LEN: usize = 32;
/// Bound on one message from the replicant (a bubble batch under its byte budget).
const MAX_REPLICANT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Messages queued to the replicant. Inputs are rate-limited per player, so a
/// full queue means the replicant is unreachable: inputs are then dropped
/// (counted) rather than held — a stale input is worse than none.
const LINK_QUEUE: usize = 16_384;
/// Batches in flight to one player; beyond that the coalescer holds the rest.
const PLAYER_QUEUE: usize = 4;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keepalive to players: a ping every PING_INTERVAL, unanswered for PING_TIMEOUT
/// ends the connection.
const PING_INTERVAL: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
const SPAWN_RETRY: Duration = Duration::from_millis(500);
/// Players with an open stream on one gateway; more are refused, so memory is bounded.
pub const MAX_PLAYERS: usize = 200_000;

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// host:port of the replicant's gRPC endpoint.
    pub replicant: String,
    /// Inputs per second per player (average) and burst.
    pub input_rate: f64,
    pub input_burst: f64,
    /// Radius (km) of each player's streaming bubble.
    pub bubble_radius: f64,
}

/// GatewayLink streams to the replicant by default (3,200 players at full rate).
pub const DEFAULT_LINKS: usize = 32;

/// Players per replicant link the gateway aims for. The replicant queues at
/// most one bubble batch per player per tick on a link, in a bounded queue
/// (256 messages); a link carrying more players than that starves the ones
/// it iterates last. So players are spread over several links.
pub const PLAYERS_PER_LINK: usize = 100;

pub struct Metrics {
    pub registry: Registry,
    /// Every family registered, for the metric reference (`node-reference`).
    pub described: Vec<starmesh_api::reference::MetricDoc>,
    pub players: IntGauge,
    pub joins: IntCounter,
    pub inputs_forwarded: IntCounter,
    pub inputs_rate_limited: IntCounter,
    pub inputs_unroutable: IntCounter,
    pub batches_sent: IntCounter,
    pub batches_coalesced: IntCounter,
    pub bubble_wait: prometheus::Histogram,
    pub player_stream_full: IntCounter,
    pub bubbles_overflowed: IntCounter,
    pub replicant_reconnects: IntCounter,
    pub bad_messages: IntCounter,
    pub spawn_requests: IntCounter,
    pub gate_transfers: IntCounter,
    pub shard_moves: IntCounter,
    pub auth_refused: IntCounter,
    pub redirects: IntCounter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let r = starmesh_api::reference::MetricCatalog::new();
        let c = |n: &str, h: &str| {
            let c = IntCounter::new(n, h).expect("valid metric");
            // Names are static and unique, so registration cannot fail.
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let players = IntGauge::new("starmesh_gateway_players", "Players with an open stream")
            .expect("valid metric");
        r.register(Box::new(players.clone())).expect("unique metric");
        Self {
            players,
            joins: c("starmesh_gateway_joins_total", "Join calls accepted"),
            inputs_forwarded: c(
                "starmesh_gateway_inputs_forwarded_total",
                "Inputs sent to the replicant",
            ),
            inputs_rate_limited: c(
                "starmesh_gateway_inputs_rate_limited_total",
                "Inputs dropped by a player's token bucket",
            ),
            inputs_unroutable: c(
                "starmesh_gateway_inputs_unroutable_total",
                "Inputs dropped because the replicant link was down or full",
            ),
            batches_sent: c(
                "starmesh_gateway_bubble_batches_sent_total",
                "Bubble batches sent to players",
            ),
            batches_coalesced: c(
                "starmesh_gateway_bubble_batches_coalesced_total",
                "Bubble batches merged into one not yet written to the player (a slow reader, or batches arriving close together)",
            ),
            bubble_wait: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "starmesh_gateway_bubble_wait_seconds",
                        "Time from a bubble batch's arrival from the replicant to its hand-over to the player's stream",
                    )
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.1, 0.25, 1.0]),
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            player_stream_full: c(
                "starmesh_gateway_player_stream_full_total",
                "Bubble batches that waited for room in the player's stream (the player or its connection read slowly)",
            ),
            bubbles_overflowed: c(
                "starmesh_gateway_bubble_overflows_total",
                "Player streams ended because their pending bubble exceeded its bound",
            ),
            replicant_reconnects: c(
                "starmesh_gateway_replicant_reconnects_total",
                "Replicant link reconnects",
            ),
            bad_messages: c(
                "starmesh_gateway_bad_messages_total",
                "Player streams ended by an invalid message",
            ),
            spawn_requests: c("starmesh_gateway_spawn_requests_total", "Ship spawn requests sent"),
            gate_transfers: c(
                "starmesh_gateway_gate_transfers_total",
                "Players told their ship left through a jump gate (Transferred)",
            ),
            shard_moves: c(
                "starmesh_gateway_shard_moves_total",
                "Players told their ship moved to another shard of the layout, theirs draining (Transferred)",
            ),
            auth_refused: c(
                "starmesh_gateway_auth_refused_total",
                "Join or Play refused for a missing, malformed, forged or expired token, or a Play session ended when its token expired",
            ),
            redirects: c(
                "starmesh_gateway_redirects_total",
                "Joins answered with a redirect to another shard's gateway (the ship lives \
                 there, or it is less loaded)",
            ),
            described: r.described(),
            registry: r.registry(),
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric data, which we never produce.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// One player known to this gateway (kept across its reconnects).
pub struct Slot {
    pub player: PlayerId,
    pub entity: EntityId,
    spawn: pb::Spawn,
    outbox: Mutex<Outbox>,
    /// Bumped whenever the bubble has something new; the writer waits on it.
    wake: watch::Sender<u64>,
    overflowed: AtomicBool,
    /// The ship has appeared in the bubble: no more spawn requests.
    seen: AtomicBool,
    /// Generation of the current Play stream; an older stream stops writing.
    stream: AtomicU64,
    active: AtomicBool,
    inputs_dropped: AtomicU64,
    /// The ship's last position seen in the bubble (which gate it took).
    last_pos: Mutex<Option<Vec3>>,
    /// The ship left the bubble: maybe through a jump gate (asked of the replicant).
    gone: AtomicBool,
    /// A `Transferred` for the player's stream, and the stream generation
    /// it was last queued for (once per stream).
    transfer: Mutex<Option<pb::Transferred>>,
    announced: AtomicU64,
}

type PlayerTx = mpsc::Sender<Result<forward::PlayerUpdateOut, Status>>;

/// A player's outbound side, under one lock so that its batches keep their order.
#[derive(Default)]
struct Outbox {
    pending: Coalescer,
    /// The current Play stream. A batch that finds nothing pending and the writer
    /// idle goes straight into it: most batches then never wake the player's
    /// writer task (one task hop fewer per player per tick).
    stream: Option<PlayerTx>,
    /// The writer task has taken from `pending` and not yet handed it over: a
    /// batch arriving now must wait behind it.
    writer_sending: bool,
}

impl Slot {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the player's writer task there is something to look at.
    fn wake_writer(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A batch for this player, as the replicant encoded it. `own` is the
    /// player's ship in it, when the batch holds an update of the ship.
    fn deliver(
        &self,
        batch: bytes::Bytes,
        own: Option<pb::OwnShip>,
        m: &Metrics,
    ) -> Result<(), bubble::PushError> {
        if let Some(own) = own {
            if own.present {
                self.gone.store(false, Ordering::Relaxed);
                self.seen.store(true, Ordering::Relaxed);
                if let Some(p) = own.position {
                    *self.last_pos.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Vec3::new(p.x, p.y, p.z));
                }
            } else {
                self.gone.store(true, Ordering::Relaxed);
            }
        }
        let mut o = self.outbox();
        if o.pending.is_empty()
            && !o.writer_sending
            && let Some(tx) = &o.stream
        {
            match tx.try_send(Ok(forward::PlayerUpdateOut::Bubble(batch.clone()))) {
                Ok(()) => {
                    m.batches_sent.inc();
                    m.bubble_wait.observe(0.0);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => m.player_stream_full.inc(),
                // The stream ended; the next one replaces it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let before = o.pending.merged;
        let pushed = o.pending.push_encoded(batch);
        m.batches_coalesced.inc_by(o.pending.merged - before);
        drop(o);
        match pushed {
            Err(bubble::PushError::Overflow) => {
                m.bubbles_overflowed.inc();
                self.overflowed.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        self.wake_writer();
        Ok(())
    }
}

pub struct Hub {
    cfg: GatewayConfig,
    world: World,
    /// The player token key; `None` is development mode (a name is a player).
    token_key: Option<auth::TokenKey>,
    /// Gateways of other systems, by system: `world.peers` at start, replaced while
    /// running ([`Hub::set_peers`]: the mesh map in a cluster).
    peers: Mutex<HashMap<String, String>>,
    pub metrics: Metrics,
    players: Mutex<HashMap<PlayerId, Arc<Slot>>>,
    /// One sender per replicant link (`None` while it is down).
    links: Vec<Mutex<Option<mpsc::Sender<pb::GatewayMessage>>>>,
    started: Instant,
    /// This gateway's shard and every shard of the layout (the mesh map in a cluster;
    /// empty elsewhere: every player plays here).
    shards: Mutex<(i32, Vec<crate::mesh_map::ShardLoad>)>,
    /// Admin clients to the shards' replicants, for "where is this ship" lookups.
    admins: Mutex<HashMap<std::net::SocketAddr, AdminClient>>,
}

type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// Metadata a client following a redirect sends with its next Join: that gateway then
/// redirects only to the shard holding the ship, never again for load (no ping-pong
/// while two gateways read different versions of the mesh map).
pub const REDIRECTED_HEADER: &str = "starmesh-redirected";

impl Hub {
    pub fn new(cfg: GatewayConfig, world: World) -> Arc<Self> {
        Self::with_links(cfg, world, DEFAULT_LINKS)
    }

    /// A hub whose players are spread over `links` replicant streams.
    pub fn with_links(cfg: GatewayConfig, world: World, links: usize) -> Arc<Self> {
        Self::with_auth(cfg, world, links, None)
    }

    /// A hub that admits only players with a token signed with `key` (`None`: any name).
    pub fn with_auth(
        cfg: GatewayConfig,
        world: World,
        links: usize,
        key: Option<auth::TokenKey>,
    ) -> Arc<Self> {
        Arc::new(Self {
            token_key: key,
            links: (0..links.max(1)).map(|_| Mutex::new(None)).collect(),
            cfg,
            peers: Mutex::new(world.peers.clone()),
            world,
            metrics: Metrics::new(),
            players: Mutex::new(HashMap::new()),
            started: Instant::now(),
            shards: Mutex::new((0, Vec::new())),
            admins: Mutex::new(HashMap::new()),
        })
    }

    /// This gateway is shard `own` of a layout whose shards are `shards` (from the mesh
    /// map, re-read while running): joins are placed among them.
    pub fn set_shards(&self, own: i32, shards: Vec<crate::mesh_map::ShardLoad>) {
        let mut cur = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        // One line when what placement can use changes (not on every count change):
        // operators and tests grep for it.
        let shape = |v: &[crate::mesh_map::ShardLoad]| -> Vec<(i32, bool, bool)> {
            v.iter().map(|s| (s.index, s.draining, s.players.is_some())).collect()
        };
        if cur.0 != own || shape(&cur.1) != shape(&shards) {
            let list: Vec<String> = shards
                .iter()
                .map(|s| {
                    let n = s.players.map_or("?".to_string(), |n| n.to_string());
                    let d = if s.draining { " draining" } else { "" };
                    format!("{}({n} players{d})", s.index)
                })
                .collect();
            tracing::info!("placement: shard {own} of shards [{}]", list.join(", "));
        }
        *cur = (own, shards);
    }

    fn admin(&self, addr: std::net::SocketAddr) -> Option<AdminClient> {
        let mut m = self.admins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(&addr) {
            return Some(c.clone());
        }
        let c = admin_client(&addr.to_string())?;
        m.insert(addr, c.clone());
        Some(c)
    }

    /// Where `player` plays: `None` here, or the shard (and its gateway) to redirect to.
    /// A ship that exists somewhere is found first (asked of every shard's replicant):
    /// its shard wins, so no player ever gets a second ship. Only a player with no ship
    /// anywhere is placed by load ([`shards::choose`]), and not when it follows a redirect
    /// already. A replicant that cannot answer makes the join fail (retryable): placing
    /// the player without knowing could create a second ship.
    async fn place(
        &self,
        player: PlayerId,
        redirected: bool,
    ) -> Result<Option<crate::mesh_map::ShardLoad>, Status> {
        let (own, shards) = self.shards.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if shards.len() < 2 || self.players().contains_key(&player) {
            return Ok(None);
        }
        let ship = placement::ship_of(player);
        // Our own shard first: the common case (a returning player) needs one lookup.
        let mut order: Vec<&crate::mesh_map::ShardLoad> = shards.iter().collect();
        order.sort_by_key(|s| (s.index != own, s.index));
        let mut departed: Option<&crate::mesh_map::ShardLoad> = None;
        if order.first().is_none_or(|s| s.index != own) {
            // We are not in the map (yet): play here, as before shards were placed.
            return Ok(None);
        }
        for s in &order {
            let mut admin = self.admin(s.replicant).ok_or_else(|| {
                Status::internal(format!(
                    "starmesh.placement: bad replicant address {}",
                    s.replicant
                ))
            })?;
            let r = admin.lookup(pb::LookupRequest { id: ship }).await.map_err(|e| {
                Status::unavailable(format!(
                    "starmesh.placement: shard {} cannot say whether it holds this ship ({}); retry",
                    s.index,
                    e.message()
                ))
            })?;
            let r = r.into_inner();
            if r.present || r.in_transit {
                return Ok((s.index != own).then(|| (*s).clone()));
            }
            // Departed from a shard: moved to another shard (a drain), or through a
            // gate. A shard that holds it wins; else its tombstone's shard.
            if r.departed && departed.is_none() {
                departed = Some(*s);
            }
        }
        if let Some(s) = departed {
            return Ok((s.index != own).then(|| s.clone()));
        }
        if redirected {
            return Ok(None);
        }
        Ok(match shards::choose(own, &shards) {
            shards::Placement::Here => None,
            shards::Placement::Shard(i) => shards.iter().find(|s| s.index == i).cloned(),
        })
    }

    /// Replaces the gateways of other systems: players transferred from now on are sent
    /// to these.
    pub fn set_peers(&self, peers: &[(String, String)]) {
        let next: HashMap<String, String> = peers.iter().cloned().collect();
        let mut cur = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        log_peer_changes(&cur, &next);
        *cur = next;
    }

    /// Ready: every replicant link is up.
    pub fn connected(&self) -> bool {
        self.links.iter().all(|l| l.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    fn link_of(&self, player: PlayerId) -> usize {
        (player % self.links.len() as u64) as usize
    }

    fn set_link(&self, i: usize, tx: Option<mpsc::Sender<pb::GatewayMessage>>) {
        if let Some(l) = self.links.get(i) {
            *l.lock().unwrap_or_else(|p| p.into_inner()) = tx;
        }
    }

    fn players(&self) -> MutexGuard<'_, HashMap<PlayerId, Arc<Slot>>> {
        self.players.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends on the link that carries `player` (every message is about one player).
    fn send(&self, player: PlayerId, msg: gateway_message::Msg) -> bool {
        let Some(l) = self.links.get(self.link_of(player)) else { return false };
        let link = l.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match link {
            Some(tx) => tx.try_send(pb::GatewayMessage { msg: Some(msg) }).is_ok(),
            None => false,
        }
    }

    /// Opens a Play stream for `player`: its slot (created if needed) and the
    /// stream's generation, taken under the players lock so that a closing
    /// older stream and this one can never both think they are the newest.
    fn open_stream(&self, player: PlayerId) -> Result<(Arc<Slot>, u64), Status> {
        let mut players = self.players();
        if !players.contains_key(&player) && players.len() >= MAX_PLAYERS {
            return Err(Status::resource_exhausted("starmesh.player: gateway full"));
        }
        let slot = players
            .entry(player)
            .or_insert_with(|| {
                Arc::new(Slot {
                    player,
                    entity: placement::ship_of(player),
                    spawn: self.world.spawn_for(player),
                    outbox: Mutex::new(Outbox::default()),
                    wake: watch::Sender::new(0),
                    overflowed: AtomicBool::new(false),
                    seen: AtomicBool::new(false),
                    stream: AtomicU64::new(0),
                    active: AtomicBool::new(false),
                    inputs_dropped: AtomicU64::new(0),
                    last_pos: Mutex::new(None),
                    gone: AtomicBool::new(false),
                    transfer: Mutex::new(None),
                    announced: AtomicU64::new(0),
                })
            })
            .clone();
        let generation = slot.stream.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((slot, generation))
    }

    /// The stream of `generation` ended: if it is still the newest, the player
    /// is gone (its slot freed, so memory follows connected players only).
    fn close_stream(&self, slot: &Arc<Slot>, generation: u64) -> bool {
        let mut players = self.players();
        if slot.stream.load(Ordering::SeqCst) != generation {
            return false;
        }
        if players.get(&slot.player).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            players.remove(&slot.player);
        }
        true
    }

    fn attach_msg(&self, s: &Slot) -> gateway_message::Msg {
        gateway_message::Msg::Attach(pb::PlayerAttach {
            player_id: s.player,
            entity_id: s.entity,
            radius: self.cfg.bubble_radius,
            position: s.spawn.position,
        })
    }

    /// Asks the owner of the spawn point to create the ship (a no-op for a
    /// ship that exists: the replicant routes the request to its owner, and
    /// the game only creates missing entities).
    fn request_spawn(&self, s: &Slot) {
        let input = pb::GameInput { cmd: Some(pb::game_input::Cmd::Spawn(s.spawn.clone())) };
        self.metrics.spawn_requests.inc();
        self.send(
            s.player,
            gateway_message::Msg::Input(pb::PlayerInput {
                player_id: s.player,
                seq: 0,
                input: input.encode_to_vec().into(),
                entity_id: 0,
            }),
        );
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The player's ship departed through a jump gate (the replicant says so):
    /// tell its stream where it went, once per stream.
    fn transferred(&self, s: &Slot) {
        if self.announced(s) {
            return;
        }
        let last = *s.last_pos.lock().unwrap_or_else(|p| p.into_inner());
        let sys = &self.world.system;
        // The gate it was at; without a position, the only gate (or the first).
        let gate = last.and_then(|p| sys.nearest_gate(p)).or(sys.gates.first());
        let Some(g) = gate else { return };
        let msg = pb::Transferred {
            system: g.target_system.clone(),
            gateway: self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&g.target_system)
                .cloned()
                .unwrap_or_default(),
            gate: g.target_gate.clone(),
            entity_id: s.entity,
        };
        tracing::info!(player = s.player, entity = s.entity, system = %msg.system, gateway = %msg.gateway, "ship left through a jump gate; player transferred");
        self.metrics.gate_transfers.inc();
        *s.transfer.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
        s.wake_writer();
    }

    /// True when this stream was already told where the ship went (marks it told).
    fn announced(&self, s: &Slot) -> bool {
        let generation = s.stream.load(Ordering::SeqCst);
        s.announced.swap(generation, Ordering::SeqCst) == generation
    }

    /// The other shard of this layout that holds `ship` now (present, or arriving in
    /// transit), if any: a ship that departed from a draining shard was moved there.
    async fn shard_holding(&self, ship: EntityId) -> Option<crate::mesh_map::ShardLoad> {
        let (own, shards) = self.shards.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for s in shards.iter().filter(|s| s.index != own) {
            let mut admin = self.admin(s.replicant)?;
            match admin.lookup(pb::LookupRequest { id: ship }).await {
                Ok(r) if r.get_ref().present => return Some(s.clone()),
                _ => {}
            }
        }
        None
    }

    /// The player's ship was moved to shard `to` (its shard drains): tell its stream to
    /// continue at that shard's gateway, once per stream (as after a jump, same system).
    fn moved(&self, s: &Slot, to: &crate::mesh_map::ShardLoad) {
        if self.announced(s) {
            return;
        }
        let msg = pb::Transferred {
            system: self.world.system.name.clone(),
            gateway: to.gateway.to_string(),
            gate: String::new(),
            entity_id: s.entity,
        };
        tracing::info!(player = s.player, entity = s.entity, shard = to.index, gateway = %msg.gateway, "ship moved to another shard (this one drains); player transferred");
        self.metrics.shard_moves.inc();
        *s.transfer.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
        s.wake_writer();
    }
}

/// A lazy Admin client to the replicant (jump-gate lookups).
fn admin_client(
    replicant: &str,
) -> Option<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{replicant}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    Some(pb::admin_client::AdminClient::new(crate::tls::connect_lazy(
        ep,
        crate::tls::process().as_ref(),
    )))
}

/// Checks a player's command field by field (nothing unvalidated goes on).
pub fn validate_command(c: &pb::ShipCommand) -> Result<(), &'static str> {
    if c.route.len() > MAX_ROUTE_LEN {
        return Err("route longer than 32 waypoints");
    }
    if !(c.max_speed.is_finite() && (0.0..=MAX_SPEED_KM_S).contains(&c.max_speed)) {
        return Err("max_speed out of range");
    }
    if let Some(t) = &c.thrust
        && ![t.x, t.y, t.z].iter().all(|c| c.is_finite() && c.abs() <= MAX_SPEED_KM_S)
    {
        return Err("thrust out of range");
    }
    for w in &c.route {
        if w.name.len() > MAX_NAME_LEN {
            return Err("waypoint name too long");
        }
        let Some(p) = &w.position else { return Err("waypoint without a position") };
        if ![p.x, p.y, p.z].iter().all(|c| c.is_finite() && c.abs() <= MAX_COORD_KM) {
            return Err("waypoint position out of range");
        }
        if !(w.radius.is_finite() && (0.0..=MAX_RADIUS_KM).contains(&w.radius)) {
            return Err("waypoint radius out of range");
        }
    }
    Ok(())
}

/// Runs the replicant link forever (reconnecting with backoff) and the
/// spawn-retry loop. Spawned by `serve`.
async fn replicant_link(hub: Arc<Hub>, i: usize) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        if !first {
            hub.metrics.replicant_reconnects.inc();
        }
        first = false;
        let started = Instant::now();
        if let Err(e) = link_session(&hub, i).await {
            tracing::warn!(replicant = %hub.cfg.replicant, link = i, error = %e, "replicant link down");
        }
        hub.set_link(i, None);
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn link_session(hub: &Arc<Hub>, i: usize) -> anyhow::Result<()> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", hub.cfg.replicant))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let channel = crate::tls::connect(ep, crate::tls::process().as_ref()).await?;
    let mut client = forward::gateway_link::gateway_link_client::GatewayLinkClient::new(channel)
        .max_decoding_message_size(MAX_REPLICANT_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    // Publish the link first, then re-attach everyone: a player attaching in
    // between is attached twice, which is harmless (attach replaces).
    hub.set_link(i, Some(tx));
    let active: Vec<Arc<Slot>> = hub
        .players()
        .values()
        .filter(|s| s.active.load(Ordering::Relaxed) && hub.link_of(s.player) == i)
        .cloned()
        .collect();
    for s in &active {
        hub.send(s.player, hub.attach_msg(s));
        // A restarted replicant has what it committed, which may predate a
        // ship's creation: ask again until each ship shows (a no-op for a ship
        // that exists: the game only creates missing entities).
        s.seen.store(false, Ordering::Relaxed);
    }
    tracing::debug!(replicant = %hub.cfg.replicant, link = i, players = active.len(), "replicant link up");
    while let Some(u) = inbound.message().await? {
        // Empty: no batch (or an empty one), nothing to forward.
        if u.batch.is_empty() {
            continue;
        }
        let slot = hub.players().get(&u.player_id).cloned();
        if let Some(s) = slot {
            s.deliver(u.batch, u.own, &hub.metrics)
                .map_err(|e| anyhow::anyhow!("replicant link: player {}: {e}", u.player_id))?;
        }
    }
    Ok(())
}

/// Re-asks for ships that have not appeared yet (their spawn territory may
/// have had no owner, or the request raced a takeover). In a system with jump
/// gates, first asks the replicant where the ship is: one that left through a
/// gate (departed) is announced to its player as `Transferred` and never
/// re-created here; one in transit is waited for.
async fn spawn_retry(hub: Arc<Hub>) {
    let mut t = tokio::time::interval(SPAWN_RETRY);
    let gates = !hub.world.system.gates.is_empty();
    let mut client = admin_client(&hub.cfg.replicant);
    loop {
        t.tick().await;
        // Ships also leave for another shard of the layout when theirs drains.
        let sharded = hub.shards.lock().unwrap_or_else(|p| p.into_inner()).1.len() > 1;
        let mut admin = if gates || sharded { client.as_mut() } else { None };
        let waiting: Vec<Arc<Slot>> = hub
            .players()
            .values()
            .filter(|s| {
                s.active.load(Ordering::Relaxed)
                    && (!s.seen.load(Ordering::Relaxed)
                        || (admin.is_some() && s.gone.load(Ordering::Relaxed)))
            })
            .cloned()
            .collect();
        for s in waiting {
            if let Some(a) = admin.as_mut() {
                let r = a.lookup(pb::LookupRequest { id: s.entity }).await.map(|r| r.into_inner());
                match r {
                    Ok(r) if r.departed => {
                        match hub.shard_holding(s.entity).await {
                            Some(to) => hub.moved(&s, &to),
                            None if gates => hub.transferred(&s),
                            // Departed, but no shard says it holds it yet: ask again.
                            None => {}
                        }
                        continue;
                    }
                    // Leaving: not here, not there yet. Never re-create it meanwhile.
                    Ok(r) if r.in_transit => continue,
                    Ok(_) => {}
                    // Replicant unreachable: nothing to decide now.
                    Err(_) => continue,
                }
            }
            if !s.seen.load(Ordering::Relaxed) {
                hub.request_spawn(&s);
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct Svc(pub Arc<Hub>);

#[tonic::async_trait]
impl forward::player_link::player_link_server::PlayerLink for Svc {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let hub = &self.0;
        let metadata_redirected = req.metadata().contains_key(REDIRECTED_HEADER);
        let req = req.into_inner();
        let (name, token) = match &hub.token_key {
            Some(key) => {
                let name = key.verify(&req.token, auth::now_unix()).map_err(|e| {
                    hub.metrics.auth_refused.inc();
                    Status::from(e)
                })?;
                if !req.name.is_empty() && req.name != name {
                    hub.metrics.auth_refused.inc();
                    return Err(Status::permission_denied(
                        "starmesh.auth: the token is for another player",
                    ));
                }
                (name, req.token)
            }
            None => {
                let token = placement::token_for(&req.name);
                (req.name, token)
            }
        };
        if !placement::valid_name(&name) {
            return Err(Status::invalid_argument(
                "starmesh.player: name must be 1-64 printable ASCII characters",
            ));
        }
        let player = placement::player_id(&name);
        let redirected = metadata_redirected;
        if let Some(to) = hub.place(player, redirected).await? {
            hub.metrics.redirects.inc();
            tracing::debug!(player, shard = to.index, gateway = %to.gateway, "join redirected");
            return Ok(Response::new(pb::JoinResponse {
                player_id: player,
                entity_id: placement::ship_of(player),
                redirect: to.gateway.to_string(),
                redirect_shard: to.index,
                ..Default::default()
            }));
        }
        let spawn = hub.world.spawn_for(player);
        hub.metrics.joins.inc();
        Ok(Response::new(pb::JoinResponse {
            player_id: player,
            entity_id: placement::ship_of(player),
            token,
            spawn: spawn.location,
            destinations: hub.world.destinations.clone(),
            input_rate: hub.cfg.input_rate,
            ..Default::default()
        }))
    }

    type PlayStream = BoxStream<forward::PlayerUpdateOut>;

    async fn play(
        &self,
        req: Request<Streaming<pb::PlayerMessage>>,
    ) -> Result<Response<Self::PlayStream>, Status> {
        let hub = self.0.clone();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("starmesh.player: no hello"))?
            .map_err(|s| {
                Status::invalid_argument(format!("starmesh.player: undecodable: {}", s.message()))
            })?;
        let token = match first.and_then(|m| m.msg) {
            Some(pb::player_message::Msg::Hello(h)) => h.token,
            _ => {
                return Err(Status::invalid_argument(
                    "starmesh.player: the first message must be hello",
                ));
            }
        };
        // The player comes from the token alone: nobody acts on another's ship.
        // A signed token also bounds the session: it ends when the token expires.
        let (player, expires_unix) = match &hub.token_key {
            Some(key) => match key.verify_until(&token, auth::now_unix()) {
                Ok((name, expires)) => (placement::player_id(&name), Some(expires)),
                Err(e) => {
                    hub.metrics.auth_refused.inc();
                    return Err(e.into());
                }
            },
            None => match placement::player_for_token(&token) {
                Some((_, player)) => (player, None),
                None => return Err(Status::unauthenticated("starmesh.player: unknown token")),
            },
        };
        let (slot, generation) = hub.open_stream(player)?;
        // A fresh stream starts from a fresh view: drop what the last one had
        // pending, and re-attach so the replicant sends the full bubble.
        let (tx, rx) = mpsc::channel(PLAYER_QUEUE);
        {
            let mut o = slot.outbox();
            o.pending.take();
            o.stream = Some(tx.clone());
            o.writer_sending = false;
        }
        // A superseded stream's writer sees the new generation and stops.
        slot.wake_writer();
        slot.overflowed.store(false, Ordering::Relaxed);
        if !slot.active.swap(true, Ordering::Relaxed) {
            hub.metrics.players.inc();
        }
        hub.send(player, hub.attach_msg(&slot));
        if !slot.seen.load(Ordering::Relaxed) {
            hub.request_spawn(&slot);
        }

        let expires = expires_unix.map(|exp| {
            let left = exp.saturating_sub(auth::now_unix());
            tokio::time::Instant::now() + Duration::from_secs(left)
        });
        tokio::spawn(write_player(hub.clone(), slot.clone(), generation, expires, tx.clone()));
        tokio::spawn(read_player(hub, slot, generation, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the player its coalesced bubble whenever there is something new.
/// Waiting on `send` is where a slow player is absorbed: meanwhile new
/// batches merge into the coalescer, so memory stays bounded.
async fn write_player(
    hub: Arc<Hub>,
    slot: Arc<Slot>,
    generation: u64,
    expires: Option<tokio::time::Instant>,
    tx: mpsc::Sender<Result<forward::PlayerUpdateOut, Status>>,
) {
    let mut wake = slot.wake.subscribe();
    // Without a token key (development mode) a session never expires.
    let expiry = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            r = wake.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
            () = &mut expiry => {
                // The client rejoins with a fresh token (`Unauthenticated`, reason `Expired`).
                hub.metrics.auth_refused.inc();
                let _ = tx.send(Err(auth::TokenError::Expired.into())).await;
                return;
            }
        }
        if slot.stream.load(Ordering::SeqCst) != generation {
            return;
        }
        if slot.overflowed.swap(false, Ordering::Relaxed) {
            let _ =
                tx.send(Err(Status::resource_exhausted("starmesh.player: too far behind"))).await;
            return;
        }
        let dropped = slot.inputs_dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let m = forward::PlayerUpdateOut::Message(pb::PlayerUpdate {
                msg: Some(player_update::Msg::InputsDropped(dropped)),
            });
            if tx.send(Ok(m)).await.is_err() {
                return;
            }
        }
        let transfer = slot.transfer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = transfer {
            let m = forward::PlayerUpdateOut::Message(pb::PlayerUpdate {
                msg: Some(player_update::Msg::Transferred(t)),
            });
            if tx.send(Ok(m)).await.is_err() {
                return;
            }
        }
        let (batch, since) = {
            let mut o = slot.outbox();
            let since = o.pending.pending_since();
            let batch = o.pending.take();
            o.writer_sending = batch.is_some();
            (batch, since)
        };
        if let Some(b) = batch {
            let m = match b {
                bubble::Pending::Encoded(bytes) => forward::PlayerUpdateOut::Bubble(bytes),
                bubble::Pending::Merged(b) => forward::PlayerUpdateOut::Message(pb::PlayerUpdate {
                    msg: Some(player_update::Msg::Bubble(b)),
                }),
            };
            if tx.capacity() == 0 {
                hub.metrics.player_stream_full.inc();
            }
            if tx.send(Ok(m)).await.is_err() {
                return;
            }
            slot.outbox().writer_sending = false;
            hub.metrics.batches_sent.inc();
            if let Some(t) = since {
                hub.metrics.bubble_wait.observe(t.elapsed().as_secs_f64());
            }
        }
    }
}

async fn read_player(
    hub: Arc<Hub>,
    slot: Arc<Slot>,
    generation: u64,
    mut inbound: Streaming<pb::PlayerMessage>,
    tx: mpsc::Sender<Result<forward::PlayerUpdateOut, Status>>,
) {
    let mut bucket = TokenBucket::new(hub.cfg.input_rate, hub.cfg.input_burst, hub.now());
    let end: Option<Status> = loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = tx.closed() => break None,
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break None,
            Err(s) => {
                break Some(Status::invalid_argument(format!(
                    "starmesh.player: undecodable: {}",
                    s.message()
                )));
            }
        };
        if slot.stream.load(Ordering::SeqCst) != generation {
            break None; // superseded by a newer stream of the same player
        }
        let cmd = match msg.msg {
            Some(pb::player_message::Msg::Input(c)) => c,
            Some(pb::player_message::Msg::Hello(_)) => {
                break Some(Status::invalid_argument("starmesh.player: second hello"));
            }
            None => break Some(Status::invalid_argument("starmesh.player: empty message")),
        };
        if let Err(why) = validate_command(&cmd) {
            break Some(Status::invalid_argument(format!("starmesh.player: {why}")));
        }
        if !bucket.allow(hub.now()) {
            hub.metrics.inputs_rate_limited.inc();
            // The writer reports the count; wake it for the first one it has not seen.
            if slot.inputs_dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                slot.wake_writer();
            }
            continue;
        }
        let seq = cmd.seq;
        let input = pb::GameInput { cmd: Some(pb::game_input::Cmd::Command(cmd)) };
        let sent = hub.send(
            slot.player,
            gateway_message::Msg::Input(pb::PlayerInput {
                player_id: slot.player,
                seq,
                input: input.encode_to_vec().into(),
                entity_id: 0,
            }),
        );
        if sent {
            hub.metrics.inputs_forwarded.inc();
        } else {
            hub.metrics.inputs_unroutable.inc();
        }
    };
    if let Some(s) = end {
        hub.metrics.bad_messages.inc();
        tracing::debug!(player = slot.player, status = %s.message(), "player stream ended by a bad message");
        let _ = tx.send(Err(s)).await;
    }
    // Only the newest stream detaches: a reconnect must not detach its successor.
    let newest = hub.close_stream(&slot, generation);
    if newest {
        // The stream's own writer still holds its sender until it stops.
        slot.outbox().stream = None;
    }
    if newest && slot.active.swap(false, Ordering::Relaxed) {
        hub.metrics.players.dec();
        hub.send(
            slot.player,
            gateway_message::Msg::Detach(pb::PlayerDetach { player_id: slot.player }),
        );
    }
}

/// A running gateway.
pub struct Running {
    pub grpc_addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub hub: Arc<Hub>,
}

pub async fn serve(
    cfg: GatewayConfig,
    world: World,
    listen: std::net::SocketAddr,
    metrics_listen: std::net::SocketAddr,
) -> anyhow::Result<Running> {
    serve_with_links(cfg, world, listen, metrics_listen, DEFAULT_LINKS).await
}

pub async fn serve_with_links(
    cfg: GatewayConfig,
    world: World,
    listen: std::net::SocketAddr,
    metrics_listen: std::net::SocketAddr,
    links: usize,
) -> anyhow::Result<Running> {
    serve_with_auth(cfg, world, listen, metrics_listen, links, None).await
}

/// `serve_with_links` admitting only players with a token signed with `key`; without a
/// key, development mode: any name is a player (logged loudly, once).
pub async fn serve_with_auth(
    cfg: GatewayConfig,
    world: World,
    listen: std::net::SocketAddr,
    metrics_listen: std::net::SocketAddr,
    links: usize,
    key: Option<auth::TokenKey>,
) -> anyhow::Result<Running> {
    anyhow::ensure!(
        cfg.bubble_radius.is_finite()
            && cfg.bubble_radius > 0.0
            && cfg.bubble_radius <= MAX_RADIUS_KM,
        "bubble radius must be in (0, {MAX_RADIUS_KM}] km"
    );
    anyhow::ensure!(cfg.input_rate.is_finite() && cfg.input_rate > 0.0, "input rate must be > 0");
    if key.is_none() {
        tracing::warn!(
            "DEVELOPMENT MODE: no --player-token-key, so anyone can join as any player name"
        );
    }
    let hub = Hub::with_auth(cfg, world, links, key);
    let grpc = tokio::net::TcpListener::bind(listen).await?;
    let metrics = tokio::net::TcpListener::bind(metrics_listen).await?;
    let (grpc_addr, metrics_addr) = (grpc.local_addr()?, metrics.local_addr()?);
    let (h1, h2) = (hub.clone(), hub.clone());
    tokio::spawn(crate::server::metrics::serve_http(
        metrics,
        move || h1.metrics.render(),
        move || h2.connected(),
    ));
    for i in 0..hub.links.len() {
        tokio::spawn(replicant_link(hub.clone(), i));
    }
    tokio::spawn(spawn_retry(hub.clone()));
    let svc = Svc(hub.clone());
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            // Thousands of players may share few connections (HTTP/2 streams).
            .max_concurrent_streams(Some(100_000))
            .tcp_nodelay(true)
            // A player whose machine vanished (half-open TCP, no FIN) is found by HTTP/2
            // pings: unanswered for PING_TIMEOUT, the connection and its streams end and
            // the player is detached. Before the handshake, `deadline` bounds the wait.
            .http2_keepalive_interval(Some(PING_INTERVAL))
            .http2_keepalive_timeout(Some(PING_TIMEOUT))
            .add_service(
                forward::player_link::player_link_server::PlayerLinkServer::new(svc)
                    .max_decoding_message_size(MAX_PLAYER_MESSAGE_BYTES),
            )
            .serve_with_incoming(deadline::incoming(grpc, deadline::HANDSHAKE_TIMEOUT))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gateway gRPC server ended");
        }
    });
    Ok(Running { grpc_addr, metrics_addr, hub })
}

pub fn vec3(v: crate::model::Vec3) -> pb::Vec3 {
    vec3_to_pb(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_peers_are_system_equals_host_port() {
        assert_eq!(parse_peer("pyro=10.0.0.1:7777"), Ok(("pyro".into(), "10.0.0.1:7777".into())));
        assert_eq!(parse_peer("pyro=gw.pyro:7777").map(|p| p.1), Ok("gw.pyro:7777".into()));
        for bad in ["pyro", "=a:1", "pyro=", "pyro=host", "pyro=host:99999", "pyro=:1"] {
            assert!(parse_peer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gates_are_destinations_and_a_departed_ship_is_announced_once_per_stream() {
        let files = [
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/stanton.yaml"
            )),
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/stanton-layout.yaml"
            )),
        ];
        let world =
            World::load(&files).unwrap().with_peers(&[("pyro".into(), "127.0.0.1:9".into())]);
        let gate = world.destinations.iter().find(|d| d.name == "stanton-pyro").unwrap();
        assert_eq!(gate.kind, "jumpGate");
        let cfg = GatewayConfig {
            replicant: "127.0.0.1:1".into(),
            input_rate: 1.0,
            input_burst: 1.0,
            bubble_radius: 1.0,
        };
        use crate::wire::pb::entity_update::Change;
        let hub = Hub::with_links(cfg, world, 1);
        let (slot, _) = hub.open_stream(7).unwrap();
        let near = pb::EntityState {
            id: slot.entity,
            position: Some(pb::Vec3 { x: -45_000_000.0, y: 20_000_050.0, z: 0.0 }),
            ..Default::default()
        };
        let enter = pb::EntityUpdate { change: Some(Change::Enter(near.clone())) };
        let batch = |tick, u| {
            bytes::Bytes::from(prost::Message::encode_to_vec(&pb::UpdateBatch {
                tick,
                updates: vec![u],
            }))
        };
        let here = pb::OwnShip { present: true, position: near.position };
        slot.deliver(batch(1, enter), Some(here), &hub.metrics).unwrap();
        assert!(slot.seen.load(Ordering::Relaxed) && !slot.gone.load(Ordering::Relaxed));
        let leave = pb::EntityUpdate { change: Some(Change::Leave(slot.entity)) };
        let left = pb::OwnShip { present: false, position: None };
        slot.deliver(batch(2, leave), Some(left), &hub.metrics).unwrap();
        assert!(slot.gone.load(Ordering::Relaxed));
        hub.transferred(&slot);
        hub.transferred(&slot);
        assert_eq!(hub.metrics.gate_transfers.get(), 1, "once per stream");
        let t = slot.transfer.lock().unwrap().take().unwrap();
        assert_eq!(
            (t.system.as_str(), t.gateway.as_str(), t.gate.as_str(), t.entity_id),
            ("pyro", "127.0.0.1:9", "pyro-stanton", slot.entity)
        );
        // A new stream of the same player is told again.
        let (slot, _) = hub.open_stream(7).unwrap();
        hub.transferred(&slot);
        assert_eq!(hub.metrics.gate_transfers.get(), 2);
    }

    #[test]
    fn commands_are_validated_field_by_field() {
        let wp = |x: f64, r: f64| pb::Waypoint {
            name: "a".into(),
            position: Some(pb::Vec3 { x, y: 0.0, z: 0.0 }),
            radius: r,
        };
        let ok = pb::ShipCommand {
            seq: 1,
            route: vec![wp(1.0, 1.0)],
            max_speed: 10.0,
            thrust: Some(pb::Vec3 { x: 1.0, y: 0.0, z: 0.0 }),
        };
        assert_eq!(validate_command(&ok), Ok(()));
        let mut c = ok.clone();
        c.route[0] = wp(f64::NAN, 1.0);
        assert!(validate_command(&c).is_err());
        let mut c = ok.clone();
        c.route[0] = wp(1.0, -1.0);
        assert!(validate_command(&c).is_err());
        let mut c = ok.clone();
        c.route = vec![wp(1.0, 1.0); MAX_ROUTE_LEN + 1];
        assert!(validate_command(&c).is_err());
        let mut c = ok.clone();
        c.max_speed = f64::INFINITY;
        assert!(validate_command(&c).is_err());
        let mut c = ok.clone();
        c.thrust = Some(pb::Vec3 { x: f64::NAN, y: 0.0, z: 0.0 });
        assert!(validate_command(&c).is_err());
        let mut c = ok;
        c.route[0].position = None;
        assert!(validate_command(&c).is_err());
    }
}

/// `starmesh gateway` flags.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// The shard's replicant (host:port of its gRPC endpoint); else read from --mesh-map.
    #[arg(long, env = "STARMESH_REPLICANT")]
    pub replicant: Option<String>,
    /// Mesh mTLS to the replicant: a folder with tls.crt, tls.key and ca.crt (reloaded when
    /// it changes). Without it, plaintext. The player port (--listen) is not affected.
    #[arg(long, env = "STARMESH_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// The operator's mesh map (mesh-map.json), in a cluster.
    #[arg(long, env = "STARMESH_MESH_MAP")]
    pub mesh_map: Option<std::path::PathBuf>,
    /// Which shard of the mesh map this gateway belongs to.
    #[arg(long, env = "STARMESH_SHARD", default_value_t = 0)]
    pub shard: i32,
    /// Where players connect (gRPC PlayerLink).
    #[arg(long, env = "STARMESH_GATEWAY_LISTEN", default_value = "127.0.0.1:7777")]
    pub listen: std::net::SocketAddr,
    #[arg(long, env = "STARMESH_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    pub metrics: std::net::SocketAddr,
    /// StarSystem YAML (destinations and spawn points); may also hold the ServerLayout.
    #[arg(long, env = "STARMESH_SYSTEM_FILE")]
    pub system: Option<std::path::PathBuf>,
    /// ServerLayout YAML, when not in the --system file.
    #[arg(long, env = "STARMESH_LAYOUT_FILE")]
    pub layout: Option<std::path::PathBuf>,
    /// Inputs per second a player may send on average (more are dropped).
    #[arg(long, default_value_t = 20.0)]
    pub input_rate: f64,
    #[arg(long, default_value_t = 40.0)]
    pub input_burst: f64,
    /// Radius of each player's streaming bubble, km.
    #[arg(long, default_value_t = 5000.0)]
    pub bubble_radius: f64,
    /// The gateway of another StarSystem, as `SYSTEM=HOST:PORT` (repeatable): players
    /// whose ship leaves through a jump gate to SYSTEM are sent there (`Transferred`).
    #[arg(long = "gateway-peer", env = "STARMESH_GATEWAY_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub gateway_peers: Vec<(String, String)>,
    /// Streams to the replicant (each carries about 100 players well; see PLAYERS_PER_LINK).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub replicant_links: u16,
    /// File holding the key player tokens are signed with (at least 32 bytes; in
    /// Kubernetes a Secret mounted there). Without it: development mode, any name joins.
    #[arg(long, env = "STARMESH_PLAYER_TOKEN_KEY")]
    pub player_token_key: Option<std::path::PathBuf>,
}

/// The `starmesh gateway` role.
pub fn main(a: GatewayArgs) -> anyhow::Result<()> {
    crate::tls::init_process(a.tls_dir.as_deref())?;
    let files: Vec<std::path::PathBuf> = a.system.iter().chain(a.layout.iter()).cloned().collect();
    let world = if files.is_empty() { World::empty() } else { World::load(&files)? };
    let replicant =
        crate::mesh_map::resolve_replicant(a.replicant.as_deref(), a.mesh_map.as_deref(), a.shard)?;
    // The mesh map's gateway peers: read now, then followed (the target layout may come later).
    let from_map = match &a.mesh_map {
        Some(path) => {
            match crate::mesh_map::MeshMap::load(path).and_then(|m| m.gateway_peers(a.shard)) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "no gateway peers from the mesh map yet");
                    Some(Vec::new())
                }
            }
        }
        None => None,
    };
    let peers =
        crate::mesh_map::merge_peers(&a.gateway_peers, from_map.as_deref().unwrap_or_default());
    log_peer_changes(&HashMap::new(), &peers.iter().cloned().collect());
    let world = world.with_peers(&peers);
    let cfg = GatewayConfig {
        replicant,
        input_rate: a.input_rate,
        input_burst: a.input_burst,
        bubble_radius: a.bubble_radius,
    };
    let links = usize::from(a.replicant_links);
    let key = a.player_token_key.as_deref().map(auth::TokenKey::from_file).transpose()?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let r = serve_with_auth(cfg, world, a.listen, a.metrics, links, key).await?;
        if let Some(path) = a.mesh_map.clone() {
            // The layout's shards (addresses, draining, players): read now, then followed.
            let initial =
                crate::mesh_map::MeshMap::load(&path).map(|m| m.shard_loads()).unwrap_or_default();
            r.hub.set_shards(a.shard, initial.clone());
            let (hub, shard) = (r.hub.clone(), a.shard);
            crate::mesh_map::follow(
                path,
                crate::mesh_map::FOLLOW_INTERVAL,
                initial,
                |m| Ok(m.shard_loads()),
                move |s: &Vec<crate::mesh_map::ShardLoad>| hub.set_shards(shard, s.clone()),
            );
        }
        if let (Some(path), Some(initial)) = (a.mesh_map.clone(), from_map) {
            let (hub, explicit, shard) = (r.hub.clone(), a.gateway_peers.clone(), a.shard);
            crate::mesh_map::follow(
                path,
                crate::mesh_map::FOLLOW_INTERVAL,
                initial,
                move |m| m.gateway_peers(shard),
                move |p| hub.set_peers(&crate::mesh_map::merge_peers(&explicit, p)),
            );
        }
        // Tests and tools parse this line to learn the bound addresses.
        println!("starmesh gateway listening grpc={} metrics={}", r.grpc_addr, r.metrics_addr);
        crate::signal::terminate().await?;
        Ok(())
    })
}

/// One line per gateway peer added, moved or removed (operators grep for these).
fn log_peer_changes(old: &HashMap<String, String>, next: &HashMap<String, String>) {
    for (system, addr) in next {
        if old.get(system) != Some(addr) {
            tracing::info!("gateway peer: players leaving for {system} are sent to {addr}");
        }
    }
    for system in old.keys().filter(|s| !next.contains_key(*s)) {
        tracing::warn!("gateway peer removed: players leaving for {system} get no gateway");
    }
}

/// `SYSTEM=HOST:PORT` of `--gateway-peer`.
pub fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (system, addr) =
        s.split_once('=').ok_or_else(|| format!("{s:?}: expected SYSTEM=HOST:PORT"))?;
    let ok_system = !system.is_empty() && system.len() <= MAX_NAME_LEN;
    let ok_addr = !addr.is_empty()
        && addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !ok_system || !ok_addr {
        return Err(format!("{s:?}: expected SYSTEM=HOST:PORT"));
    }
    Ok((system.to_string(), addr.to_string()))
}
