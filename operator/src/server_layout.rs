//! ServerLayout reconciler.
//!
//! Valid layout: per shard, apply the Services first (their cluster IPs go into the mesh
//! map), then the `L-mesh-map` ConfigMap, then the workloads; delete the objects of shards
//! `>= spec.shards`; write status.
//!
//! Invalid layout (or missing/invalid StarSystem): conditions + a Warning Event, and
//! **nothing is created, changed or deleted**. Shards that already run keep running on
//! their last good configuration (status says `Degraded=True`, reason
//! `InvalidSpecKeptRunning`): a typo in an edit must not take a live world down.
//!
//! Deletion: the `starmesh.dev/drain` finalizer holds the layout until the drain step has
//! run (see [`drain`]); then garbage collection removes the children through their owner
//! references.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{ConfigMap, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use starmesh_api::{LayoutMode, ServerLayout, StarSystem};

use crate::{
    Ctx, Error, Result, admin, autoscaler,
    builders::{self, FIELD_MANAGER, FINALIZER, LayoutRef, ShardIps},
    checks::{SystemLookup, check_server_layout},
    conditions::{self, VALID},
    gate_peers, players,
    status::{self, ShardObservation, StatusInput},
};

pub const RESOURCE: &str = "ServerLayout";

/// A deletion whose game servers have not stopped after this is reported: `Degraded=True`
/// reason `DrainStuck` on the layout and one Warning Event naming the way out. It keeps
/// waiting (drain before delete).
const DRAIN_REPORT_AFTER: Duration = Duration::from_secs(60);
/// ... until this: a cluster that cannot stop pods (a dead node) must still be able to
/// delete a layout; the entities are the replicant's, already persisted, so nothing is
/// lost by going on. Reported again (Warning `DrainAbandoned`).
const DRAIN_GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// Annotation releasing a deleted layout at once, without waiting for its servers to
/// stop (the user's explicit choice, after a `DrainStuck`).
pub const FORCE_DELETE_ANNOTATION: &str = "starmesh.dev/force-delete";

/// What the deletion step does this time. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainVerdict {
    /// Servers still stopping: wait.
    Wait,
    /// Still stopping after [`DRAIN_REPORT_AFTER`]: report (once) and wait.
    Stuck,
    /// Release the finalizer; `forced` when servers were still running.
    Release { forced: bool },
}

pub fn drain_verdict(remaining: i32, waited: Duration, force_annotation: bool) -> DrainVerdict {
    if remaining <= 0 {
        DrainVerdict::Release { forced: false }
    } else if force_annotation || waited >= DRAIN_GIVE_UP_AFTER {
        DrainVerdict::Release { forced: true }
    } else if waited >= DRAIN_REPORT_AFTER {
        DrainVerdict::Stuck
    } else {
        DrainVerdict::Wait
    }
}

fn apply_params() -> PatchParams {
    // force: this operator is the only intended writer of the fields it applies; taking
    // them back from a `kubectl edit` is the point of reconciling.
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().ok_or(Error::MissingObjectKey("metadata.name"))?;
    // Typed objects from k8s-openapi serialize apiVersion and kind, as SSA requires.
    Ok(api.patch(&name, &apply_params(), &Patch::Apply(obj)).await?)
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None }
}

struct Apis {
    layouts: Api<ServerLayout>,
    systems: Api<StarSystem>,
    statefulsets: Api<StatefulSet>,
    deployments: Api<Deployment>,
    services: Api<Service>,
    configmaps: Api<ConfigMap>,
}

impl Apis {
    fn new(ctx: &Ctx, ns: &str) -> Self {
        let c = ctx.client.clone();
        Apis {
            layouts: Api::namespaced(c.clone(), ns),
            systems: Api::namespaced(c.clone(), ns),
            statefulsets: Api::namespaced(c.clone(), ns),
            deployments: Api::namespaced(c.clone(), ns),
            services: Api::namespaced(c.clone(), ns),
            configmaps: Api::namespaced(c, ns),
        }
    }

    async fn observe(&self, layout: &str) -> Result<(Vec<StatefulSet>, Vec<Deployment>)> {
        let lp = ListParams::default().labels(&builders::children_selector(layout));
        let sts = self.statefulsets.list(&lp).await?.items;
        let deps = self.deployments.list(&lp).await?.items;
        Ok((sts, deps))
    }
}

pub async fn reconcile(layout: Arc<ServerLayout>, ctx: Ctx) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(RESOURCE);
    let ns = layout.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let apis = Apis::new(&ctx, &ns);

    if layout.metadata.deletion_timestamp.is_some() {
        return drain(&layout, &apis, &ctx).await;
    }
    if !layout.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&layout, &apis.layouts).await?;
        // The patch wakes the controller again with the updated object.
        return Ok(Action::await_change());
    }
    apply_layout(&layout, &apis, &ctx).await
}

async fn apply_layout(layout: &ServerLayout, apis: &Apis, ctx: &Ctx) -> Result<Action> {
    let name = layout.name_any();
    let lref = LayoutRef::new(layout, &ctx.node_image)
        .ok_or(Error::MissingObjectKey("metadata.uid"))?
        .with_mesh_tls(ctx.mesh_tls_secret.clone());
    let system = apis.systems.get_opt(&layout.spec.system_ref).await?;
    let lookup = match &system {
        Some(s) => SystemLookup::Found(&s.spec),
        None => SystemLookup::Missing,
    };
    let verdict = check_server_layout(&name, &layout.spec, lookup);
    let previous = layout.status.clone().unwrap_or_default();
    let (sts_before, deps_before) = apis.observe(&name).await?;
    let before = status::observe(&sts_before, &deps_before);

    // Autoscaling (dynamic layouts, operator in the cluster): decide and drain first,
    // so the applies below carry the decided server counts.
    let now_s = Timestamp::now().as_second();
    let autoscaling = verdict.is_ok() && system.is_some() && ctx.player_counts;
    let prom = if autoscaling { autoscaler::prometheus_counts(layout).await } else { None };
    let pass = if autoscaling && layout.spec.mode == LayoutMode::Dynamic {
        autoscaler::cells_pass(layout, &apis.services, &before, prom.as_ref(), now_s).await
    } else {
        autoscaler::LayoutPass::default()
    };
    let replicas = pass.replicas(&before);
    // What the gateways place players by: the shard being drained (as the last pass
    // decided) and the players per shard.
    let loads = MapLoads {
        draining: previous.draining_shard,
        players: autoscaler::map_players(
            layout.spec.shards,
            prom.as_ref(),
            &pass,
            &previous.shard_statuses,
        ),
    };

    let mut apply_error = None;
    let mut shards = before.clone();
    let mut ips = Vec::new();
    let mut peers_pending = false;
    if let (Ok(()), Some(system)) = (&verdict, &system) {
        match apply_children(&lref, system, apis, &replicas, &loads).await {
            Ok((after, shard_ips, peers_complete)) => {
                shards = after;
                ips = shard_ips;
                peers_pending = !peers_complete;
            }
            Err(e) => {
                tracing::warn!(layout = %name, error = %e, "applying children failed");
                apply_error = Some(e);
            }
        }
    }

    let players =
        if ctx.player_counts { count_players(&shards, &ips).await } else { BTreeMap::new() };
    let reference = layout.object_ref(&());
    // Shard autoscaling: players per shard from this pass (dynamic) or the scrape.
    let mut shard_decisions = Vec::new();
    let mut layout_scaling = status::LayoutScaling::default();
    if autoscaling && layout.spec.shard_autoscaling.is_some() {
        let counts: Vec<Option<u64>> = match (&prom, layout.spec.mode) {
            (Some(Ok(m)), _) => (0..layout.spec.shards.max(0))
                .map(|i| {
                    Some(m.get(&i).map_or(0, |l| l.iter().map(|c| u64::from(c.players)).sum()))
                })
                .collect(),
            (Some(Err(_)), _) => Vec::new(),
            (None, LayoutMode::Dynamic) => pass.shard_players(layout.spec.shards),
            (None, LayoutMode::Static) => (0..layout.spec.shards.max(0))
                .map(|i| {
                    players
                        .get(&i)
                        .map(|t| t.values().map(|v| u64::try_from(*v).unwrap_or(0)).sum())
                })
                .collect(),
        };
        if counts.len() == usize::try_from(layout.spec.shards.max(0)).unwrap_or(0) {
            let (ls, decisions) =
                autoscaler::shards_pass(layout, &apis.layouts, &counts, now_s).await?;
            layout_scaling = ls;
            shard_decisions = decisions;
        }
    } else if let Some(prev) = &layout.status {
        // Shard autoscaling cannot read counts this time: keep what it said.
        if layout.spec.shard_autoscaling.is_some() {
            layout_scaling = status::LayoutScaling {
                draining_shard: prev.draining_shard,
                last_shard_scale_time: prev.last_shard_scale_time.clone(),
                memory: prev.shard_autoscale.clone(),
            };
        }
    }
    let now = Time(Timestamp::now());
    let apply_message = apply_error.as_ref().map(ToString::to_string);
    let next = status::layout_status(&StatusInput {
        spec: &layout.spec,
        name: &name,
        generation: layout.metadata.generation,
        previous: &previous.conditions,
        verdict: &verdict,
        shards: &shards,
        apply_error: apply_message.as_deref(),
        players: &players,
        now: &now,
    });
    let carried: BTreeMap<i32, autoscaler::ShardScaling> = if pass.shards.is_empty() {
        previous
            .shard_statuses
            .iter()
            .map(|s| (s.index, autoscaler::ShardScaling::carried(s)))
            .collect()
    } else {
        pass.shards.clone()
    };
    let next = status::with_scaling(
        next,
        &carried,
        &layout_scaling,
        &pass.stuck,
        &previous.conditions,
        &now,
    );
    if next != previous {
        let patch = json!({
            "apiVersion": "starmesh.dev/v1alpha1",
            "kind": "ServerLayout",
            "status": next,
        });
        apis.layouts.patch_status(&name, &apply_params(), &Patch::Apply(&patch)).await?;
    }

    let ns = layout.namespace().unwrap_or_default();
    autoscaler::publish(ctx, &reference, &ns, &name, &pass.decisions, &pass.notices).await;
    autoscaler::publish(ctx, &reference, &ns, &name, &shard_decisions, &[]).await;
    ctx.metrics.set_oldest_drain(&ns, &name, pass.oldest_drain(now_s) as f64);
    // A drain overdue: one Warning when the condition turns to it, not every pass.
    if conditions::changed(&previous.conditions, &next.conditions, conditions::DEGRADED)
        && let Some(c) = conditions::find(&next.conditions, conditions::DEGRADED)
        && c.reason == "DrainStuck"
    {
        let ev = event(EventType::Warning, "DrainStuck", "Drain", c.message.clone());
        ctx.recorder.publish(&ev, &reference).await?;
    }
    for ev in shard_events(&before, &shards, verdict.is_ok() && apply_error.is_none()) {
        ctx.recorder.publish(&ev, &reference).await?;
    }
    // Validity Events only when the verdict changes, not on every resync.
    if conditions::changed(&previous.conditions, &next.conditions, VALID)
        && let Some(c) = conditions::find(&next.conditions, VALID)
    {
        let ev = if c.status == "True" {
            event(EventType::Normal, "Valid", "Validate", c.message.clone())
        } else {
            event(EventType::Warning, &c.reason, "Validate", c.message.clone())
        };
        ctx.recorder.publish(&ev, &reference).await?;
    }
    if let Some(e) = apply_error {
        let ev = event(EventType::Warning, "ApplyFailed", "Apply", e.to_string());
        ctx.recorder.publish(&ev, &reference).await?;
        return Err(e);
    }

    tracing::info!(
        layout = %name,
        valid = verdict.is_ok(),
        shards = next.shards,
        ready = next.ready_shards,
        "reconciled ServerLayout"
    );
    Ok(match verdict {
        // A missing system is watched (a new StarSystem wakes its layouts), but a slow
        // requeue heals a missed event cheaply.
        Err(_) => Action::requeue(Duration::from_secs(60)),
        // Autoscaled layouts react within seconds (which also covers the gate peers' retry).
        Ok(())
            if next.shards > 0
                && ctx.player_counts
                && (layout.spec.mode == LayoutMode::Dynamic
                    || layout.spec.shard_autoscaling.is_some()) =>
        {
            Action::requeue(autoscaler::AUTOSCALE_INTERVAL)
        }
        // While shards run, the player counts in the status stay live.
        Ok(()) if next.shards > 0 && ctx.player_counts => Action::requeue(PLAYER_COUNT_INTERVAL),
        // A gate's target layout is missing or has no Services yet: its addresses go into
        // our mesh map as soon as they exist (nothing watches the other layout for us).
        Ok(()) if peers_pending => Action::requeue(PEER_RETRY_INTERVAL),
        Ok(()) if next.ready_shards < next.shards => Action::requeue(Duration::from_secs(30)),
        Ok(()) => Action::requeue(Duration::from_secs(300)),
    })
}

/// How often a layout whose gate peers are incomplete is requeued to look for them.
pub const PEER_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// How often a layout with shards is requeued to refresh its player counts.
pub const PLAYER_COUNT_INTERVAL: Duration = Duration::from_secs(10);

/// Players per territory of every shard whose replicant is ready, read from its Service's
/// metrics port (all shards at once, each bounded by `players::SCRAPE_TIMEOUT`). A shard
/// that cannot be read is left out (it counts 0 until the next pass).
async fn count_players(
    shards: &BTreeMap<i32, ShardObservation>,
    ips: &[ShardIps],
) -> BTreeMap<i32, BTreeMap<String, i64>> {
    let targets = ips.iter().filter_map(|s| {
        let ready = shards.get(&s.index).is_some_and(|o| o.replicant_ready);
        let ip: std::net::IpAddr = s.replicant.parse().ok()?;
        let port = u16::try_from(builders::METRICS_PORT).ok()?;
        (ready && !ip.is_unspecified()).then_some((s.index, std::net::SocketAddr::new(ip, port)))
    });
    let scrapes = targets.map(|(i, addr)| async move { (i, players::scrape(addr).await) });
    futures::future::join_all(scrapes)
        .await
        .into_iter()
        .filter_map(|(i, p)| Some((i, p?)))
        .collect()
}

/// The mesh map's placement facts (see [`builders::with_shard_loads`]).
struct MapLoads {
    draining: Option<i32>,
    players: BTreeMap<i32, u64>,
}

/// Applies every child of a valid layout and deletes the shards beyond `spec.shards`.
/// Returns the shards' state as the API server answered the applies, their Service IPs,
/// and whether the gate peers in the mesh map are complete.
async fn apply_children(
    l: &LayoutRef<'_>,
    system: &StarSystem,
    apis: &Apis,
    replicas: &BTreeMap<i32, i32>,
    loads: &MapLoads,
) -> Result<(BTreeMap<i32, ShardObservation>, Vec<ShardIps>, bool)> {
    let shards = l.spec.shards.max(0);
    // Services first: the mesh map needs their cluster IPs, and pods created afterwards
    // mount a map that already has every address.
    let mut ips = Vec::new();
    for i in 0..shards {
        let rep = apply(&apis.services, &builders::replicant_service(l, i)).await?;
        apply(&apis.services, &builders::servers_service(l, i)).await?;
        let gw = apply(&apis.services, &builders::gateway_service(l, i)).await?;
        let ip =
            |s: &Service| s.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
        ips.push(ShardIps { index: i, replicant: ip(&rep), gateway: ip(&gw) });
    }
    let (peers, peers_complete) =
        gate_peers::resolve(system, &apis.layouts, &apis.services).await?;
    let map = builders::with_shard_loads(
        builders::mesh_map(l, &ips, &peers),
        loads.draining,
        &loads.players,
    );
    let cm = builders::mesh_map_configmap(l, system, &map).map_err(Error::Serialization)?;
    apply(&apis.configmaps, &cm).await?;

    let mut sts = Vec::new();
    let mut deps = Vec::new();
    for i in 0..shards {
        // Dynamic: the autoscaler's count (or the current one); static: the list.
        let servers = builders::servers_for_shard(l.spec, replicas.get(&i).copied());
        sts.push(apply(&apis.statefulsets, &builders::replicant_statefulset(l, i)).await?);
        sts.push(apply(&apis.statefulsets, &builders::servers_statefulset(l, i, servers)).await?);
        deps.push(apply(&apis.deployments, &builders::gateway_deployment(l, i)).await?);
    }
    delete_shards_from(l, shards, apis).await?;
    Ok((status::observe(&sts, &deps), ips, peers_complete))
}

/// Deletes every child (StatefulSets, Deployments, Services) of shards `>= from`.
/// Background propagation: the garbage collector removes their pods.
async fn delete_shards_from(l: &LayoutRef<'_>, from: i32, apis: &Apis) -> Result<()> {
    let lp = ListParams::default().labels(&builders::children_selector(&l.name));
    let dp = DeleteParams::background();
    let stale = |shard: Option<i32>| shard.is_some_and(|s| s >= from);
    for o in apis.statefulsets.list(&lp).await?.items {
        if stale(status::shard_of(&o)) {
            ignore_gone(apis.statefulsets.delete(&o.name_any(), &dp).await.map(|_| ()))?;
        }
    }
    for o in apis.deployments.list(&lp).await?.items {
        if stale(status::shard_of(&o)) {
            ignore_gone(apis.deployments.delete(&o.name_any(), &dp).await.map(|_| ()))?;
        }
    }
    for o in apis.services.list(&lp).await?.items {
        if stale(status::shard_of(&o)) {
            ignore_gone(apis.services.delete(&o.name_any(), &dp).await.map(|_| ()))?;
        }
    }
    Ok(())
}

fn ignore_gone(r: Result<(), kube::Error>) -> Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

/// Events for shards that appeared, disappeared or changed server count. Pure.
pub fn shard_events(
    before: &BTreeMap<i32, ShardObservation>,
    after: &BTreeMap<i32, ShardObservation>,
    applied: bool,
) -> Vec<Event> {
    if !applied {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, a) in after {
        match before.get(i) {
            None => out.push(event(
                EventType::Normal,
                "ShardCreated",
                "CreateShard",
                format!(
                    "shard {i}: replicant, {} server(s) and gateway created",
                    a.servers_desired
                ),
            )),
            Some(b) if b.servers_desired != a.servers_desired => out.push(event(
                EventType::Normal,
                "ServersScaled",
                "ScaleServers",
                format!("shard {i}: game servers {} -> {}", b.servers_desired, a.servers_desired),
            )),
            Some(_) => {}
        }
    }
    for i in before.keys().filter(|i| !after.contains_key(i)) {
        out.push(event(
            EventType::Normal,
            "ShardDeleted",
            "DeleteShard",
            format!("shard {i}: beyond spec.shards, its objects were deleted"),
        ));
    }
    out
}

/// Adds this operator's finalizer by server-side apply of `metadata.finalizers` alone:
/// the list is a set, so only our entry is owned by our field manager and nobody else's
/// finalizers or fields are touched.
async fn add_finalizer(layout: &ServerLayout, api: &Api<ServerLayout>) -> Result<()> {
    let patch = json!({
        "apiVersion": "starmesh.dev/v1alpha1",
        "kind": "ServerLayout",
        "metadata": {"name": layout.name_any(), "finalizers": [FINALIZER]},
    });
    api.patch(&layout.name_any(), &apply_params(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Removes our finalizer with a merge patch of the remaining list, guarded by the
/// resourceVersion it was computed from (a concurrent change fails with 409 and is
/// retried). Not server-side apply: on Kubernetes 1.20 an update through the scale
/// subresource (`kubectl scale`) makes its manager co-own the whole object, so applying
/// an empty list would leave the entry in place.
async fn remove_finalizer(layout: &ServerLayout, api: &Api<ServerLayout>) -> Result<()> {
    let remaining: Vec<&String> = layout.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    let patch = json!({
        "metadata": {"finalizers": remaining, "resourceVersion": layout.resource_version()}
    });
    match api.patch(&layout.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The drain step of a deleted layout: first each shard's replicant is asked (Admin
/// `Drain`) to stop granting cells to every game server of the shard, highest ordinal
/// first, so the servers stop simulating while the replicant still holds and persists
/// every entity; then the game servers are scaled to zero so they stop cleanly
/// (SIGTERM, grace period) before garbage collection removes the rest, and the finalizer
/// is released. Servers that do not stop are reported after [`DRAIN_REPORT_AFTER`]
/// (condition and Warning Event) and waited for up to [`DRAIN_GIVE_UP_AFTER`], or until
/// the user sets [`FORCE_DELETE_ANNOTATION`] (see [`drain_verdict`]).
async fn drain(layout: &ServerLayout, apis: &Apis, ctx: &Ctx) -> Result<Action> {
    if !layout.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = layout.name_any();
    let (sts, _) = apis.observe(&name).await?;
    let servers: Vec<&StatefulSet> = sts
        .iter()
        .filter(|s| s.labels().get(builders::LABEL_COMPONENT).map(String::as_str) == Some("server"))
        .collect();
    let lref = LayoutRef::new(layout, &ctx.node_image)
        .ok_or(Error::MissingObjectKey("metadata.uid"))?
        .with_mesh_tls(ctx.mesh_tls_secret.clone());
    let mut remaining = 0;
    let mut drained = Vec::new();
    for s in &servers {
        if s.spec.replicas.unwrap_or(0) != 0
            && let Some(shard) = status::shard_of(*s)
        {
            if ctx.player_counts {
                let n = s.spec.replicas.unwrap_or(0);
                drained.push(
                    drain_shard_servers(&apis.services, &name, shard, &s.name_any(), n).await,
                );
            }
            // The same apply as always, with zero replicas: one field manager owns it all.
            apply(&apis.statefulsets, &builders::servers_statefulset(&lref, shard, 0)).await?;
        }
        remaining += s.status.as_ref().map(|st| st.replicas).unwrap_or(0);
    }
    let deleted_at =
        layout.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    let waited = Timestamp::now().duration_since(deleted_at);
    let waited = Duration::from_secs(u64::try_from(waited.as_secs()).unwrap_or(0));
    let force = layout
        .annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let reference = layout.object_ref(&());
    let forced = match drain_verdict(remaining, waited, force) {
        DrainVerdict::Wait => {
            tracing::info!(layout = %name, remaining, "draining: waiting for game servers to stop");
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        DrainVerdict::Stuck => {
            report_drain_stuck(layout, apis, ctx, remaining, waited).await;
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        DrainVerdict::Release { forced } => forced,
    };
    let note = if forced {
        format!(
            "{remaining} game server pod(s) still running after {}s of draining ({}); \
             deleting anyway (their entities are persisted by the replicant)",
            waited.as_secs(),
            if force {
                format!("annotation {FORCE_DELETE_ANNOTATION}")
            } else {
                format!("limit {}s", DRAIN_GIVE_UP_AFTER.as_secs())
            }
        )
    } else {
        format!(
            "{} shard(s) drained: game servers stopped; garbage collection removes the rest",
            servers.len()
        )
    };
    if !drained.is_empty() {
        tracing::info!(layout = %name, "drain through the replicants: {}", drained.join("; "));
    }
    let (kind, reason) = if forced {
        (EventType::Warning, "DrainAbandoned")
    } else {
        (EventType::Normal, "Drained")
    };
    // Best effort: the layout is going away, a lost Event must not block deletion.
    if let Err(e) = ctx.recorder.publish(&event(kind, reason, "Drain", note), &reference).await {
        tracing::warn!(layout = %name, error = %e, "could not publish the Drained event");
    }
    remove_finalizer(layout, &apis.layouts).await?;
    tracing::info!(layout = %name, "drained; finalizer removed");
    Ok(Action::await_change())
}

/// A deletion's drain is overdue: `Degraded=True` reason `DrainStuck` on the layout and,
/// when that is new, one Warning Event saying how to go on. Best effort (logged): the
/// wait goes on either way.
async fn report_drain_stuck(
    layout: &ServerLayout,
    apis: &Apis,
    ctx: &Ctx,
    remaining: i32,
    waited: Duration,
) {
    let name = layout.name_any();
    let previous = layout.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    if conditions::find(&previous, conditions::DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == "DrainStuck")
    {
        return;
    }
    let message = format!(
        "deleted, but {remaining} game server pod(s) still running after {}s: waiting for \
         them to stop (up to {}s in all; `kubectl annotate serverlayout/{name} {FORCE_DELETE_ANNOTATION}=true` \
         releases it now)",
        waited.as_secs(),
        DRAIN_GIVE_UP_AFTER.as_secs()
    );
    let d = conditions::Desired::new(conditions::DEGRADED, true, "DrainStuck", message.clone());
    let now = Time(Timestamp::now());
    let stuck =
        conditions::merge(&previous, std::slice::from_ref(&d), layout.metadata.generation, &now);
    let mut next: Vec<_> =
        previous.iter().filter(|c| c.type_ != conditions::DEGRADED).cloned().collect();
    next.extend(stuck);
    // A merge patch of the list alone: the layout is going away, nothing else of its
    // status changes any more.
    let patch = json!({"status": {"conditions": next}});
    if let Err(e) =
        apis.layouts.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await
    {
        tracing::warn!(layout = %name, error = %e, "could not report the stuck drain in the status");
    }
    let ev = event(EventType::Warning, "DrainStuck", "Drain", message);
    if let Err(e) = ctx.recorder.publish(&ev, &layout.object_ref(&())).await {
        tracing::warn!(layout = %name, error = %e, "could not publish the DrainStuck event");
    }
}

/// Asks shard `shard`'s replicant to drain its `n` game servers, highest ordinal first.
/// Returns what happened, for the log (a replicant that cannot be reached is reported,
/// not waited for: the layout is being deleted and the replicant persists anyway).
async fn drain_shard_servers(
    services: &Api<Service>,
    layout: &str,
    shard: i32,
    statefulset: &str,
    n: i32,
) -> String {
    let addr = match autoscaler::replicant_service(services, layout, shard).await {
        Ok(Some(svc)) => svc
            .spec
            .and_then(|s| s.cluster_ip)
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .zip(u16::try_from(builders::REPLICANT_GRPC_PORT).ok())
            .map(|(ip, port)| std::net::SocketAddr::new(ip, port)),
        _ => None,
    };
    let Some(addr) = addr else { return format!("shard {shard}: no replicant Service") };
    let mut client = match admin::connect(addr).await {
        Ok(c) => c,
        Err(e) => return format!("shard {shard}: {e}"),
    };
    let mut out = Vec::new();
    for k in (0..n).rev() {
        let server = autoscaler::server_name(statefulset, k);
        match admin::drain(&mut client, &server).await {
            Ok(left) => out.push(format!("{server} ({left} cell(s) left)")),
            Err(e) => out.push(e),
        }
    }
    format!("shard {shard}: {}", out.join(", "))
}

pub fn error_policy(_layout: Arc<ServerLayout>, error: &Error, ctx: Ctx) -> Action {
    tracing::warn!(%error, "ServerLayout reconcile failed");
    ctx.metrics.reconcile_failure(RESOURCE, &error.metric_label());
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(i: i32, servers: i32) -> (i32, ShardObservation) {
        (i, ShardObservation { index: i, servers_desired: servers, ..Default::default() })
    }

    #[test]
    fn a_deletion_waits_reports_then_gives_up_or_is_forced() {
        let s = Duration::from_secs;
        assert_eq!(drain_verdict(0, s(0), false), DrainVerdict::Release { forced: false });
        assert_eq!(drain_verdict(0, s(9999), true), DrainVerdict::Release { forced: false });
        assert_eq!(drain_verdict(2, s(10), false), DrainVerdict::Wait);
        assert_eq!(drain_verdict(2, DRAIN_REPORT_AFTER, false), DrainVerdict::Stuck);
        assert_eq!(drain_verdict(2, s(599), false), DrainVerdict::Stuck, "reported, not forced");
        assert_eq!(
            drain_verdict(2, DRAIN_GIVE_UP_AFTER, false),
            DrainVerdict::Release { forced: true }
        );
        assert_eq!(drain_verdict(1, s(1), true), DrainVerdict::Release { forced: true });
    }

    #[test]
    fn events_for_created_scaled_deleted_shards() {
        let before = BTreeMap::from([obs(0, 3), obs(1, 3), obs(2, 3)]);
        let after = BTreeMap::from([obs(0, 3), obs(1, 4), obs(3, 4)]);
        let reasons: Vec<String> =
            shard_events(&before, &after, true).into_iter().map(|e| e.reason).collect();
        assert_eq!(reasons, ["ServersScaled", "ShardCreated", "ShardDeleted"]);
        assert!(shard_events(&before, &before, true).is_empty());
        assert!(shard_events(&BTreeMap::new(), &after, false).is_empty());
    }
}
