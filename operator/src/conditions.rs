//! Status conditions following the Kubernetes API conventions: one entry per `type`,
//! `status` is "True"/"False", a CamelCase `reason`, a human `message`, the generation
//! they describe, and a `lastTransitionTime` that moves only when `status` flips.
//!
//! Pure: the caller passes "now", so the merge is unit-testable and a status computed
//! twice from the same observations is byte-identical (which keeps server-side apply of
//! the status a no-op and stops reconcile loops).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const VALID: &str = "Valid";
pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A condition as decided by a reconciler, before timestamps are settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Desired { type_, status, reason: reason.into(), message: message.into() }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// The conditions to write: `desired` in its order, each keeping the previous
/// `lastTransitionTime` when its status did not change, else stamped with `now`.
/// Conditions of other types found in `previous` are dropped: this controller owns the
/// whole list (it is atomic in the CRD schema).
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = status_str(d.status);
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_string(),
                status: status.to_string(),
                reason: d.reason.clone(),
                // k8s-openapi writes an empty required string as `null`, which the
                // CRD schema refuses; fall back to the reason. The API server also
                // caps messages at 32768 bytes.
                message: if d.message.is_empty() {
                    d.reason.clone()
                } else {
                    truncate(&d.message, 32_000)
                },
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present and "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Whether a condition's (status, reason, message) changed between two lists: the
/// signal for emitting an Event once instead of on every reconcile.
pub fn changed(previous: &[Condition], next: &[Condition], type_: &str) -> bool {
    let key =
        |c: Option<&Condition>| c.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    key(find(previous, type_)) != key(find(next, type_))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn new_conditions_get_now() {
        let out =
            merge(&[], &[Desired::new(READY, false, "ShardsNotReady", "0/1")], Some(3), &t(100));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, "False");
        assert_eq!(out[0].observed_generation, Some(3));
        assert_eq!(out[0].last_transition_time, t(100));
    }

    #[test]
    fn unchanged_status_keeps_transition_time_even_if_reason_changes() {
        let prev = merge(&[], &[Desired::new(READY, false, "A", "a")], Some(1), &t(100));
        let out = merge(&prev, &[Desired::new(READY, false, "B", "b")], Some(2), &t(200));
        assert_eq!(out[0].last_transition_time, t(100));
        assert_eq!(out[0].reason, "B");
        assert_eq!(out[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let prev = merge(&[], &[Desired::new(READY, false, "A", "a")], Some(1), &t(100));
        let out = merge(&prev, &[Desired::new(READY, true, "Ok", "")], Some(1), &t(200));
        assert_eq!(out[0].last_transition_time, t(200));
        assert_eq!(out[0].status, "True");
    }

    #[test]
    fn merge_is_idempotent() {
        let d = [Desired::new(VALID, true, "Valid", "ok"), Desired::new(READY, false, "X", "y")];
        let a = merge(&[], &d, Some(1), &t(100));
        let b = merge(&a, &d, Some(1), &t(500));
        assert_eq!(a, b);
    }

    #[test]
    fn changed_detects_reason_and_message() {
        let a = merge(&[], &[Desired::new(VALID, false, "A", "m")], None, &t(1));
        let b = merge(&a, &[Desired::new(VALID, false, "A", "m2")], None, &t(2));
        assert!(changed(&a, &b, VALID));
        assert!(!changed(&a, &a, VALID));
        assert!(changed(&[], &a, VALID));
        assert!(!is_true(&a, VALID));
    }

    #[test]
    fn empty_messages_fall_back_to_the_reason() {
        let out = merge(&[], &[Desired::new(READY, true, "AllGood", "")], None, &t(1));
        assert_eq!(out[0].message, "AllGood");
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(20_000);
        let out = merge(&[], &[Desired::new(VALID, false, "A", long)], None, &t(1));
        assert!(out[0].message.len() <= 32_010);
    }
}
