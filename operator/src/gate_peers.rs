//! Where a layout's jump gates lead in the cluster: for each StarSystem its gates target,
//! the ServerLayout serving that system (same namespace) and its shards' Service cluster
//! IPs, for the mesh map ([`builders::mesh_map`]). The choice is [`pick_layout`] (pure);
//! [`resolve`] only reads.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, ResourceExt, api::ListParams};
use starmesh_api::{ServerLayout, StarSystem};

use crate::{
    Result,
    builders::{self, PeerLayout, ShardIps},
};

/// The StarSystems `system`'s gates lead to, other than itself, each once, sorted.
pub fn target_systems(system: &StarSystem) -> BTreeSet<String> {
    let own = system.name_any();
    system.spec.jump_gates.iter().map(|g| g.target.system.clone()).filter(|s| *s != own).collect()
}

/// The layout serving `system`: among the layouts that reference it and are not being
/// deleted, the first by name (several layouts of one system are unusual; the rule only
/// has to be the same in every reconcile).
pub fn pick_layout<'a>(system: &str, layouts: &'a [ServerLayout]) -> Option<&'a ServerLayout> {
    layouts
        .iter()
        .filter(|l| l.spec.system_ref == system && l.metadata.deletion_timestamp.is_none())
        .min_by_key(|l| l.name_any())
}

/// A usable cluster IP: allocated, not headless.
fn cluster_ip(s: &Service) -> Option<String> {
    let ip = s.spec.as_ref()?.cluster_ip.clone()?;
    (!ip.is_empty() && ip != "None").then_some(ip)
}

/// The peer layouts of `system`'s gates, and whether they are complete: every target
/// system has a layout whose every shard has both Services' cluster IPs. Incomplete (the
/// target not applied yet, or still being created) means "reconcile again soon".
pub async fn resolve(
    system: &StarSystem,
    layouts: &Api<ServerLayout>,
    services: &Api<Service>,
) -> Result<(Vec<PeerLayout>, bool)> {
    let targets = target_systems(system);
    if targets.is_empty() {
        return Ok((Vec::new(), true));
    }
    let all = layouts.list(&ListParams::default()).await?.items;
    let mut peers = Vec::new();
    let mut complete = true;
    for target in targets {
        let Some(l) = pick_layout(&target, &all) else {
            complete = false;
            continue;
        };
        let name = l.name_any();
        // One list of the layout's children (the operator's role has list, not get).
        let lp = ListParams::default().labels(&builders::children_selector(&name));
        let svcs = services.list(&lp).await?.items;
        let ip_of = |svc: String| svcs.iter().find(|s| s.name_any() == svc).and_then(cluster_ip);
        let mut shards = Vec::new();
        for i in 0..l.spec.shards.max(0) {
            let rep = ip_of(builders::replicant_name(&name, i));
            let gw = ip_of(builders::gateway_name(&name, i));
            match (rep, gw) {
                (Some(replicant), Some(gateway)) => {
                    shards.push(ShardIps { index: i, replicant, gateway })
                }
                _ => complete = false,
            }
        }
        complete &= !shards.is_empty();
        peers.push(PeerLayout {
            system: target,
            layout: name,
            gateway_port: l.spec.gateway.port,
            shards,
        });
    }
    Ok((peers, complete))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::tests::{layout_spec, system_spec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn layout(name: &str, system: &str) -> ServerLayout {
        let mut spec = layout_spec();
        spec.system_ref = system.into();
        ServerLayout::new(name, spec)
    }

    #[test]
    fn targets_are_the_other_systems_once() {
        let mut spec = system_spec();
        let mut gate = spec.jump_gates[0].clone();
        gate.name = "again".into();
        spec.jump_gates.push(gate.clone());
        gate.name = "loop".into();
        gate.target.system = "stanton".into();
        spec.jump_gates.push(gate);
        let s = StarSystem::new("stanton", spec.clone());
        let want: BTreeSet<String> = spec
            .jump_gates
            .iter()
            .map(|g| g.target.system.clone())
            .filter(|t| t != "stanton")
            .collect();
        assert!(!want.is_empty(), "the test system has gates to other systems");
        assert_eq!(target_systems(&s), want);
    }

    #[test]
    fn picks_the_first_live_layout_of_the_system_by_name() {
        let mut gone = layout("a-old", "pyro");
        gone.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let all = [layout("z", "pyro"), gone, layout("b", "pyro"), layout("a", "stanton")];
        assert_eq!(pick_layout("pyro", &all).map(|l| l.name_any()), Some("b".into()));
        assert_eq!(pick_layout("stanton", &all).map(|l| l.name_any()), Some("a".into()));
        assert!(pick_layout("nyx", &all).is_none());
    }
}
