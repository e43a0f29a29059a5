//! StarSystem reconciler: validate, write status (Valid/Ready, counts), and tell the user
//! through Events when validity changes.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde_json::json;
use starmesh_api::{StarSystem, StarSystemStatus};

use crate::{
    Ctx, Error, Result,
    builders::FIELD_MANAGER,
    checks::{Invalid, check_star_system},
    conditions::{self, Desired, READY, VALID},
};

pub const RESOURCE: &str = "StarSystem";

/// The status of a system with this verdict. Pure.
pub fn system_status(
    system: &StarSystem,
    verdict: &Result<(), Invalid>,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    now: &Time,
) -> StarSystemStatus {
    let generation = system.metadata.generation;
    let desired = match verdict {
        Ok(()) => vec![
            Desired::new(VALID, true, "Valid", "locations and jump gates passed validation"),
            Desired::new(READY, true, "Valid", "usable by ServerLayouts"),
        ],
        Err(e) => vec![
            Desired::new(VALID, false, e.reason.clone(), e.message.clone()),
            Desired::new(READY, false, e.reason.clone(), e.message.clone()),
        ],
    };
    StarSystemStatus {
        observed_generation: generation,
        conditions: conditions::merge(previous, &desired, generation, now),
        locations: u32::try_from(system.spec.locations.len()).unwrap_or(u32::MAX),
        gates: u32::try_from(system.spec.jump_gates.len()).unwrap_or(u32::MAX),
    }
}

/// The Event to publish for a status change, if any: a Warning when it is (newly, or
/// differently) invalid, a Normal one when it becomes valid; nothing when unchanged.
pub fn validity_event(previous: &StarSystemStatus, next: &StarSystemStatus) -> Option<Event> {
    if !conditions::changed(&previous.conditions, &next.conditions, VALID) {
        return None;
    }
    let cond = conditions::find(&next.conditions, VALID)?;
    Some(if cond.status == "True" {
        Event {
            type_: EventType::Normal,
            reason: "Valid".into(),
            note: Some(format!("{} locations, {} jump gates", next.locations, next.gates)),
            action: "Validate".into(),
            secondary: None,
        }
    } else {
        Event {
            type_: EventType::Warning,
            reason: cond.reason.clone(),
            note: Some(cond.message.clone()),
            action: "Validate".into(),
            secondary: None,
        }
    })
}

pub async fn reconcile(system: Arc<StarSystem>, ctx: Ctx) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(RESOURCE);
    let ns = system.namespace().ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = system.name_any();
    let api: Api<StarSystem> = Api::namespaced(ctx.client.clone(), &ns);

    let verdict = check_star_system(&name, &system.spec);
    let previous = system.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let next = system_status(&system, &verdict, &previous.conditions, &now);

    if next != previous {
        let patch = json!({
            "apiVersion": "starmesh.dev/v1alpha1",
            "kind": "StarSystem",
            "status": next,
        });
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await?;
    }
    if let Some(event) = validity_event(&previous, &next) {
        ctx.recorder.publish(&event, &system.as_ref().object_ref(&())).await?;
    }
    tracing::info!(system = %name, namespace = %ns, valid = verdict.is_ok(), "reconciled StarSystem");
    // Nothing outside the object changes its validity: no periodic work needed beyond a
    // slow resync that heals a missed watch event.
    Ok(Action::requeue(Duration::from_secs(600)))
}

pub fn error_policy(_system: Arc<StarSystem>, error: &Error, ctx: Ctx) -> Action {
    tracing::warn!(%error, "StarSystem reconcile failed");
    ctx.metrics.reconcile_failure(RESOURCE, &error.metric_label());
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::tests::system_spec;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("time"))
    }

    #[test]
    fn valid_status_counts_and_events_once() {
        let mut sys = StarSystem::new("stanton", system_spec());
        sys.metadata.generation = Some(4);
        let s1 = system_status(&sys, &Ok(()), &[], &t(10));
        let spec = system_spec();
        assert_eq!(s1.locations as usize, spec.locations.len());
        assert_eq!(s1.gates as usize, spec.jump_gates.len());
        assert_eq!(s1.observed_generation, Some(4));
        assert!(conditions::is_true(&s1.conditions, VALID));
        assert!(conditions::is_true(&s1.conditions, READY));
        let ev = validity_event(&StarSystemStatus::default(), &s1).expect("first event");
        assert_eq!(ev.type_, EventType::Normal);
        // Same again: no new event, timestamps kept.
        let s2 = system_status(&sys, &Ok(()), &s1.conditions, &t(99));
        assert_eq!(s1, s2);
        assert!(validity_event(&s1, &s2).is_none());
    }

    #[test]
    fn invalid_is_a_warning_naming_the_field() {
        let sys = StarSystem::new("stanton", system_spec());
        let bad = Err(Invalid {
            reason: "ParentNotFound".into(),
            field: "spec.locations[1].parent".into(),
            message: "spec.locations[1].parent: no location \"x\"".into(),
        });
        let s = system_status(&sys, &bad, &[], &t(1));
        let c = conditions::find(&s.conditions, VALID).expect("valid cond");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ParentNotFound"));
        let ev = validity_event(&StarSystemStatus::default(), &s).expect("event");
        assert_eq!(ev.type_, EventType::Warning);
        assert!(ev.note.unwrap_or_default().contains("spec.locations[1].parent"));
    }
}
