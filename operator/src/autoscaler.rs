//! The autoscaler's I/O for one shard of a dynamic layout, called by the ServerLayout
//! reconciler: read the cells and their players (the replicant's `GetPartition`, or
//! Prometheus), run the pure [`plan_cells`], send the splits and merges
//! (`SetPartition`), and decide the game-server StatefulSet's replicas: up at once,
//! down only after `Drain` of the highest ordinal answered 0 (nothing is ever forced: a
//! drain that does not finish within [`DRAIN_WARN_AFTER`] is reported and waited for).
//! The rules themselves live in `starmesh_api::autoscale`; the small decisions made here
//! ([`server_step`], [`partition_from_state`], ...) are pure and unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::events::{Event, EventType},
};
use starmesh_api::autoscale::{AutoscaleMemory, CellLoad, ScalingEvent, plan_cells, plan_shards};
use starmesh_api::partition::{self, Axis, Partition, Plane};
use starmesh_api::{
    CellStatus, DrainingServer, DynamicLayout, PlayerCountSource, ServerLayout, ShardStatus,
};

use crate::Ctx;
use crate::admin::{self, pb};
use crate::builders;
use crate::status::{LayoutScaling, ShardObservation};

/// How often a dynamic layout is reconciled while it runs.
pub const AUTOSCALE_INTERVAL: Duration = Duration::from_secs(5);
/// A drain still unfinished after this is reported (condition, Warning Event); it is
/// never forced.
pub const DRAIN_WARN_AFTER: Duration = Duration::from_secs(120);

/// What the autoscaler keeps per shard in the layout's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardScaling {
    pub servers_wanted: Option<i32>,
    /// Replicas to apply to the shard's game-server StatefulSet.
    pub replicas: Option<i32>,
    pub cells: Vec<CellStatus>,
    pub partition_version: Option<u64>,
    pub last_scale_time: Option<String>,
    pub draining_servers: Vec<DrainingServer>,
    pub memory: Option<AutoscaleMemory>,
    /// Players in the shard when they could be read this time.
    pub players: Option<u64>,
}

impl ShardScaling {
    /// What the previous status said (when the autoscaler cannot run this time, it is
    /// kept as it was).
    pub fn carried(prev: &ShardStatus) -> Self {
        ShardScaling {
            servers_wanted: prev.servers_wanted,
            replicas: None,
            cells: prev.cells.clone(),
            partition_version: prev.partition_version,
            last_scale_time: prev.last_scale_time.clone(),
            draining_servers: prev.draining_servers.clone(),
            memory: prev.autoscale.clone(),
            players: None,
        }
    }
}

/// Something to tell the user besides the scaling decisions themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// One shard's pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardRun {
    pub scaling: ShardScaling,
    pub decisions: Vec<ScalingEvent>,
    pub notices: Vec<Notice>,
    /// A drain overdue, for the `Degraded` condition.
    pub stuck: Option<String>,
}

/// The partition a replicant reports, checked (its base territories are those of its
/// cells: a replicant reports every leaf).
pub fn partition_from_state(state: &pb::PartitionState) -> Result<Partition, String> {
    let bases: BTreeSet<String> = state
        .cells
        .iter()
        .map(|c| partition::base_territory(&c.cell).to_string())
        .chain(state.splits.iter().map(|s| partition::base_territory(&s.cell).to_string()))
        .collect();
    let mut splits = Vec::new();
    for s in &state.splits {
        let axis = match s.axis.as_str() {
            "x" => Axis::X,
            "y" => Axis::Y,
            "z" => Axis::Z,
            other => return Err(format!("split of {:?}: unknown axis {other:?}", s.cell)),
        };
        splits.push((s.cell.clone(), Plane { axis, at: s.at }));
    }
    Partition::new(splits, &bases).map_err(|e| e.to_string())
}

/// Players per leaf cell as the replicant counts them.
pub fn loads_from_state(state: &pb::PartitionState) -> Vec<CellLoad> {
    state
        .cells
        .iter()
        .map(|c| CellLoad {
            cell: c.cell.clone(),
            players: u32::try_from(c.players).unwrap_or(u32::MAX),
        })
        .collect()
}

/// The status rows of the cells: owner from the replicant, players from `loads`.
pub fn cell_statuses(state: &pb::PartitionState, loads: &[CellLoad]) -> Vec<CellStatus> {
    let players: BTreeMap<&str, u32> = loads.iter().map(|l| (l.cell.as_str(), l.players)).collect();
    let mut out: Vec<CellStatus> = state
        .cells
        .iter()
        .map(|c| CellStatus {
            cell: c.cell.clone(),
            server: c.server.clone(),
            players: i64::from(players.get(c.cell.as_str()).copied().unwrap_or(0)),
        })
        .collect();
    out.sort_by(|a, b| a.cell.cmp(&b.cell));
    out
}

/// The pod name (= server name) of ordinal `k` of a game-server StatefulSet.
pub fn server_name(statefulset: &str, k: i32) -> String {
    format!("{statefulset}-{k}")
}

/// What to do with a shard's game servers this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    Keep,
    /// Scale up to this many at once.
    Up(i32),
    /// Ask the replicant to drain this server (the highest ordinal); scale down only
    /// once it owns nothing.
    Drain(String),
}

/// Pure: a drain under way is finished first (one at a time, never cancelled: the
/// replicant stops giving a draining server cells, so it would sit idle); otherwise up
/// at once, or a drain of the highest ordinal to go down by one.
pub fn server_step(
    wanted: u32,
    replicas: i32,
    statefulset: &str,
    draining: Option<&DrainingServer>,
) -> ServerStep {
    if let Some(d) = draining {
        return ServerStep::Drain(d.server.clone());
    }
    let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
    if wanted > replicas {
        ServerStep::Up(wanted)
    } else if wanted < replicas && replicas > 0 {
        ServerStep::Drain(server_name(statefulset, replicas - 1))
    } else {
        ServerStep::Keep
    }
}

/// The drain under way, if it is still about a server that exists (the highest ordinal).
fn current_drain<'a>(
    prev: &'a ShardScaling,
    statefulset: &str,
    replicas: i32,
) -> Option<&'a DrainingServer> {
    prev.draining_servers
        .first()
        .filter(|d| replicas > 0 && d.server == server_name(statefulset, replicas - 1))
}

fn rfc3339(now: i64) -> String {
    chrono::DateTime::from_timestamp(now, 0).map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// One pass over one shard (see the module comment). `prom` are the shard's counts when
/// the layout reads them from Prometheus; `replicas` is the StatefulSet's current count.
pub async fn run_shard(
    cfg: &DynamicLayout,
    replicant: SocketAddr,
    statefulset: &str,
    replicas: i32,
    prev: &ShardScaling,
    prom: Option<&[CellLoad]>,
    now: i64,
) -> Result<ShardRun, String> {
    let mut client = admin::connect(replicant).await?;
    let mut state = admin::get_partition(&mut client).await?;
    let partition = partition_from_state(&state)?;
    let loads = match prom {
        Some(l) => l.to_vec(),
        None => loads_from_state(&state),
    };
    let draining = current_drain(prev, statefulset, replicas);
    let heading_to = replicas - i32::from(draining.is_some());
    let plan = plan_cells(
        cfg,
        &partition,
        &loads,
        u32::try_from(heading_to.max(0)).unwrap_or(0),
        &prev.memory.clone().unwrap_or_default(),
        now,
    );
    let mut run = ShardRun::default();
    if !plan.split.is_empty() || !plan.merge.is_empty() {
        state = admin::set_partition(&mut client, plan.split.clone(), plan.merge.clone()).await?;
        for r in &state.refused {
            run.notices.push(Notice {
                warning: false,
                reason: "PartitionChangeRefused",
                note: format!("the replicant did not apply: {r}"),
            });
        }
    }

    let mut replicas_out = replicas;
    let mut drains = Vec::new();
    match server_step(plan.servers, replicas, statefulset, draining) {
        ServerStep::Keep => {}
        ServerStep::Up(n) => replicas_out = n,
        ServerStep::Drain(server) => {
            let since = draining.map_or(now, |d| d.since);
            let remaining = admin::drain(&mut client, &server).await?;
            if remaining == 0 {
                replicas_out = replicas - 1;
                run.notices.push(Notice {
                    warning: false,
                    reason: "ServerDrained",
                    note: format!(
                        "{server} owns no cell after {}s of draining; its pod is deleted ({replicas} -> {replicas_out} servers)",
                        now.saturating_sub(since)
                    ),
                });
            } else {
                let waited = now.saturating_sub(since);
                if u64::try_from(waited).unwrap_or(0) >= DRAIN_WARN_AFTER.as_secs() {
                    // No moving number in the message: the Warning goes out once.
                    run.stuck = Some(format!(
                        "{server} has been draining since {} (over {}s) and still owns cells; it is kept until it owns none",
                        rfc3339(since),
                        DRAIN_WARN_AFTER.as_secs()
                    ));
                }
                drains.push(DrainingServer { server, since, remaining: i64::from(remaining) });
            }
        }
    }

    run.scaling = ShardScaling {
        servers_wanted: Some(i32::try_from(plan.servers).unwrap_or(i32::MAX)),
        replicas: Some(replicas_out),
        cells: cell_statuses(&state, &loads),
        partition_version: Some(state.version),
        last_scale_time: if plan.events.is_empty() {
            prev.last_scale_time.clone()
        } else {
            Some(rfc3339(now))
        },
        draining_servers: drains,
        memory: Some(plan.memory.clone()),
        players: Some(loads.iter().map(|l| u64::from(l.players)).sum()),
    };
    run.decisions = plan.events;
    Ok(run)
}

// ---- the whole layout ------------------------------------------------------------------

/// Every shard's pass of one reconcile.
#[derive(Debug, Clone, Default)]
pub struct LayoutPass {
    pub shards: BTreeMap<i32, ShardScaling>,
    pub decisions: Vec<ScalingEvent>,
    pub notices: Vec<Notice>,
    pub stuck: Vec<String>,
}

impl LayoutPass {
    /// The game-server replicas to apply per shard: this pass's decision, else the
    /// StatefulSet's current count (a shard the autoscaler could not read keeps what it
    /// has).
    pub fn replicas(&self, before: &BTreeMap<i32, ShardObservation>) -> BTreeMap<i32, i32> {
        before
            .iter()
            .filter(|(_, o)| o.replicant_exists)
            .map(|(i, o)| (*i, o.servers_desired))
            .chain(self.shards.iter().filter_map(|(i, s)| Some((*i, s.replicas?))))
            .collect()
    }

    /// Age of the oldest unfinished drain.
    pub fn oldest_drain(&self, now: i64) -> i64 {
        self.shards
            .values()
            .flat_map(|s| &s.draining_servers)
            .map(|d| now.saturating_sub(d.since))
            .max()
            .unwrap_or(0)
    }

    /// Players per shard index `0..shards` for the shard decision (`None`: unknown).
    pub fn shard_players(&self, shards: i32) -> Vec<Option<u64>> {
        (0..shards.max(0)).map(|i| self.shards.get(&i).and_then(|s| s.players)).collect()
    }
}

/// The counts of every shard from the layout's Prometheus, when it names one: `None`
/// when the layout reads the replicants, `Some(Err)` when the query failed.
pub async fn prometheus_counts(
    layout: &ServerLayout,
) -> Option<Result<BTreeMap<i32, Vec<CellLoad>>, String>> {
    let pc = &layout.spec.player_counts;
    if pc.source != PlayerCountSource::Prometheus {
        return None;
    }
    let p = pc.prometheus.as_ref()?;
    let q = p
        .query
        .clone()
        .unwrap_or_else(|| crate::prometheus::default_query(&layout.spec.system_ref));
    Some(crate::prometheus::query(&p.url, &q).await)
}

/// The cell pass of a dynamic layout over every shard whose replicant is ready.
pub async fn cells_pass(
    layout: &ServerLayout,
    services: &Api<Service>,
    before: &BTreeMap<i32, ShardObservation>,
    prom: Option<&Result<BTreeMap<i32, Vec<CellLoad>>, String>>,
    now: i64,
) -> LayoutPass {
    let mut pass = LayoutPass::default();
    let name = layout.name_any();
    let cfg = layout.spec.dynamic.clone().unwrap_or_default();
    let previous = layout.status.clone().unwrap_or_default();
    if let Some(Err(e)) = prom {
        pass.notices.push(Notice {
            warning: true,
            reason: "PlayerCountsUnavailable",
            note: format!("Prometheus: {e}; no scaling decision this time"),
        });
    }
    for i in 0..layout.spec.shards.max(0) {
        let prev = previous
            .shard_statuses
            .iter()
            .find(|s| s.index == i)
            .map(ShardScaling::carried)
            .unwrap_or_default();
        let Some(obs) = before.get(&i).filter(|o| o.replicant_ready) else {
            pass.shards.insert(i, prev);
            continue;
        };
        let loads = match prom {
            None => None,
            Some(Ok(m)) => Some(m.get(&i).cloned().unwrap_or_default()),
            Some(Err(_)) => {
                pass.shards.insert(i, prev);
                continue;
            }
        };
        let addr = match replicant_addr(services, &name, i).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(layout = %name, shard = i, error = %e, "no replicant address");
                pass.shards.insert(i, prev);
                continue;
            }
        };
        let sts = builders::servers_name(&name, i);
        match run_shard(&cfg, addr, &sts, obs.servers_desired, &prev, loads.as_deref(), now).await {
            Ok(run) => {
                pass.decisions.extend(run.decisions.into_iter().map(|mut e| {
                    e.message = format!("shard {i}: {}", e.message);
                    e
                }));
                pass.notices.extend(run.notices.into_iter().map(|mut n| {
                    n.note = format!("shard {i}: {}", n.note);
                    n
                }));
                pass.stuck.extend(run.stuck.map(|s| format!("shard {i}: {s}")));
                pass.shards.insert(i, run.scaling);
            }
            Err(e) => {
                tracing::warn!(layout = %name, shard = i, error = %e, "autoscaler pass failed");
                pass.shards.insert(i, prev);
            }
        }
    }
    pass
}

/// The shard's replicant Service, by a list with a name field selector: the operator's
/// RBAC lets it list and watch Services, not get them.
pub async fn replicant_service(
    services: &Api<Service>,
    layout: &str,
    shard: i32,
) -> Result<Option<Service>, kube::Error> {
    let lp = ListParams::default()
        .fields(&format!("metadata.name={}", builders::replicant_name(layout, shard)));
    Ok(services.list(&lp).await?.items.into_iter().next())
}

async fn replicant_addr(
    services: &Api<Service>,
    layout: &str,
    shard: i32,
) -> Result<SocketAddr, String> {
    let svc = replicant_service(services, layout, shard)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no replicant Service")?;
    let ip: std::net::IpAddr = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .ok_or("no cluster IP")?
        .parse()
        .map_err(|e| format!("cluster IP: {e}"))?;
    let port = u16::try_from(builders::REPLICANT_GRPC_PORT).map_err(|e| e.to_string())?;
    Ok(SocketAddr::new(ip, port))
}

/// The shard decision of a layout with `spec.shardAutoscaling`, applied through the
/// layout's scale subresource (as an HPA would). Returns what goes into the status and
/// the decisions made.
pub async fn shards_pass(
    layout: &ServerLayout,
    api: &Api<ServerLayout>,
    shard_players: &[Option<u64>],
    now: i64,
) -> Result<(LayoutScaling, Vec<ScalingEvent>), kube::Error> {
    let previous = layout.status.clone().unwrap_or_default();
    let carried = LayoutScaling {
        draining_shard: previous.draining_shard,
        last_shard_scale_time: previous.last_shard_scale_time.clone(),
        memory: previous.shard_autoscale.clone(),
    };
    let Some(cfg) = &layout.spec.shard_autoscaling else {
        return Ok((LayoutScaling::default(), Vec::new()));
    };
    let plan = plan_shards(
        cfg,
        shard_players,
        layout.spec.shards,
        previous.draining_shard,
        &previous.shard_autoscale.clone().unwrap_or_default(),
        now,
    );
    if plan.shards != layout.spec.shards {
        let patch = serde_json::json!({"spec": {"replicas": plan.shards}});
        api.patch_scale(&layout.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    let scaling = LayoutScaling {
        draining_shard: plan.draining,
        last_shard_scale_time: if plan.events.is_empty() {
            carried.last_shard_scale_time
        } else {
            Some(rfc3339(now))
        },
        memory: Some(plan.memory),
    };
    Ok((scaling, plan.events))
}

/// Events and metrics of a pass. Decisions are Normal Events (reason from the action);
/// notices as they say.
pub async fn publish(
    ctx: &Ctx,
    reference: &ObjectReference,
    namespace: &str,
    layout: &str,
    decisions: &[ScalingEvent],
    notices: &[Notice],
) {
    for d in decisions {
        ctx.metrics.scaling_decision(namespace, layout, d.action.as_str());
        tracing::info!(layout, action = d.action.as_str(), subject = %d.subject, players = d.players, threshold = d.threshold, "{}", d.message);
        let ev = Event {
            type_: EventType::Normal,
            reason: d.action.reason().into(),
            note: Some(d.message.clone()),
            action: "Autoscale".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, reference).await {
            tracing::warn!(layout, error = %e, "could not publish a scaling Event");
        }
    }
    for n in notices {
        let ev = Event {
            type_: if n.warning { EventType::Warning } else { EventType::Normal },
            reason: n.reason.into(),
            note: Some(n.note.clone()),
            action: "Autoscale".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, reference).await {
            tracing::warn!(layout, error = %e, "could not publish an autoscaler Event");
        }
    }
}

/// Pure: the players per shard the mesh map tells the gateways (they place new players on
/// the least-loaded shard). From Prometheus when the layout reads it (a shard without
/// series is unknown), else this pass's replicant counts (dynamic layouts), else the
/// previous status's counts of shards whose replicant was ready. A shard left out is
/// unknown, and gateways never compare an unknown count.
pub fn map_players(
    shards: i32,
    prom: Option<&Result<BTreeMap<i32, Vec<CellLoad>>, String>>,
    pass: &LayoutPass,
    previous: &[ShardStatus],
) -> BTreeMap<i32, u64> {
    let known = |i: i32| -> Option<u64> {
        match prom {
            Some(Ok(m)) => m.get(&i).map(|l| l.iter().map(|c| u64::from(c.players)).sum()),
            Some(Err(_)) => None,
            None => pass.shards.get(&i).and_then(|s| s.players).or_else(|| {
                previous
                    .iter()
                    .find(|s| s.index == i && s.replicant_ready)
                    .map(|s| u64::try_from(s.players).unwrap_or(0))
            }),
        }
    };
    (0..shards.max(0)).filter_map(|i| Some((i, known(i)?))).collect()
}

/// A Prometheus-less shard count when the replicant cannot be read: players from the
/// previous status's cells (for the shard decision), `None` when nothing is known.
pub fn players_from_cells(cells: &[CellStatus]) -> Option<u64> {
    (!cells.is_empty()).then(|| cells.iter().map(|c| u64::try_from(c.players).unwrap_or(0)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> pb::PartitionState {
        pb::PartitionState {
            version: 3,
            splits: vec![pb::CellSplit { cell: "hurston".into(), axis: "x".into(), at: 1.5 }],
            cells: vec![
                pb::CellState {
                    cell: "hurston/1".into(),
                    server: "s-1".into(),
                    players: 4,
                    entities: 9,
                },
                pb::CellState {
                    cell: "hurston/0".into(),
                    server: "s-0".into(),
                    players: 30,
                    entities: 40,
                },
                pb::CellState {
                    cell: "deep-space".into(),
                    server: "".into(),
                    players: 0,
                    entities: 1,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_replicants_partition_and_counts_are_read_and_checked() {
        let s = state();
        let p = partition_from_state(&s).expect("valid");
        assert_eq!(p.plane("hurston"), Some(&Plane { axis: Axis::X, at: 1.5 }));
        let loads = loads_from_state(&s);
        assert_eq!(loads.iter().map(|l| l.players).sum::<u32>(), 34);
        let cells = cell_statuses(&s, &loads);
        let names: Vec<&str> = cells.iter().map(|c| c.cell.as_str()).collect();
        assert_eq!(names, ["deep-space", "hurston/0", "hurston/1"]);
        assert_eq!((cells[1].server.as_str(), cells[1].players), ("s-0", 30));

        let mut bad = s.clone();
        bad.splits[0].axis = "w".into();
        assert!(partition_from_state(&bad).is_err());
        let mut orphan = s;
        orphan.splits.push(pb::CellSplit { cell: "hurston/1/1".into(), axis: "y".into(), at: 0.0 });
        assert!(partition_from_state(&orphan).is_err(), "a split below an unsplit cell");
    }

    #[test]
    fn servers_go_up_at_once_and_down_only_through_a_drain_of_the_highest_ordinal() {
        assert_eq!(server_step(3, 1, "l-shard-0-servers", None), ServerStep::Up(3));
        assert_eq!(server_step(2, 2, "l-shard-0-servers", None), ServerStep::Keep);
        assert_eq!(
            server_step(1, 3, "l-shard-0-servers", None),
            ServerStep::Drain("l-shard-0-servers-2".into())
        );
        // A drain under way is finished first, even if more servers are wanted again.
        let d = DrainingServer { server: "l-shard-0-servers-2".into(), since: 5, remaining: 1 };
        assert_eq!(
            server_step(4, 3, "l-shard-0-servers", Some(&d)),
            ServerStep::Drain("l-shard-0-servers-2".into())
        );
        assert_eq!(server_step(0, 0, "x", None), ServerStep::Keep);
    }

    #[test]
    fn a_recorded_drain_counts_only_while_it_is_the_highest_ordinal() {
        let prev = ShardScaling {
            draining_servers: vec![DrainingServer { server: "s-2".into(), since: 1, remaining: 1 }],
            ..Default::default()
        };
        assert!(current_drain(&prev, "s", 3).is_some());
        // Someone scaled the StatefulSet by hand: that server is gone.
        assert!(current_drain(&prev, "s", 2).is_none());
        assert!(current_drain(&prev, "s", 0).is_none());
    }

    #[test]
    fn the_map_gets_known_counts_only() {
        let load = |p: u32| CellLoad { cell: "c".into(), players: p };
        let mut pass = LayoutPass::default();
        pass.shards.insert(0, ShardScaling { players: Some(12), ..Default::default() });
        pass.shards.insert(1, ShardScaling::default());
        let prev = [
            ShardStatus { index: 1, replicant_ready: true, players: 4, ..Default::default() },
            ShardStatus { index: 2, replicant_ready: false, players: 9, ..Default::default() },
        ];
        // The replicants this pass, else the last status of a ready shard.
        assert_eq!(map_players(3, None, &pass, &prev), BTreeMap::from([(0, 12), (1, 4)]));
        // Prometheus: its series decide; a shard without any is unknown.
        let prom = Ok(BTreeMap::from([(0, vec![load(3), load(2)]), (2, vec![load(0)])]));
        assert_eq!(map_players(3, Some(&prom), &pass, &prev), BTreeMap::from([(0, 5), (2, 0)]));
        assert!(map_players(3, Some(&Err("down".into())), &pass, &prev).is_empty());
        assert!(map_players(0, None, &pass, &prev).is_empty());
    }

    #[test]
    fn carried_state_keeps_what_the_status_said() {
        let prev = ShardStatus {
            servers_wanted: Some(2),
            cells: vec![CellStatus { cell: "a".into(), server: "s-0".into(), players: 7 }],
            partition_version: Some(4),
            ..Default::default()
        };
        let c = ShardScaling::carried(&prev);
        assert_eq!((c.servers_wanted, c.partition_version, c.replicas), (Some(2), Some(4), None));
        assert_eq!(players_from_cells(&c.cells), Some(7));
        assert_eq!(players_from_cells(&[]), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
    }
}
