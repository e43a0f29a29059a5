//! What a ServerLayout's status says, from what the reconciler observed. Pure.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::apps::v1::{Deployment, StatefulSet},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;
use starmesh_api::{ServerLayoutSpec, ServerLayoutStatus, ShardStatus};

use crate::{
    builders::{self, LABEL_COMPONENT, LABEL_SHARD, Role},
    checks::Invalid,
    conditions::{self, DEGRADED, Desired, PROGRESSING, READY, VALID},
};

/// The observed state of one shard's workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardObservation {
    pub index: i32,
    pub replicant_exists: bool,
    pub replicant_ready: bool,
    pub servers_desired: i32,
    pub servers_ready: i32,
    pub gateway_desired: i32,
    pub gateway_available: i32,
}

impl ShardObservation {
    pub fn ready(&self) -> bool {
        self.replicant_ready
            && self.servers_ready >= self.servers_desired
            && self.gateway_desired > 0
            && self.gateway_available >= self.gateway_desired
    }

    fn describe(&self) -> String {
        format!(
            "shard {}: replicant {}, servers {}/{} ready, gateway {}/{} available",
            self.index,
            if self.replicant_ready { "ready" } else { "not ready" },
            self.servers_ready,
            self.servers_desired,
            self.gateway_available,
            self.gateway_desired,
        )
    }
}

/// The shard a child belongs to, from its `starmesh.dev/shard` label.
pub fn shard_of<K: ResourceExt>(obj: &K) -> Option<i32> {
    obj.labels().get(LABEL_SHARD)?.parse().ok()
}

fn role_of<K: ResourceExt>(obj: &K) -> Option<&str> {
    obj.labels().get(LABEL_COMPONENT).map(String::as_str)
}

/// Groups a layout's StatefulSets and Deployments by shard.
pub fn observe(
    statefulsets: &[StatefulSet],
    deployments: &[Deployment],
) -> BTreeMap<i32, ShardObservation> {
    let mut shards: BTreeMap<i32, ShardObservation> = BTreeMap::new();
    let entry = |shards: &mut BTreeMap<i32, ShardObservation>, i: i32| {
        shards
            .entry(i)
            .or_insert_with(|| ShardObservation { index: i, ..Default::default() })
            .clone()
    };
    for sts in statefulsets {
        let Some(i) = shard_of(sts) else { continue };
        let mut o = entry(&mut shards, i);
        let desired = sts.spec.replicas.unwrap_or(1);
        let ready = sts.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        match role_of(sts) {
            Some(r) if r == Role::Replicant.as_str() => {
                o.replicant_exists = true;
                o.replicant_ready = ready >= 1;
            }
            Some(r) if r == Role::Server.as_str() => {
                o.servers_desired = desired;
                o.servers_ready = ready;
            }
            _ => continue,
        }
        shards.insert(i, o);
    }
    for d in deployments {
        let Some(i) = shard_of(d) else { continue };
        if role_of(d) != Some(Role::Gateway.as_str()) {
            continue;
        }
        let mut o = entry(&mut shards, i);
        o.gateway_desired = d.spec.replicas.unwrap_or(1);
        o.gateway_available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        shards.insert(i, o);
    }
    shards
}

/// Everything the status is computed from.
pub struct StatusInput<'a> {
    pub spec: &'a ServerLayoutSpec,
    pub name: &'a str,
    pub generation: Option<i64>,
    pub previous: &'a [Condition],
    /// `Err` when the spec (or its system) is invalid.
    pub verdict: &'a Result<(), Invalid>,
    /// The shards that exist now, after this reconcile's applies and deletions.
    pub shards: &'a BTreeMap<i32, ShardObservation>,
    /// A failure applying children this time (the message), if any.
    pub apply_error: Option<&'a str>,
    /// Players per territory of each shard whose replicant could be read (see
    /// `players.rs`); a shard missing here counts 0.
    pub players: &'a BTreeMap<i32, BTreeMap<String, i64>>,
    pub now: &'a Time,
}

/// The full status to apply. Player counts come from `input.players`: per shard the sum
/// over its territories, per territory the sum over shards, and the total.
pub fn layout_status(input: &StatusInput<'_>) -> ServerLayoutStatus {
    let shards: Vec<&ShardObservation> = input.shards.values().collect();
    let existing = i32::try_from(shards.len()).unwrap_or(i32::MAX);
    let ready_shards =
        i32::try_from(shards.iter().filter(|s| s.ready()).count()).unwrap_or(i32::MAX);
    let servers: i32 = shards.iter().map(|s| s.servers_desired).sum();

    let desired = desired_conditions(input, existing, ready_shards);
    let shard_players = |i: i32| -> i64 {
        input
            .players
            .get(&i)
            .map(|t| t.values().fold(0i64, |a, v| a.saturating_add(*v)))
            .unwrap_or(0)
    };
    let players = shards.iter().fold(0i64, |a, s| a.saturating_add(shard_players(s.index)));
    let mut territories = builders::territory_owners(input.spec);
    for t in &mut territories {
        t.players = shards
            .iter()
            .filter_map(|s| input.players.get(&s.index)?.get(&t.name))
            .fold(0i64, |a, v| a.saturating_add(*v));
    }
    ServerLayoutStatus {
        observed_generation: input.generation,
        conditions: conditions::merge(input.previous, &desired, input.generation, input.now),
        shards: existing,
        ready_shards,
        servers,
        players,
        selector: Some(builders::scale_selector(input.name)),
        shard_statuses: shards
            .iter()
            .map(|s| ShardStatus {
                index: s.index,
                replicant_ready: s.replicant_ready,
                ready_servers: s.servers_ready,
                servers: s.servers_desired,
                gateway_ready: s.gateway_desired > 0 && s.gateway_available >= s.gateway_desired,
                players: shard_players(s.index),
                ..Default::default()
            })
            .collect(),
        territories,
        ..Default::default()
    }
}

/// What the autoscaler decided for the whole layout (shard autoscaling).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayoutScaling {
    pub draining_shard: Option<i32>,
    pub last_shard_scale_time: Option<String>,
    pub memory: Option<starmesh_api::autoscale::ShardMemory>,
}

/// Adds the autoscaler's state to a status computed by [`layout_status`]: per shard the
/// cells, wanted servers, drains and memory; for the layout the draining shard. A drain
/// overdue (`stuck`) makes `Degraded` True with reason `DrainStuck`, unless something
/// worse already made it True. Pure.
pub fn with_scaling(
    mut status: ServerLayoutStatus,
    shards: &BTreeMap<i32, crate::autoscaler::ShardScaling>,
    layout: &LayoutScaling,
    stuck: &[String],
    previous: &[Condition],
    now: &Time,
) -> ServerLayoutStatus {
    for s in &mut status.shard_statuses {
        let Some(a) = shards.get(&s.index) else { continue };
        s.servers_wanted = a.servers_wanted;
        s.cells = a.cells.clone();
        s.partition_version = a.partition_version;
        s.last_scale_time = a.last_scale_time.clone();
        s.draining_servers = a.draining_servers.clone();
        s.autoscale = a.memory.clone();
    }
    status.draining_shard = layout.draining_shard;
    status.last_shard_scale_time = layout.last_shard_scale_time.clone();
    status.shard_autoscale = layout.memory.clone();
    let degraded_already =
        conditions::find(&status.conditions, DEGRADED).is_some_and(|c| c.status == "True");
    if !stuck.is_empty() && !degraded_already {
        let d = Desired::new(DEGRADED, true, "DrainStuck", stuck.join("; "));
        let merged =
            conditions::merge(previous, std::slice::from_ref(&d), status.observed_generation, now);
        for c in &mut status.conditions {
            if c.type_ == DEGRADED
                && let Some(m) = merged.first()
            {
                *c = m.clone();
            }
        }
    }
    status
}

fn desired_conditions(input: &StatusInput<'_>, existing: i32, ready_shards: i32) -> Vec<Desired> {
    let not_ready: Vec<String> =
        input.shards.values().filter(|s| !s.ready()).map(ShardObservation::describe).collect();
    match input.verdict {
        Err(invalid) => {
            let degraded = if existing > 0 {
                Desired::new(
                    DEGRADED,
                    true,
                    "InvalidSpecKeptRunning",
                    format!(
                        "the spec is invalid ({}); the {existing} existing shard(s) keep running \
                         unchanged until it is fixed",
                        invalid.field
                    ),
                )
            } else {
                Desired::new(
                    DEGRADED,
                    false,
                    "NothingRunning",
                    "the spec is invalid; nothing was created",
                )
            };
            vec![
                Desired::new(VALID, false, invalid.reason.clone(), invalid.message.clone()),
                Desired::new(READY, false, invalid.reason.clone(), invalid.message.clone()),
                Desired::new(
                    PROGRESSING,
                    false,
                    "InvalidSpec",
                    "nothing is reconciled until the spec is fixed",
                ),
                degraded,
            ]
        }
        Ok(()) => {
            let valid =
                Desired::new(VALID, true, "Valid", "spec and its StarSystem passed validation");
            if let Some(err) = input.apply_error {
                return vec![
                    valid,
                    Desired::new(READY, false, "ApplyFailed", err),
                    Desired::new(PROGRESSING, false, "ApplyFailed", err),
                    Desired::new(DEGRADED, true, "ApplyFailed", err),
                ];
            }
            let healthy =
                Desired::new(DEGRADED, false, "AsExpected", "every applied object was accepted");
            if existing == 0 {
                return vec![
                    valid,
                    Desired::new(READY, true, "ScaledToZero", "spec.shards is 0: nothing to run"),
                    Desired::new(
                        PROGRESSING,
                        false,
                        "ScaledToZero",
                        "spec.shards is 0: nothing to roll out",
                    ),
                    healthy,
                ];
            }
            if ready_shards == existing {
                vec![
                    valid,
                    Desired::new(
                        READY,
                        true,
                        "AllShardsReady",
                        format!("{ready_shards}/{existing} shards ready"),
                    ),
                    Desired::new(
                        PROGRESSING,
                        false,
                        "AllShardsReady",
                        "every shard is rolled out and ready",
                    ),
                    healthy,
                ]
            } else {
                let message =
                    format!("{ready_shards}/{existing} shards ready; {}", not_ready.join("; "));
                vec![
                    valid,
                    Desired::new(READY, false, "ShardsNotReady", message.clone()),
                    Desired::new(PROGRESSING, true, "ShardsStarting", message),
                    healthy,
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::{self, LayoutRef, tests::*};
    use k8s_openapi::{api::apps::v1::StatefulSetStatus, jiff::Timestamp};

    fn now() -> Time {
        Time(Timestamp::from_second(1000).expect("time"))
    }

    fn children(ready: bool) -> (Vec<StatefulSet>, Vec<Deployment>) {
        let l = layout(layout_spec());
        let r = LayoutRef::new(&l, "i").expect("ref");
        let mut rep = builders::replicant_statefulset(&r, 0);
        let mut srv = builders::servers_statefulset(&r, 0, 6);
        let mut gw = builders::gateway_deployment(&r, 0);
        if ready {
            rep.status = Some(StatefulSetStatus { ready_replicas: Some(1), ..Default::default() });
            srv.status = Some(StatefulSetStatus { ready_replicas: Some(6), ..Default::default() });
            gw.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                available_replicas: Some(1),
                ..Default::default()
            });
        }
        (vec![rep, srv], vec![gw])
    }

    fn cond<'a>(s: &'a ServerLayoutStatus, t: &str) -> &'a Condition {
        conditions::find(&s.conditions, t).expect("condition present")
    }

    #[test]
    fn pending_pods_mean_not_ready_and_progressing() {
        let (sts, dep) = children(false);
        let shards = observe(&sts, &dep);
        let spec = layout_spec();
        let s = layout_status(&StatusInput {
            spec: &spec,
            name: "stanton",
            generation: Some(2),
            previous: &[],
            verdict: &Ok(()),
            shards: &shards,
            apply_error: None,
            players: &BTreeMap::new(),
            now: &now(),
        });
        assert_eq!((s.shards, s.ready_shards, s.servers, s.players), (1, 0, 6, 0));
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "ShardsNotReady");
        assert!(cond(&s, READY).message.contains("servers 0/6"));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, VALID).status, "True");
        assert_eq!(s.territories.len(), 12);
        assert_eq!(
            s.selector.as_deref(),
            Some("starmesh.dev/layout=stanton,app.kubernetes.io/component=replicant")
        );
    }

    #[test]
    fn player_counts_per_shard_territory_and_total() {
        let (sts, dep) = children(true);
        let shards = observe(&sts, &dep);
        let spec = layout_spec();
        let territory = builders::territory_owners(&spec)[0].name.clone();
        let players = BTreeMap::from([
            (0, BTreeMap::from([(territory.clone(), 7), ("deep-space".to_string(), 3)])),
            // A shard that does not exist is not counted.
            (5, BTreeMap::from([(territory.clone(), 100)])),
        ]);
        let s = layout_status(&StatusInput {
            spec: &spec,
            name: "stanton",
            generation: Some(2),
            previous: &[],
            verdict: &Ok(()),
            shards: &shards,
            apply_error: None,
            players: &players,
            now: &now(),
        });
        assert_eq!(s.players, 10);
        assert_eq!(s.shard_statuses[0].players, 10);
        let t = s.territories.iter().find(|t| t.name == territory).expect("territory");
        assert_eq!(t.players, 7);
    }

    #[test]
    fn ready_pods_mean_ready() {
        let (sts, dep) = children(true);
        let shards = observe(&sts, &dep);
        let spec = layout_spec();
        let s = layout_status(&StatusInput {
            spec: &spec,
            name: "stanton",
            generation: Some(2),
            previous: &[],
            verdict: &Ok(()),
            shards: &shards,
            apply_error: None,
            players: &BTreeMap::new(),
            now: &now(),
        });
        assert_eq!(s.ready_shards, 1);
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert!(s.shard_statuses[0].gateway_ready);
    }

    #[test]
    fn invalid_with_running_shards_is_degraded() {
        let (sts, dep) = children(true);
        let shards = observe(&sts, &dep);
        let spec = layout_spec();
        let invalid = Err(Invalid {
            reason: "TerritoryUnowned".into(),
            field: "spec.servers".into(),
            message: "spec.servers: territory crusader is owned by no server".into(),
        });
        let s = layout_status(&StatusInput {
            spec: &spec,
            name: "stanton",
            generation: Some(3),
            previous: &[],
            verdict: &invalid,
            shards: &shards,
            apply_error: None,
            players: &BTreeMap::new(),
            now: &now(),
        });
        assert_eq!(cond(&s, VALID).reason, "TerritoryUnowned");
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(s.shards, 1);
        let none = BTreeMap::new();
        let s = layout_status(&StatusInput {
            shards: &none,
            ..StatusInput { ..input_like(&spec, &invalid) }
        });
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(s.shards, 0);
    }

    fn input_like<'a>(
        spec: &'a ServerLayoutSpec,
        verdict: &'a Result<(), Invalid>,
    ) -> StatusInput<'a> {
        static EMPTY: BTreeMap<i32, ShardObservation> = BTreeMap::new();
        static NO_PLAYERS: BTreeMap<i32, BTreeMap<String, i64>> = BTreeMap::new();
        static NOW: std::sync::LazyLock<Time> = std::sync::LazyLock::new(now);
        StatusInput {
            spec,
            name: "stanton",
            generation: Some(1),
            previous: &[],
            verdict,
            shards: &EMPTY,
            apply_error: None,
            players: &NO_PLAYERS,
            now: &NOW,
        }
    }

    #[test]
    fn zero_shards_is_ready_and_apply_errors_degrade() {
        let spec = layout_spec();
        let ok = Ok(());
        let s = layout_status(&input_like(&spec, &ok));
        assert_eq!(cond(&s, READY).reason, "ScaledToZero");
        let s = layout_status(&StatusInput { apply_error: Some("boom"), ..input_like(&spec, &ok) });
        assert_eq!(cond(&s, DEGRADED).reason, "ApplyFailed");
        assert_eq!(cond(&s, READY).message, "boom");
    }

    #[test]
    fn scaling_state_goes_into_the_shards_and_a_stuck_drain_degrades() {
        let spec = layout_spec();
        let ok = Ok(());
        let shards = BTreeMap::from([(0, ShardObservation { index: 0, ..Default::default() })]);
        let base = layout_status(&StatusInput { shards: &shards, ..input_like(&spec, &ok) });
        assert_eq!(cond(&base, DEGRADED).status, "False");
        let scaling = BTreeMap::from([(
            0,
            crate::autoscaler::ShardScaling {
                servers_wanted: Some(3),
                cells: vec![starmesh_api::CellStatus {
                    cell: "hurston/0".into(),
                    server: "s-0".into(),
                    players: 9,
                }],
                partition_version: Some(2),
                ..Default::default()
            },
        )]);
        let layout = LayoutScaling { draining_shard: Some(1), ..Default::default() };
        let s = with_scaling(base.clone(), &scaling, &layout, &[], &[], &now());
        assert_eq!(s.shard_statuses[0].servers_wanted, Some(3));
        assert_eq!(s.shard_statuses[0].cells[0].cell, "hurston/0");
        assert_eq!(s.draining_shard, Some(1));
        assert_eq!(cond(&s, DEGRADED).status, "False");
        let stuck = ["shard 0: s-2 still draining".to_string()];
        let s = with_scaling(base, &scaling, &layout, &stuck, &[], &now());
        assert_eq!(
            (cond(&s, DEGRADED).status.as_str(), cond(&s, DEGRADED).reason.as_str()),
            ("True", "DrainStuck")
        );
        assert!(cond(&s, DEGRADED).message.contains("s-2"));
        // An invalid spec's Degraded is not masked.
        let bad =
            layout_status(&StatusInput { apply_error: Some("boom"), ..input_like(&spec, &ok) });
        let s = with_scaling(bad, &scaling, &layout, &stuck, &[], &now());
        assert_eq!(cond(&s, DEGRADED).reason, "ApplyFailed");
    }

    #[test]
    fn shard_label_parsing_ignores_foreign_objects() {
        let foreign = StatefulSet::default();
        assert_eq!(shard_of(&foreign), None);
        assert!(observe(&[foreign], &[]).is_empty());
    }
}
