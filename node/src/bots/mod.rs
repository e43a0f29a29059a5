//! `starmesh bots`: a load generator and an invariant checker. N players log
//! in through the gateway (one cheap tokio task each, sharing a few HTTP/2
//! connections), fly routes that cross territory boundaries, probe input
//! latency, and report what their bubbles showed (`observer`). It fails
//! (non-zero exit) when an invariant is violated: a player that could not
//! connect, a ship lost, an entity duplicated.

pub mod observer;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
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
}

#[derive(Debug, Default)]
struct BotResult {
    joined: bool,
    streamed: bool,
    reconnects: u64,
    obs: Observer,
    inputs_sent: u64,
    inputs_dropped: u64,
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

fn aggregate(results: Vec<BotResult>, n: usize, duration: Duration) -> Report {
    let mut r = Report { players: n, duration_s: duration.as_secs_f64(), ..Default::default() };
    let mut lat: Vec<f64> = Vec::new();
    let mut ticks: Vec<u64> = Vec::new();
    let mut never = 0;
    for b in results {
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
        ticks.extend(&b.obs.handoff_ticks);
    }
    r.update_latency_samples = lat.len();
    r.update_latency_ms_p50 = quantile(&mut lat, 0.5);
    r.update_latency_ms_p99 = quantile(&mut lat, 0.99);
    r.handoff_latency_samples = ticks.len();
    r.handoff_latency_ticks_p50 = quantile(&mut ticks, 0.5);
    r.handoff_latency_ticks_p99 = quantile(&mut ticks, 0.99);
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

pub async fn run(cfg: BotsConfig) -> anyhow::Result<Report> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cfg.gateway))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..cfg.n.div_ceil(PLAYERS_PER_CONNECTION).max(1) {
        channels.push(endpoint.connect().await?);
    }
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let results = Arc::new(Mutex::new(Vec::with_capacity(cfg.n)));
    let mut tasks = Vec::with_capacity(cfg.n);
    for i in 0..cfg.n {
        let ch = channels[i % channels.len()].clone();
        let (cfg, results) = (cfg.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let r = bot(i, ch, &cfg, start, deadline).await;
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
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(aggregate(results, cfg.n, start.elapsed()))
}

async fn bot(
    i: usize,
    ch: tonic::transport::Channel,
    cfg: &BotsConfig,
    start: Instant,
    deadline: Instant,
) -> BotResult {
    let mut res = BotResult::default();
    let name = format!("{}-{i}", cfg.prefix);
    let mut client = pb::player_link_client::PlayerLinkClient::new(ch)
        .max_decoding_message_size(4 * 1024 * 1024);
    let now = || start.elapsed().as_secs_f64();
    let join = loop {
        match client.join(pb::JoinRequest { name: name.clone() }).await {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                if Instant::now() > deadline {
                    tracing::warn!(bot = %name, error = %e, "could not join");
                    return res;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    res.joined = true;
    res.obs = Observer::new(join.entity_id);
    let route = choose_route(&join, i as u64);
    let mut seq = 0u64;
    let mut first = true;
    'session: while Instant::now() < deadline {
        if !first {
            res.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first = false;
        let (tx, rx) = mpsc::channel(16);
        let hello = player_message::Msg::Hello(pb::PlayHello { token: join.token.clone() });
        let _ = tx.try_send(pb::PlayerMessage { msg: Some(hello) });
        let mut stream = match client.play(ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
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
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => break 'session,
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
                        Some(player_update::Msg::Bubble(b)) => res.obs.batch(&b, now()),
                        Some(player_update::Msg::InputsDropped(n)) => res.inputs_dropped += n,
                        None => {}
                    },
                    Ok(None) => { tracing::warn!(bot = %name, "stream ended; reconnecting"); continue 'session }
                    Err(e) => { tracing::warn!(bot = %name, error = %e, "stream broke; reconnecting"); continue 'session }
                },
            }
        }
    }
    res.obs.finish();
    res
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
    fn violations_are_reported() {
        let mut lost = BotResult { joined: true, streamed: true, ..Default::default() };
        lost.obs.lost = 1;
        let r = aggregate(vec![lost, BotResult::default()], 2, Duration::from_secs(1));
        assert_eq!(r.connected, 1);
        assert_eq!(r.violations.len(), 2);
        assert!(r.table().contains("VIOLATED"));
        let ok = aggregate(
            vec![BotResult { joined: true, streamed: true, ..Default::default() }],
            1,
            Duration::ZERO,
        );
        assert!(ok.ok());
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
    };
    let report = tokio::runtime::Runtime::new()?.block_on(run(cfg))?;
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
