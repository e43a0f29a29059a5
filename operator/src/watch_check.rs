//! Is a controller's watch cache deaf? A pure comparison of what a consistent LIST
//! (read from etcd, not the API server's watch cache) returns with what the controller's
//! reflector store holds, repeated every check period.
//!
//! Why: after a kube-apiserver restart a new ServerLayout once went unseen for > 120 s
//! (e2e/tests/chaos.rs). The cause found was kube-runtime's trigger backoff (fixed in the
//! operator's main.rs, `trigger_backoff`); this check is the safety net for any other way a
//! store stops following the API server. kube-runtime cannot reconcile an object that is
//! not in its store, so requeues do not help; only a fresh watcher (a re-list) does. The
//! operator restarts its controllers when [`persistent`] finds a lag.
//!
//! A single disagreement is normal (an event in flight). The same disagreement in two
//! consecutive checks means the store missed a change for at least one whole period:
//! the object did not change in between (its listed resourceVersion is the same) and
//! the store still does not show it.

use std::collections::{BTreeMap, BTreeSet};

/// uid → resourceVersion of every object in a list or a store.
pub type Versions = BTreeMap<String, String>;

/// One object the store and the list disagree on: (uid, listed version, stored version);
/// `None` where the object is absent.
pub type Disagreement = (String, Option<String>, Option<String>);

/// Every object whose stored version differs from the listed one. `listed` must be read
/// BEFORE `stored` is snapshotted, so an object created or changed in between shows up
/// in the store ahead of the list (a disagreement that the next check resolves), never
/// the other way round.
pub fn disagreements(listed: &Versions, stored: &Versions) -> BTreeSet<Disagreement> {
    let uids: BTreeSet<&String> = listed.keys().chain(stored.keys()).collect();
    uids.into_iter()
        .filter_map(|uid| {
            let l = listed.get(uid);
            let s = stored.get(uid);
            (l != s).then(|| (uid.clone(), l.cloned(), s.cloned()))
        })
        .collect()
}

/// The disagreements present, identically, in both the previous and the current check:
/// the store has lagged behind an unchanged object for a whole check period.
pub fn persistent(
    previous: &BTreeSet<Disagreement>,
    current: &BTreeSet<Disagreement>,
) -> BTreeSet<Disagreement> {
    previous.intersection(current).cloned().collect()
}

/// Exponential backoff from `min`, doubling up to `max`; `reset` (kube-runtime calls it on
/// every item that is not an error) starts again from `min`. See `trigger_backoff` in the
/// operator's main.rs for why the cap must be short.
#[derive(Debug, Clone)]
pub struct CappedBackoff {
    min: std::time::Duration,
    max: std::time::Duration,
    next: std::time::Duration,
}

impl CappedBackoff {
    pub fn new(min: std::time::Duration, max: std::time::Duration) -> Self {
        Self { min, max: max.max(min), next: min }
    }
}

impl Iterator for CappedBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let ms = std::time::Duration::from_millis;
        let mut b = CappedBackoff::new(ms(250), ms(2000));
        let first: Vec<_> = b.by_ref().take(6).collect();
        assert_eq!(first, [ms(250), ms(500), ms(1000), ms(2000), ms(2000), ms(2000)]);
        b.reset();
        assert_eq!(b.next(), Some(ms(250)));
    }

    fn v(pairs: &[(&str, &str)]) -> Versions {
        pairs.iter().map(|(u, r)| (u.to_string(), r.to_string())).collect()
    }

    #[test]
    fn an_up_to_date_store_agrees() {
        let listed = v(&[("a", "10"), ("b", "12")]);
        assert!(disagreements(&listed, &listed.clone()).is_empty());
    }

    #[test]
    fn a_new_object_missing_from_the_store_for_a_whole_period_is_persistent() {
        let listed = v(&[("a", "10"), ("new", "20")]);
        let stored = v(&[("a", "10")]);
        let first = disagreements(&listed, &stored);
        assert_eq!(first, BTreeSet::from([("new".to_string(), Some("20".to_string()), None)]));
        let second = disagreements(&listed, &stored);
        assert_eq!(persistent(&first, &second), first);
    }

    #[test]
    fn an_event_in_flight_is_not_persistent() {
        // Check 1: the store has not yet seen "new"; check 2: it has.
        let listed = v(&[("a", "10"), ("new", "20")]);
        let first = disagreements(&listed, &v(&[("a", "10")]));
        let second = disagreements(&listed, &listed);
        assert!(persistent(&first, &second).is_empty());
    }

    #[test]
    fn an_object_changing_every_period_is_not_persistent() {
        // The store is one version behind at each check, but catches up each time.
        let first = disagreements(&v(&[("a", "11")]), &v(&[("a", "10")]));
        let second = disagreements(&v(&[("a", "12")]), &v(&[("a", "11")]));
        assert_eq!(first.len(), 1);
        assert!(persistent(&first, &second).is_empty());
    }

    #[test]
    fn a_change_after_the_list_seen_by_the_store_first_is_not_persistent() {
        // Listed at 10, modified to 11 before the store snapshot; next list shows 11.
        let first = disagreements(&v(&[("a", "10")]), &v(&[("a", "11")]));
        let second = disagreements(&v(&[("a", "11")]), &v(&[("a", "11")]));
        assert_eq!(first.len(), 1);
        assert!(persistent(&first, &second).is_empty());
    }

    #[test]
    fn a_stale_update_or_a_missed_delete_is_persistent() {
        let listed = v(&[("a", "15")]);
        let stored = v(&[("a", "10"), ("gone", "7")]);
        let first = disagreements(&listed, &stored);
        assert_eq!(
            first,
            BTreeSet::from([
                ("a".to_string(), Some("15".to_string()), Some("10".to_string())),
                ("gone".to_string(), None, Some("7".to_string())),
            ])
        );
        assert_eq!(persistent(&first, &disagreements(&listed, &stored)), first);
    }
}
