//! `starmesh bots`: a load generator and an invariant checker. N players log
//! in through the gateway (one cheap tokio task each, sharing a few HTTP/2
//! connections), fly routes that cross territory boundaries, probe input
//! latency, and report what their bubbles showed (`observer`). It fails
//! (non-zero exit) when an invariant is violated: a player that could not
//! connect, a ship lost, an entity duplicated.

pub mod lean;
pub mod observer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::wire::pb::{self, player_message, player_update};

use observer::{Observer, quantile};

/// Players per HTTP/2 connection to the gateway.
const PLAYERS_PER_CONNECTION: usize = 200;

#[derive(Clone, Debug)]
pub struct BotsConfig {
    pub gateway: String,
    pub n: usize,
    pub duration: Duration,
    /// Name prefix: the same name is the same player and ship across runs.
    pub prefix: String,
    /// km/s.
    pub speed: f64,
    /// How often each bot sends a command (a latency probe).
    pub probe_interval: Duration,
    /// Mint each bot's player token with this key (the gateway's); `None` for a
    /// gateway in development mode.
    pub token_key: Option<crate::gateway::auth::TokenKey>,
}

/// How long a bot's token is valid: a run re-mints at every join.
const BOT_TOKEN_TTL_SECS: u64 = 3600;

/// Jump-gate behaviour of the bots (`starmesh bots --gate-share ...`).
#[derive(Clone, Debug)]
pub struct GateOptions {
    /// Fraction (0..=1) of bots whose route ends at a jump gate of the system.
    pub share: f64,
    /// Longest a transfer may keep the ship out of both systems' bubbles
    /// (from its last sight in the old system to its first in the new one).
    pub bound: Duration,
    /// `--spawn-near`: every bot not bound for a gate flies to this destination (a
    /// landing zone, station...) and stays there, so load gathers where a test wants it.
    pub near: Option<String>,
}

impl Default for GateOptions {
    fn default() -> Self {
        Self { share: 0.0, bound: Duration::from_secs(30), near: None }
    }
}

/// Joins answered with a redirect a bot follows in a row before it counts the join as
/// failed (and retries): a layout's gateways agree within one mesh-map refresh.
const MAX_REDIRECTS: u32 = 3;

/// Stops the bots early (as at the end of `duration`: they report). Made by
/// `Stop::new` (stop with the sender: `send(true)`), or `Stop::never`.
#[derive(Clone, Debug)]
pub struct Stop(Option<watch::Receiver<bool>>);

impl Stop {
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(Some(rx)))
    }

    pub fn never() -> Stop {
        Stop(None)
    }

    pub fn is_stopped(&self) -> bool {
        self.0.as_ref().is_some_and(|r| *r.borrow())
    }

    /// Resolves once stopped (never for `Stop::never` or a dropped sender).
    pub async fn stopped(&mut self) {
        if let Some(rx) = self.0.as_mut()
            && rx.wait_for(|s| *s).await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

#[derive(Debug, Default)]
struct BotResult {
    joined: bool,
    streamed: bool,
    reconnects: u64,
    obs: Observer,
    inputs_sent: u64,
    inputs_dropped: u64,
    /// Transfers to a system whose gateway the bot was not told.
    gate_unfollowed: u64,
    /// Sightings of the own ship in the old system after its jump.
    seen_in_both: u64,
    /// Joins redirected to another shard's gateway (and followed).
    redirects: u64,
    /// `--spawn-near` names no destination of the system.
    near_unknown: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub players: usize,
    pub connected: usize,
    pub reconnects: u64,
    pub entities_lost: u64,
    pub entities_duplicated: u64,
    pub handoffs_seen: u64,
    pub handoff_latency_ticks_p50: u64,
    pub handoff_latency_ticks_p99: u64,
    pub handoff_latency_samples: usize,
    pub update_latency_ms_p50: f64,
    pub update_latency_ms_p99: f64,
    pub update_latency_samples: usize,
    pub max_stall_ms: f64,
    pub arrivals: u64,
    pub updates_received: u64,
    pub inputs_sent: u64,
    pub inputs_dropped_by_gateway: u64,
    pub duration_s: f64,
    /// Ships that left through a jump gate and were followed to the other system.
    pub gate_transfers: u64,
    pub gate_gap_ms_p50: f64,
    pub gate_gap_ms_max: f64,
    /// Transfers whose ship was in neither system longer than the bound.
    pub gate_gaps_over_bound: u64,
    /// Transfers the bot could not follow (no gateway for the target system).
    pub gate_unfollowed: u64,
    /// Sightings of a ship in the system it had left, in the seconds after its jump
    /// (it must be in exactly one system).
    pub gate_seen_in_both: u64,
    /// Joins redirected to another shard's gateway (the ship lives there, or it is less
    /// loaded), followed by the bots.
    pub redirects: u64,
    /// True when stopped early (Ctrl-C) rather than at the end of the duration.
    pub stopped_early: bool,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn table(&self) -> String {
        let rows: Vec<(&str, String)> = vec![
            ("players", self.players.to_string()),
            ("connected", self.connected.to_string()),
            ("reconnects", self.reconnects.to_string()),
            ("entities lost", self.entities_lost.to_string()),
            ("entities duplicated", self.entities_duplicated.to_string()),
            ("handoffs seen", self.handoffs_seen.to_string()),
            (
                "handoff latency p50/p99 (ticks)",
                format!(
                    "{}/{} (n={})",
                    self.handoff_latency_ticks_p50,
                    self.handoff_latency_ticks_p99,
                    self.handoff_latency_samples
                ),
            ),
            (
                "update latency p50/p99 (ms)",
                format!(
                    "{:.1}/{:.1} (n={})",
                    self.update_latency_ms_p50,
                    self.update_latency_ms_p99,
                    self.update_latency_samples
                ),
            ),
            ("longest own-ship stall (ms)", format!("{:.0}", self.max_stall_ms)),
            ("arrivals (docked/landed)", self.arrivals.to_string()),
            ("updates received", self.updates_received.to_string()),
            (
                "inputs sent / dropped by gateway",
                format!("{} / {}", self.inputs_sent, self.inputs_dropped_by_gateway),
            ),
            (
                "gate transfers (unfollowed, seen in both)",
                format!(
                    "{} ({}, {})",
                    self.gate_transfers, self.gate_unfollowed, self.gate_seen_in_both
                ),
            ),
            (
                "gate gap p50/max (ms)",
                format!("{:.0}/{:.0}", self.gate_gap_ms_p50, self.gate_gap_ms_max),
            ),
            ("joins redirected to another shard", self.redirects.to_string()),
            ("duration (s)", format!("{:.1}", self.duration_s)),
            (
                "invariants",
                if self.ok() {
                    "ok".to_string()
                } else {
                    format!("VIOLATED: {}", self.violations.join("; "))
                },
            ),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter().map(|(k, v)| format!("{k:<w$}  {v}\n")).collect()
    }
}

fn aggregate(results: Vec<BotResult>, n: usize, duration: Duration, bound: Duration) -> Report {
    let mut r = Report { players: n, duration_s: duration.as_secs_f64(), ..Default::default() };
    let mut gaps: Vec<f64> = Vec::new();
    let mut lat: Vec<f64> = Vec::new();
    let mut ticks: Vec<u64> = Vec::new();
    let mut never = 0;
    let mut near_unknown = 0;
    for b in results {
        r.redirects += b.redirects;
        near_unknown += u64::from(b.near_unknown);
        if b.joined && b.streamed {
            r.connected += 1;
        } else {
            never += 1;
        }
        r.reconnects += b.reconnects;
        r.entities_lost += b.obs.lost;
        r.entities_duplicated += b.obs.duplicated;
        r.handoffs_seen += b.obs.handoffs;
        r.max_stall_ms = r.max_stall_ms.max(b.obs.max_stall_s * 1000.0);
        r.arrivals += b.obs.arrivals;
        r.updates_received += b.obs.updates;
        r.inputs_sent += b.inputs_sent;
        r.inputs_dropped_by_gateway += b.inputs_dropped;
        lat.extend(b.obs.input_latency_s.iter().map(|s| s * 1000.0));
        r.gate_transfers += b.obs.gate_transfers;
        r.gate_unfollowed += b.gate_unfollowed;
        r.gate_seen_in_both += b.seen_in_both;
        gaps.extend(b.obs.gate_gaps_s.iter().map(|s| s * 1000.0));
        // A transfer still open at the end counts with its gap so far.
        if let Some(open) = b.obs.in_gate_for(duration.as_secs_f64()) {
            gaps.push(open * 1000.0);
        }
        ticks.extend(&b.obs.handoff_ticks);
    }
    r.update_latency_samples = lat.len();
    r.update_latency_ms_p50 = quantile(&mut lat, 0.5);
    r.update_latency_ms_p99 = quantile(&mut lat, 0.99);
    r.handoff_latency_samples = ticks.len();
    r.handoff_latency_ticks_p50 = quantile(&mut ticks, 0.5);
    r.handoff_latency_ticks_p99 = quantile(&mut ticks, 0.99);
    let bound_ms = bound.as_secs_f64() * 1000.0;
    r.gate_gaps_over_bound = gaps.iter().filter(|g| **g > bound_ms).count() as u64;
    r.gate_gap_ms_max = gaps.iter().copied().fold(0.0, f64::max);
    r.gate_gap_ms_p50 = quantile(&mut gaps, 0.5);
    if r.gate_gaps_over_bound > 0 {
        r.violations.push(format!(
            "{} ships in neither system for longer than {bound:?} during a jump",
            r.gate_gaps_over_bound
        ));
    }
    if r.gate_seen_in_both > 0 {
        r.violations.push(format!(
            "{} sightings of ships in the system they had left through a gate",
            r.gate_seen_in_both
        ));
    }
    if r.gate_unfollowed > 0 {
        r.violations.push(format!(
            "{} jumps to a system without a known gateway (--gateway-peer)",
            r.gate_unfollowed
        ));
    }
    if near_unknown > 0 {
        r.violations
            .push(format!("{near_unknown} bots: --spawn-near names no destination of the system"));
    }
    if never > 0 {
        r.violations.push(format!("{never} players never connected"));
    }
    if r.entities_lost > 0 {
        r.violations.push(format!("{} ships lost", r.entities_lost));
    }
    if r.entities_duplicated > 0 {
        r.violations.push(format!("{} entities duplicated", r.entities_duplicated));
    }
    r
}

/// A tiny deterministic PRNG (splitmix64): routes differ per bot, runs repeat.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn dist(a: &Option<pb::Vec3>, b: &Option<pb::Vec3>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => {
            ((a.x - b.x).powi(2) + (a.y - b.y).powi(2) + (a.z - b.z).powi(2)).sqrt()
        }
        _ => f64::INFINITY,
    }
}

/// A route that crosses a territory boundary: to one of the two nearest
/// stations or landing zones in another territory, and back to the spawn.
pub fn choose_route(j: &pb::JoinResponse, seed: u64) -> Vec<pb::Waypoint> {
    let dockable = |d: &&pb::Destination| d.kind == "station" || d.kind == "landingZone";
    let Some(spawn) = j.destinations.iter().find(|d| d.name == j.spawn) else { return Vec::new() };
    let mut others: Vec<&pb::Destination> =
        j.destinations.iter().filter(dockable).filter(|d| d.territory != spawn.territory).collect();
    others.sort_by(|a, b| {
        dist(&a.position, &spawn.position).total_cmp(&dist(&b.position, &spawn.position))
    });
    let Some(target) = others.get((splitmix(seed) % others.len().clamp(1, 2) as u64) as usize)
    else {
        return Vec::new();
    };
    let wp = |d: &pb::Destination| pb::Waypoint {
        name: d.name.clone(),
        position: d.position,
        radius: d.radius,
    };
    vec![wp(target), wp(spawn)]
}

/// A route that ends at one of the system's jump gates (after a dock in
/// another territory when there is one), or `choose_route` when there is none.
pub fn choose_gate_route(j: &pb::JoinResponse, seed: u64) -> Vec<pb::Waypoint> {
    let gates: Vec<&pb::Destination> =
        j.destinations.iter().filter(|d| d.kind == "jumpGate").collect();
    let Some(g) = gates.get((splitmix(seed ^ 0x6a7e) % gates.len().max(1) as u64) as usize) else {
        return choose_route(j, seed);
    };
    let mut route: Vec<pb::Waypoint> = choose_route(j, seed).into_iter().take(1).collect();
    route.push(pb::Waypoint { name: g.name.clone(), position: g.position, radius: g.radius });
    route
}

/// `--spawn-near`: a route of one point inside the destination named `near`, different
/// per bot (`seed`): the ship flies there and stays. Spread over the location rather than
/// all at its centre, so the players are a crowd in one place, not one point (a k-d split
/// at the players' median needs them apart). `None` when the system has no such place.
pub fn choose_near_route(j: &pb::JoinResponse, near: &str, seed: u64) -> Option<Vec<pb::Waypoint>> {
    let d = j.destinations.iter().find(|d| d.name == near)?;
    let c = d.position?;
    // A direction from the seed, and a distance within 80 % of the radius.
    let u = |k: u64| (splitmix(seed ^ k) % 2_000_001) as f64 / 1_000_000.0 - 1.0;
    let (x, y, z) = (u(1), u(2), u(3));
    let len = (x * x + y * y + z * z).sqrt().max(1e-9);
    let r = d.radius * 0.8 * (splitmix(seed ^ 4) % 1_000_001) as f64 / 1_000_000.0;
    let p = pb::Vec3 { x: c.x + x / len * r, y: c.y + y / len * r, z: c.z + z / len * r };
    Some(vec![pb::Waypoint {
        name: d.name.clone(),
        position: Some(p),
        radius: (d.radius * 0.05).max(0.001),
    }])
}

/// Whether bot `i` flies into a gate, for a share in 0..=1.
fn takes_gate(i: usize, share: f64) -> bool {
    (splitmix(i as u64 ^ 0x0067_6174_6573) % 1_000_000) as f64 / 1e6 < share
}

/// Channels to gateways by address: the first one dialled up front, the ones
/// players are transferred to lazily, shared by all bots.
#[derive(Clone, Default)]
struct Gateways(Arc<Mutex<HashMap<String, Vec<tonic::transport::Channel>>>>);

fn endpoint(addr: &str) -> anyhow::Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

impl Gateways {
    /// One of the channels to `addr` for bot `i`.
    fn channel(
        &self,
        addr: &str,
        i: usize,
        conns: usize,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(addr) {
            let ep = endpoint(addr)?;
            m.insert(addr.to_string(), (0..conns.max(1)).map(|_| ep.connect_lazy()).collect());
        }
        let v = m.get(addr).ok_or_else(|| anyhow::anyhow!("no channel"))?;
        v.get(i % v.len().max(1)).cloned().ok_or_else(|| anyhow::anyhow!("no channel"))
    }
}

pub async fn run(cfg: BotsConfig, stop: Stop) -> anyhow::Result<Report> {
    run_with(cfg, GateOptions::default(), stop).await
}

/// `run` with jump-gate routes: a bot whose ship leaves through a gate follows
/// it to the target system's gateway (the gateway's `Transferred`).
pub async fn run_with(cfg: BotsConfig, gates: GateOptions, stop: Stop) -> anyhow::Result<Report> {
    let endpoint = endpoint(&cfg.gateway)?;
    let conns = cfg.n.div_ceil(PLAYERS_PER_CONNECTION).max(1);
    // Lazy: a gateway not reachable yet (a pod's network still coming up, the gateway
    // restarting) is retried by each bot's join loop until the deadline, not fatal.
    let channels: Vec<tonic::transport::Channel> =
        (0..conns).map(|_| endpoint.connect_lazy()).collect();
    let gateways = Gateways::default();
    gateways.0.lock().unwrap_or_else(|p| p.into_inner()).insert(cfg.gateway.clone(), channels);
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let results = Arc::new(Mutex::new(Vec::with_capacity(cfg.n)));
    let mut tasks = Vec::with_capacity(cfg.n);
    for i in 0..cfg.n {
        if stop.is_stopped() {
            break;
        }
        let ch = gateways.channel(&cfg.gateway, i, conns)?;
        let (cfg, results, gates, gateways) =
            (cfg.clone(), results.clone(), gates.clone(), gateways.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let ctx = Ctx { cfg: &cfg, gates: &gates, gateways: &gateways, conns, start, deadline };
            let r = bot(i, ch, ctx, stop).await;
            results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        }));
        // Spread logins over the first second rather than one thundering herd.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    // Bots not started before a stop never joined; they are not counted as failures.
    let n = if stop.is_stopped() { results.len() } else { cfg.n };
    results.truncate(n);
    let mut r = aggregate(results, n, start.elapsed(), gates.bound);
    r.stopped_early = stop.is_stopped();
    Ok(r)
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    cfg: &'a BotsConfig,
    gates: &'a GateOptions,
    gateways: &'a Gateways,
    conns: usize,
    start: Instant,
    deadline: Instant,
}

async fn bot(i: usize, ch: tonic::transport::Channel, ctx: Ctx<'_>, mut stop: Stop) -> BotResult {
    let Ctx { cfg, start, deadline, .. } = ctx;
    let mut res = BotResult::default();
    let name = format!("{}-{i}", cfg.prefix);
    // The channel `client` is on: the Play stream is opened on it with the lean decoder.
    let mut chan = ch.clone();
    let mut client = pb::player_link_client::PlayerLinkClient::new(ch)
        .max_decoding_message_size(4 * 1024 * 1024);
    let now = || start.elapsed().as_secs_f64();
    let mut seq = 0u64;
    let mut first_system = true;
    let mut watchers = Vec::new();
    let gate_bot = takes_gate(i, ctx.gates.share);
    // A ship between systems at the deadline (left the bubble, or jumped and
    // not yet seen in the new system) gets up to the bound to show up.
    let end = |obs: &Observer| {
        if gate_bot && obs.between_systems() { deadline + ctx.gates.bound } else { deadline }
    };
    // One pass per StarSystem the ship is in: join its gateway, play until the
    // end, or until the gateway says the ship left through a jump gate.
    'system: loop {
        let join = loop {
            if stop.is_stopped() {
                res.obs.finish();
                return res;
            }
            let token = match &cfg.token_key {
                Some(k) => {
                    let exp = crate::gateway::auth::now_unix() + BOT_TOKEN_TTL_SECS;
                    k.mint(&name, exp).unwrap_or_default()
                }
                None => String::new(),
            };
            match join_following_redirects(&mut client, &mut chan, &name, &token, &ctx, i, &mut res)
                .await
            {
                Ok(r) => break r,
                Err(e) => {
                    if Instant::now() > end(&res.obs) {
                        tracing::warn!(bot = %name, error = %e, "could not join");
                        if !first_system {
                            res.obs.finish();
                        }
                        return res;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if first_system {
            res.joined = true;
            res.obs = Observer::new(join.entity_id);
        }
        // In a new system the server gave the ship a route there: send none.
        let route = if !first_system {
            Vec::new()
        } else if gate_bot {
            choose_gate_route(&join, i as u64)
        } else if let Some(near) = &ctx.gates.near {
            choose_near_route(&join, near, i as u64).unwrap_or_else(|| {
                res.near_unknown = true;
                Vec::new()
            })
        } else {
            choose_route(&join, i as u64)
        };
        let mut first = true;
        first_system = false;
        'session: while Instant::now() < end(&res.obs) {
            if !first {
                res.reconnects += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            first = false;
            let (tx, rx) = mpsc::channel(16);
            let hello = player_message::Msg::Hello(pb::PlayHello { token: join.token.clone() });
            let _ = tx.try_send(pb::PlayerMessage { msg: Some(hello) });
            let mut stream = match lean::play(chan.clone(), ReceiverStream::new(rx)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(bot = %name, error = %e, "play failed");
                    continue;
                }
            };
            res.streamed = true;
            res.obs.reset_view();
            // Start the probes at a random phase so N bots do not send in lockstep.
            let phase = Duration::from_millis(
                splitmix(i as u64 ^ 0xabcd) % cfg.probe_interval.as_millis().max(1) as u64,
            );
            let mut probe =
                tokio::time::interval_at(tokio::time::Instant::now() + phase, cfg.probe_interval);
            probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // One timer and one stop watcher per session, not one per message: a new
            // `sleep_until` is a timer-wheel registration (and removal) every time.
            let mut until = end(&res.obs);
            let ended = tokio::time::sleep_until(until.into());
            tokio::pin!(ended);
            let stopped = stop.stopped();
            tokio::pin!(stopped);
            loop {
                // The end moves when the ship goes between systems (or arrives).
                let e = end(&res.obs);
                if e != until {
                    until = e;
                    ended.as_mut().reset(e.into());
                }
                tokio::select! {
                    _ = &mut ended => break 'session,
                    _ = &mut stopped => break 'session,
                    _ = probe.tick() => {
                        seq += 1;
                        // The route goes with every probe until the ship shows it: the
                        // first commands may arrive before the ship exists.
                        let with_route = res.obs.route_len == 0;
                        let cmd = pb::ShipCommand {
                            seq,
                            route: if with_route { route.clone() } else { Vec::new() },
                            max_speed: cfg.speed,
                            thrust: None,
                        };
                        if tx.try_send(pb::PlayerMessage { msg: Some(player_message::Msg::Input(cmd)) }).is_ok() {
                            res.inputs_sent += 1;
                            res.obs.sent(seq, now());
                        }
                    }
                    m = stream.message() => match m {
                        Ok(Some(u)) => match u.msg {
                            Some(lean::Msg::Bubble(b)) => res.obs.batch(&b, now()),
                            Some(lean::Msg::InputsDropped(n)) => res.inputs_dropped += n,
                            Some(lean::Msg::Transferred(t)) => {
                                res.obs.transferred(now());
                                tracing::info!(bot = %name, system = %t.system, gateway = %t.gateway, "ship jumped; following it");
                                match ctx.gateways.channel(&t.gateway, i, ctx.conns) {
                                    Ok(ch) if !t.gateway.is_empty() => {
                                        // Keep an eye on the old system a while: the ship
                                        // must not show there again.
                                        watchers.push(watch_old(
                                            client.clone(),
                                            join.token.clone(),
                                            join.entity_id,
                                        ));
                                        chan = ch.clone();
                                        client = pb::player_link_client::PlayerLinkClient::new(ch)
                                            .max_decoding_message_size(4 * 1024 * 1024);
                                        continue 'system;
                                    }
                                    _ => {
                                        res.gate_unfollowed += 1;
                                        break 'session;
                                    }
                                }
                            }
                            None => {}
                        },
                        Ok(None) => { tracing::warn!(bot = %name, "stream ended; reconnecting"); continue 'session }
                        Err(e) => { tracing::warn!(bot = %name, error = %e, "stream broke; reconnecting"); continue 'session }
                    },
                }
            }
        }
        break 'system;
    }
    for w in watchers {
        res.seen_in_both += w.await.unwrap_or(0);
    }
    res.obs.finish();
    res
}

/// Joins at `client`'s gateway, following redirects to other shards' gateways (at most
/// [`MAX_REDIRECTS`]); `client` ends up on the gateway that took the player.
async fn join_following_redirects(
    client: &mut pb::player_link_client::PlayerLinkClient<tonic::transport::Channel>,
    chan: &mut tonic::transport::Channel,
    name: &str,
    token: &str,
    ctx: &Ctx<'_>,
    i: usize,
    res: &mut BotResult,
) -> Result<pb::JoinResponse, tonic::Status> {
    let mut redirected = false;
    for _ in 0..=MAX_REDIRECTS {
        let mut req = tonic::Request::new(pb::JoinRequest {
            name: name.to_string(),
            token: token.to_string(),
        });
        if redirected {
            req.metadata_mut().insert(
                crate::gateway::REDIRECTED_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        let r = client.join(req).await?.into_inner();
        if r.redirect.is_empty() {
            return Ok(r);
        }
        let ch = ctx.gateways.channel(&r.redirect, i, ctx.conns).map_err(|e| {
            tonic::Status::invalid_argument(format!("redirect {}: {e}", r.redirect))
        })?;
        tracing::debug!(bot = %name, shard = r.redirect_shard, gateway = %r.redirect, "join redirected");
        *chan = ch.clone();
        *client = pb::player_link_client::PlayerLinkClient::new(ch)
            .max_decoding_message_size(4 * 1024 * 1024);
        res.redirects += 1;
        redirected = true;
    }
    Err(tonic::Status::unavailable(format!("more than {MAX_REDIRECTS} redirects in a row")))
}

/// How long after a jump a bot watches the old system for its ship.
const GATE_WATCH: Duration = Duration::from_secs(3);

/// Opens a second stream to the old system's gateway for `GATE_WATCH` and
/// counts sightings of the own ship there (it must be in exactly one system;
/// the gateway re-attaches the player, so its bubble would show the ship if
/// that system still or again held it).
fn watch_old(
    mut client: pb::player_link_client::PlayerLinkClient<tonic::transport::Channel>,
    token: String,
    own: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel(1);
        let hello = player_message::Msg::Hello(pb::PlayHello { token });
        let _ = tx.try_send(pb::PlayerMessage { msg: Some(hello) });
        let Ok(stream) = client.play(ReceiverStream::new(rx)).await else { return 0 };
        let mut stream = stream.into_inner();
        let end = tokio::time::Instant::now() + GATE_WATCH;
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => break,
                m = stream.message() => match m {
                    Ok(Some(pb::PlayerUpdate { msg: Some(player_update::Msg::Bubble(b)) })) => {
                        seen += b
                            .updates
                            .iter()
                            .filter(|u| match &u.change {
                                Some(pb::entity_update::Change::Enter(e)) => e.id == own,
                                Some(pb::entity_update::Change::Delta(d)) => d.id == own,
                                _ => false,
                            })
                            .count() as u64;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                },
            }
        }
        drop(tx);
        if seen > 0 {
            tracing::warn!(entity = own, seen, "own ship seen in the old system after its jump");
        }
        seen
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(name: &str, kind: &str, x: f64, t: &str) -> pb::Destination {
        pb::Destination {
            name: name.into(),
            kind: kind.into(),
            position: Some(pb::Vec3 { x, y: 0.0, z: 0.0 }),
            radius: 1.0,
            territory: t.into(),
        }
    }

    #[test]
    fn routes_cross_a_territory_boundary() {
        let j = pb::JoinResponse {
            spawn: "lz".into(),
            destinations: vec![
                dest("lz", "landingZone", 0.0, "a"),
                dest("st-same", "station", 1.0, "a"),
                dest("st-b", "station", 10.0, "b"),
                dest("st-c", "station", 20.0, "c"),
                dest("planet", "planet", 2.0, "d"),
                dest("st-far", "station", 1e6, "e"),
            ],
            ..Default::default()
        };
        for seed in 0..20 {
            let r = choose_route(&j, seed);
            assert_eq!(r.len(), 2);
            assert!(r[0].name == "st-b" || r[0].name == "st-c", "{}", r[0].name);
            assert_eq!(r[1].name, "lz");
        }
        assert!(choose_route(&pb::JoinResponse::default(), 1).is_empty());
    }

    #[test]
    fn gate_routes_end_in_a_gate() {
        let mut j = pb::JoinResponse {
            spawn: "lz".into(),
            destinations: vec![
                dest("lz", "landingZone", 0.0, "a"),
                dest("st-b", "station", 10.0, "b"),
            ],
            ..Default::default()
        };
        assert_eq!(choose_gate_route(&j, 1), choose_route(&j, 1), "no gate: the usual route");
        j.destinations.push(dest("gate", "jumpGate", 50.0, "deep-space"));
        let r = choose_gate_route(&j, 1);
        let names: Vec<&str> = r.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["st-b", "gate"]);
        assert!((0..100).all(|i| takes_gate(i, 1.0)));
        assert!(!(0..100).any(|i| takes_gate(i, 0.0)));
        let half = (0..1000).filter(|i| takes_gate(*i, 0.5)).count();
        assert!((400..600).contains(&half), "{half}");
    }

    #[test]
    fn near_routes_go_to_the_named_destination_only() {
        let j = pb::JoinResponse {
            spawn: "lz".into(),
            destinations: vec![
                dest("lz", "landingZone", 0.0, "a"),
                dest("ruin", "landingZone", 10.0, "b"),
            ],
            ..Default::default()
        };
        let mut points = Vec::new();
        for seed in 0..50 {
            let r = choose_near_route(&j, "ruin", seed).expect("a destination");
            assert_eq!((r.len(), r[0].name.as_str()), (1, "ruin"));
            let p = r[0].position.expect("a point");
            let d = ((p.x - 10.0).powi(2) + p.y.powi(2) + p.z.powi(2)).sqrt();
            assert!(d <= 0.8 + 1e-9, "inside the destination: {d}");
            assert!(r[0].radius > 0.0 && r[0].radius < 1.0);
            points.push(format!("{:.6},{:.6},{:.6}", p.x, p.y, p.z));
        }
        assert_eq!(choose_near_route(&j, "ruin", 7), choose_near_route(&j, "ruin", 7), "stable");
        points.sort();
        points.dedup();
        assert!(points.len() > 45, "spread, not one point: {}", points.len());
        assert!(choose_near_route(&j, "nowhere", 1).is_none());
        let lost =
            BotResult { joined: true, streamed: true, near_unknown: true, ..Default::default() };
        let r = aggregate(vec![lost], 1, Duration::ZERO, Duration::from_secs(1));
        assert!(!r.ok(), "an unknown --spawn-near is a violation");
    }

    #[tokio::test]
    async fn stop_ends_the_run_and_never_never_does() {
        let (tx, mut stop) = Stop::new();
        assert!(!stop.is_stopped());
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), stop.stopped()).await.unwrap();
        assert!(stop.is_stopped());
        let mut never = Stop::never();
        assert!(tokio::time::timeout(Duration::from_millis(20), never.stopped()).await.is_err());
    }

    #[test]
    fn violations_are_reported() {
        let mut lost = BotResult { joined: true, streamed: true, ..Default::default() };
        lost.obs.lost = 1;
        let r = aggregate(
            vec![lost, BotResult::default()],
            2,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(r.connected, 1);
        assert_eq!(r.violations.len(), 2);
        assert!(r.table().contains("VIOLATED"));
        let ok = aggregate(
            vec![BotResult { joined: true, streamed: true, ..Default::default() }],
            1,
            Duration::ZERO,
            Duration::from_secs(1),
        );
        assert!(ok.ok());
        let mut slow = BotResult { joined: true, streamed: true, ..Default::default() };
        slow.obs.gate_transfers = 1;
        slow.obs.gate_gaps_s = vec![5.0];
        let r = aggregate(vec![slow], 1, Duration::from_secs(9), Duration::from_secs(2));
        assert_eq!((r.gate_transfers, r.gate_gaps_over_bound), (1, 1));
        assert!(!r.ok(), "{:?}", r.violations);
    }
}

/// `starmesh bots` flags.
#[derive(clap::Args, Debug)]
pub struct BotsArgs {
    /// The gateway (host:port).
    #[arg(long, env = "STARMESH_GATEWAY")]
    pub gateway: String,
    /// Number of players.
    #[arg(short = 'n', long = "players", default_value_t = 100)]
    pub n: usize,
    /// How long to play, e.g. `30s`, `2m`, or seconds.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "bot")]
    pub prefix: String,
    /// Ship speed limit, km/s.
    #[arg(long, default_value_t = 200_000.0)]
    pub speed: f64,
    /// Milliseconds between a bot's commands (latency probes).
    #[arg(long, default_value_t = 250)]
    pub probe_ms: u64,
    /// Fraction (0..=1) of bots whose route ends at a jump gate; they follow their ship
    /// to the target system's gateway (which the gateway names: `--gateway-peer`).
    #[arg(long, default_value_t = 0.0)]
    pub gate_share: f64,
    /// Longest a jump may keep a ship out of both systems' bubbles before it counts
    /// as a violation, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub gate_bound: Duration,
    /// Fly every bot's ship (except those bound for a gate) to this destination of the
    /// system, e.g. a landing zone, and keep it there: the ships spawn at the system's
    /// spawn points, then gather here, so the load lands where a test wants it.
    #[arg(long, value_name = "LOCATION")]
    pub spawn_near: Option<String>,
    /// The gateway's player token key file: each bot mints its own token with it.
    #[arg(long, env = "STARMESH_PLAYER_TOKEN_KEY")]
    pub player_token_key: Option<std::path::PathBuf>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * mul < 1e7 => Ok(Duration::from_secs_f64(v * mul)),
        _ => Err(format!("{s:?} is not a duration like 30s, 2m or 500ms")),
    }
}

/// The `starmesh bots` role: prints the report; exits 1 if an invariant was violated.
pub fn main(a: BotsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.n > 0 && a.n <= 1_000_000, "-n must be 1..=1000000");
    anyhow::ensure!(a.speed.is_finite() && a.speed > 0.0, "--speed must be > 0");
    let cfg = BotsConfig {
        gateway: a.gateway,
        n: a.n,
        duration: a.duration,
        prefix: a.prefix,
        speed: a.speed.min(crate::wire::validate::MAX_SPEED_KM_S),
        probe_interval: Duration::from_millis(a.probe_ms.max(1)),
        token_key: a
            .player_token_key
            .as_deref()
            .map(crate::gateway::auth::TokenKey::from_file)
            .transpose()?,
    };
    anyhow::ensure!((0.0..=1.0).contains(&a.gate_share), "--gate-share must be in 0..=1");
    let gates = GateOptions { share: a.gate_share, bound: a.gate_bound, near: a.spawn_near };
    let report = tokio::runtime::Runtime::new()?.block_on(async move {
        // Ctrl-C ends the run early; the bots still report.
        let (tx, stop) = Stop::new();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        run_with(cfg, gates, stop).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
