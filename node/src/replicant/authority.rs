//! Who has authority over which territory, with fencing epochs. Pure: time
//! is passed in, changes are returned, nothing is sent from here.
//!
//! Epochs are `generation << 32 | counter`: the generation is persisted and
//! bumped at every replicant start, so an epoch handed out before a restart
//! can never equal one handed out after it (fencing survives restarts).
//!
//! A dynamic layout's cells are balanced by players (`set_balanced`): each
//! cell weighs its players + 1, and the cells are spread over the live,
//! non-draining servers when a server joins, on a drain and when the
//! partition changes (`repartition`), never on a tick, so load that merely
//! moves around does not move authority around with it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::model::{ServerName, TerritoryName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub owner: Option<ServerName>,
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Revoked { territory: TerritoryName, server: ServerName, epoch: u64 },
    Granted { territory: TerritoryName, server: ServerName, epoch: u64 },
}

/// Why a write is refused (fencing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// The write's epoch is not the territory's current epoch.
    StaleEpoch { current: u64 },
    /// The epoch is current but the sender is not the owner (should not happen
    /// with unique epochs; kept as a second, independent check). Also: the
    /// sender is the new owner, but the old one already wrote the entity in
    /// this tick (`World::apply_write`); its writes count from the next tick.
    NotOwner { current: u64 },
}

#[derive(Clone, Debug)]
struct Server {
    conn: u64,
    lease_until: Instant,
    draining: bool,
}

#[derive(Debug)]
pub struct Authority {
    grants: BTreeMap<TerritoryName, Grant>,
    static_owner: BTreeMap<TerritoryName, String>,
    servers: BTreeMap<ServerName, Server>,
    generation: u64,
    counter: u64,
    lease: Duration,
    /// Spread by players (dynamic layouts) rather than keep every live owner.
    balanced: bool,
    /// Players per territory, as last told (`set_players`).
    players: BTreeMap<TerritoryName, u64>,
}

impl Authority {
    pub fn new(
        territories: Vec<TerritoryName>,
        static_owner: BTreeMap<TerritoryName, String>,
        generation: u64,
        lease: Duration,
    ) -> Self {
        let grants =
            territories.into_iter().map(|t| (t, Grant { owner: None, epoch: 0 })).collect();
        Self {
            grants,
            static_owner,
            servers: BTreeMap::new(),
            generation,
            counter: 0,
            lease,
            balanced: false,
            players: BTreeMap::new(),
        }
    }

    /// Balance territories by players over the servers (a dynamic layout's cells).
    pub fn set_balanced(&mut self, on: bool) {
        self.balanced = on;
    }

    pub fn is_balanced(&self) -> bool {
        self.balanced
    }

    /// The player counts the next balancing weighs cells by.
    pub fn set_players(&mut self, counts: impl IntoIterator<Item = (TerritoryName, u64)>) {
        self.players = counts.into_iter().collect();
    }

    /// What a territory weighs when balancing: its players + 1 (so empty cells
    /// spread too), or 1 when not balancing by players.
    fn weight(&self, t: &str) -> u64 {
        if self.balanced { self.players.get(t).copied().unwrap_or(0) + 1 } else { 1 }
    }

    /// The partition changed: `removed` territories go (their owners are
    /// told), `added` ones appear with a fresh epoch, each first offered to
    /// the server given (a split's children start with the parent's owner,
    /// a merged parent with a child's), then everything is rebalanced.
    pub fn repartition(
        &mut self,
        removed: &[TerritoryName],
        added: &[(TerritoryName, Option<ServerName>)],
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for t in removed {
            if let Some(g) = self.grants.remove(t)
                && let Some(server) = g.owner
            {
                changes.push(Change::Revoked { territory: t.clone(), server, epoch: g.epoch });
            }
        }
        for (t, first) in added {
            let epoch = self.next_epoch();
            let owner = first.clone().filter(|s| self.eligible(s));
            if let Some(server) = &owner {
                changes.push(Change::Granted {
                    territory: t.clone(),
                    server: server.clone(),
                    epoch,
                });
            }
            self.grants.insert(t.clone(), Grant { owner, epoch });
        }
        changes.extend(self.rebalance());
        changes.extend(self.spread());
        compact(changes)
    }

    fn next_epoch(&mut self) -> u64 {
        self.counter += 1;
        (self.generation << 32) | self.counter
    }

    pub fn grant(&self, t: &str) -> Option<&Grant> {
        self.grants.get(t)
    }

    pub fn grants(&self) -> impl Iterator<Item = (&TerritoryName, &Grant)> {
        self.grants.iter()
    }

    pub fn owned_by<'a>(
        &'a self,
        server: &'a str,
    ) -> impl Iterator<Item = (&'a TerritoryName, &'a Grant)> + 'a {
        self.grants.iter().filter(move |(_, g)| g.owner.as_deref() == Some(server))
    }

    pub fn live_servers(&self) -> impl Iterator<Item = (&ServerName, bool)> {
        self.servers.iter().map(|(n, s)| (n, s.draining))
    }

    pub fn conn_of(&self, server: &str) -> Option<u64> {
        self.servers.get(server).map(|s| s.conn)
    }

    /// A server (re)connects on connection `conn`. A newer connection under the
    /// same name supersedes the old one: the old loses everything first (new
    /// epochs), so a lingering old stream is fenced off.
    pub fn connect(&mut self, server: ServerName, conn: u64, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.servers.contains_key(&server) {
            changes.extend(self.revoke_all(&server));
        }
        self.servers
            .insert(server, Server { conn, lease_until: now + self.lease, draining: false });
        changes.extend(self.rebalance());
        changes.extend(self.spread());
        compact(changes)
    }

    pub fn heartbeat(&mut self, server: &str, conn: u64, now: Instant) {
        if let Some(s) = self.servers.get_mut(server)
            && s.conn == conn
        {
            s.lease_until = now + self.lease;
        }
    }

    /// The stream of connection `conn` closed: its territories go to others at once.
    pub fn disconnect(&mut self, server: &str, conn: u64) -> Vec<Change> {
        match self.servers.get(server) {
            Some(s) if s.conn == conn => {}
            _ => return Vec::new(),
        }
        self.servers.remove(server);
        let mut changes = self.revoke_all(server);
        changes.extend(self.rebalance());
        changes
    }

    /// Servers whose lease ran out are removed (their territories reassigned).
    pub fn expire(&mut self, now: Instant) -> (Vec<(ServerName, u64)>, Vec<Change>) {
        let expired: Vec<(ServerName, u64)> = self
            .servers
            .iter()
            .filter(|(_, s)| s.lease_until <= now)
            .map(|(n, s)| (n.clone(), s.conn))
            .collect();
        let mut changes = Vec::new();
        for (n, _) in &expired {
            self.servers.remove(n);
            changes.extend(self.revoke_all(n));
        }
        if !expired.is_empty() {
            changes.extend(self.rebalance());
        }
        (expired, changes)
    }

    /// Moves every territory away from `server` and stops giving it new ones.
    /// Returns the changes and how many territories it still owns (non-zero
    /// only when there is no other live server to take them).
    pub fn drain(&mut self, server: &str) -> (Vec<Change>, usize) {
        let Some(s) = self.servers.get_mut(server) else {
            return (Vec::new(), 0);
        };
        s.draining = true;
        let mut changes = self.rebalance();
        changes.extend(self.spread());
        let remaining = self.owned_by(server).count();
        (compact(changes), remaining)
    }

    fn revoke_all(&mut self, server: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        for (t, g) in self.grants.iter_mut() {
            if g.owner.as_deref() == Some(server)
                && let Some(owner) = g.owner.take()
            {
                changes.push(Change::Revoked {
                    territory: t.clone(),
                    server: owner,
                    epoch: g.epoch,
                });
            }
        }
        changes
    }

    fn eligible(&self, s: &str) -> bool {
        self.servers.get(s).is_some_and(|s| !s.draining)
    }

    /// Brings every territory to its desired owner: its static owner if that
    /// is live, else its current owner if still eligible, else the least-loaded
    /// eligible server (ties by name, so the result is deterministic).
    fn rebalance(&mut self) -> Vec<Change> {
        let mut load: BTreeMap<ServerName, u64> =
            self.servers.iter().filter(|(_, s)| !s.draining).map(|(n, _)| (n.clone(), 0)).collect();
        for (t, g) in &self.grants {
            if let Some(o) = &g.owner
                && let Some(c) = load.get_mut(o)
            {
                *c += self.weight(t);
            }
        }
        let mut changes = Vec::new();
        let names: Vec<TerritoryName> = self.grants.keys().cloned().collect();
        for t in names {
            let current = self.grants.get(&t).and_then(|g| g.owner.clone());
            let desired: Option<ServerName> = match self.static_owner.get(&t) {
                Some(s) if self.eligible(s) => {
                    self.servers.get_key_value(s.as_str()).map(|(k, _)| k.clone())
                }
                _ => match &current {
                    Some(c) if self.eligible(c) => Some(c.clone()),
                    // No eligible server: a draining but live owner keeps it
                    // (drain reports what remains) rather than leaving it unowned;
                    // one without a live owner (it died while every other server
                    // drains) goes to the least-loaded draining one, for the same
                    // reason: unowned, its entities would not be simulated at all.
                    _ => load
                        .iter()
                        .min_by_key(|(n, c)| (**c, (*n).clone()))
                        .map(|(n, _)| n.clone())
                        .or_else(|| current.clone().filter(|c| self.servers.contains_key(c)))
                        .or_else(|| {
                            self.servers
                                .keys()
                                .min_by_key(|n| (self.owned_by(n).count(), (*n).clone()))
                                .cloned()
                        }),
                },
            };
            if desired == current {
                continue;
            }
            let epoch = self.next_epoch();
            let w = self.weight(&t);
            let Some(g) = self.grants.get_mut(&t) else { continue };
            if let Some(old) = g.owner.take() {
                if let Some(c) = load.get_mut(&old) {
                    *c = c.saturating_sub(w);
                }
                changes.push(Change::Revoked { territory: t.clone(), server: old, epoch: g.epoch });
            }
            g.epoch = epoch;
            if let Some(new) = desired {
                *load.entry(new.clone()).or_default() += w;
                g.owner = Some(new.clone());
                changes.push(Change::Granted { territory: t.clone(), server: new, epoch });
            }
        }
        changes
    }

    /// Balancing by players: moves territories from the most to the least
    /// loaded eligible server while a move narrows the gap (each move lowers
    /// the sum of squared loads, so it ends), picking the territory that
    /// brings the two closest. Static owners are never moved.
    fn spread(&mut self) -> Vec<Change> {
        if !self.balanced {
            return Vec::new();
        }
        let mut load: BTreeMap<ServerName, u64> =
            self.servers.iter().filter(|(_, s)| !s.draining).map(|(n, _)| (n.clone(), 0)).collect();
        if load.len() < 2 {
            return Vec::new();
        }
        let mut owner: BTreeMap<TerritoryName, ServerName> = BTreeMap::new();
        for (t, g) in &self.grants {
            if let Some(o) = &g.owner
                && let Some(c) = load.get_mut(o)
            {
                *c += self.weight(t);
                if !self.static_owner.contains_key(t) {
                    owner.insert(t.clone(), o.clone());
                }
            }
        }
        let mut moved: BTreeSet<TerritoryName> = BTreeSet::new();
        for _ in 0..=self.grants.len() * 2 {
            let Some((hi, hi_load)) = load
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(n, l)| (n.clone(), *l))
            else {
                break;
            };
            let Some((lo, lo_load)) = load
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
                .map(|(n, l)| (n.clone(), *l))
            else {
                break;
            };
            let gap = hi_load - lo_load;
            let best = owner
                .iter()
                .filter(|(_, o)| **o == hi)
                .map(|(t, _)| (t.clone(), self.weight(t)))
                .filter(|(_, w)| *w < gap)
                .min_by_key(|(t, w)| ((2 * w).abs_diff(gap), t.clone()));
            let Some((t, w)) = best else { break };
            owner.insert(t.clone(), lo.clone());
            load.insert(hi, hi_load - w);
            load.insert(lo, lo_load + w);
            moved.insert(t);
        }
        let mut changes = Vec::new();
        for t in moved {
            let Some(new) = owner.get(&t).cloned() else { continue };
            if self.grants.get(&t).and_then(|g| g.owner.as_ref()) == Some(&new) {
                continue;
            }
            let epoch = self.next_epoch();
            let Some(g) = self.grants.get_mut(&t) else { continue };
            if let Some(old) = g.owner.take() {
                changes.push(Change::Revoked { territory: t.clone(), server: old, epoch: g.epoch });
            }
            g.epoch = epoch;
            g.owner = Some(new.clone());
            changes.push(Change::Granted { territory: t, server: new, epoch });
        }
        changes
    }

    /// Fencing: may `server` write, with `epoch`, to an entity in `territory`?
    pub fn check_write(&self, territory: &str, server: &str, epoch: u64) -> Result<(), Fence> {
        let current = self.grants.get(territory).map_or(0, |g| g.epoch);
        let Some(g) = self.grants.get(territory) else {
            return Err(Fence::StaleEpoch { current });
        };
        if g.epoch != epoch || g.owner.is_none() {
            return Err(Fence::StaleEpoch { current });
        }
        if g.owner.as_deref() != Some(server) {
            return Err(Fence::NotOwner { current });
        }
        Ok(())
    }
}

/// Drops a grant that the same batch of changes takes back (a territory
/// granted, then moved on by the balancing): its server never needs to hear
/// of it, and the grants a server does hear keep strictly growing epochs
/// (found by `tests/authority_simulation.rs`). Epochs are fresh per grant, so
/// a revoke at a grant's epoch can only be of that grant.
fn compact(changes: Vec<Change>) -> Vec<Change> {
    let granted: BTreeSet<(TerritoryName, u64)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Granted { territory, epoch, .. } => Some((territory.clone(), *epoch)),
            Change::Revoked { .. } => None,
        })
        .collect();
    let undone: BTreeSet<(TerritoryName, u64)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Revoked { territory, epoch, .. }
                if granted.contains(&(territory.clone(), *epoch)) =>
            {
                Some((territory.clone(), *epoch))
            }
            _ => None,
        })
        .collect();
    if undone.is_empty() {
        return changes;
    }
    changes
        .into_iter()
        .filter(|c| {
            let (Change::Granted { territory, epoch, .. }
            | Change::Revoked { territory, epoch, .. }) = c;
            !undone.contains(&(territory.clone(), *epoch))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn names(v: &[&str]) -> Vec<TerritoryName> {
        v.iter().map(|s| Arc::from(*s)).collect()
    }

    fn owner(a: &Authority, t: &str) -> Option<String> {
        a.grant(t).and_then(|g| g.owner.as_deref().map(String::from))
    }

    #[test]
    fn unassigned_territories_spread_over_live_servers() {
        let now = Instant::now();
        let mut a = Authority::new(
            names(&["a", "b", "c", "d"]),
            BTreeMap::new(),
            1,
            Duration::from_secs(3),
        );
        a.connect("s1".into(), 1, now);
        assert_eq!(a.owned_by("s1").count(), 4);
        // A second server does not steal from a live owner (no needless handoffs).
        a.connect("s2".into(), 2, now);
        assert_eq!(a.owned_by("s2").count(), 0);
        // s1's stream closes: everything goes to s2 at once, with new epochs.
        let before = a.grant("a").unwrap().epoch;
        let ch = a.disconnect("s1", 1);
        assert_eq!(a.owned_by("s2").count(), 4);
        assert!(a.grant("a").unwrap().epoch > before);
        assert_eq!(ch.iter().filter(|c| matches!(c, Change::Revoked { .. })).count(), 4);
        assert_eq!(
            a.check_write("a", "s2", before),
            Err(Fence::StaleEpoch { current: a.grant("a").unwrap().epoch })
        );
    }

    #[test]
    fn static_owner_gets_its_territory_back() {
        let now = Instant::now();
        let mut st = BTreeMap::new();
        st.insert(Arc::from("a"), "s1".to_string());
        let mut a = Authority::new(names(&["a", "b"]), st, 1, Duration::from_secs(3));
        a.connect("s2".into(), 2, now);
        assert_eq!(owner(&a, "a").as_deref(), Some("s2"));
        let e = a.grant("a").unwrap().epoch;
        a.connect("s1".into(), 1, now);
        assert_eq!(owner(&a, "a").as_deref(), Some("s1"));
        assert!(a.grant("a").unwrap().epoch > e);
        assert_eq!(
            a.check_write("a", "s2", e),
            Err(Fence::StaleEpoch { current: a.grant("a").unwrap().epoch })
        );
        assert!(a.check_write("a", "s1", a.grant("a").unwrap().epoch).is_ok());
    }

    #[test]
    fn lease_expiry_and_drain() {
        let now = Instant::now();
        let mut a = Authority::new(names(&["a", "b"]), BTreeMap::new(), 1, Duration::from_secs(3));
        a.connect("s1".into(), 1, now);
        a.connect("s2".into(), 2, now + Duration::from_secs(2));
        a.heartbeat("s2", 2, now + Duration::from_secs(2));
        let (expired, _) = a.expire(now + Duration::from_secs(4));
        assert_eq!(expired, vec![(Arc::from("s1"), 1)]);
        assert_eq!(a.owned_by("s2").count(), 2);
        // Draining the only server: nowhere to go, it keeps them and says so.
        let (_, left) = a.drain("s2");
        assert_eq!(left, 2);
        a.connect("s3".into(), 3, now + Duration::from_secs(4));
        assert_eq!(a.owned_by("s3").count(), 2);
        assert_eq!(a.drain("s2").1, 0);
        // The owner goes while every other server drains: a draining one takes
        // its territories rather than leaving them unowned (found by
        // `tests/authority_simulation.rs`).
        a.disconnect("s3", 3);
        assert_eq!(a.owned_by("s2").count(), 2);
    }

    fn load_of(a: &Authority, s: &str) -> u64 {
        a.owned_by(s).map(|(t, _)| a.weight(t)).sum()
    }

    #[test]
    fn balanced_cells_spread_by_players_when_a_server_joins_and_on_drain() {
        let now = Instant::now();
        let mut a = Authority::new(
            names(&["a", "b", "c", "d"]),
            BTreeMap::new(),
            1,
            Duration::from_secs(3),
        );
        a.set_balanced(true);
        a.set_players(names(&["a", "b", "c", "d"]).into_iter().zip([30, 10, 10, 0]));
        a.connect("s1".into(), 1, now);
        assert_eq!(a.owned_by("s1").count(), 4);
        // A joining server takes a share: weights 31, 11, 11, 1 split 31 | 23.
        let ch = a.connect("s2".into(), 2, now);
        assert!(!ch.is_empty());
        let (l1, l2) = (load_of(&a, "s1"), load_of(&a, "s2"));
        assert_eq!(l1 + l2, 54);
        assert!(l1.abs_diff(l2) <= 8, "{l1} vs {l2}");
        // Nothing changed: balancing again moves nothing (no churn).
        assert!(a.spread().is_empty());
        // Draining s2 brings everything back to s1; s2 owns nothing.
        let (_, left) = a.drain("s2");
        assert_eq!(left, 0);
        assert_eq!(a.owned_by("s1").count(), 4);
    }

    #[test]
    fn repartition_revokes_old_cells_and_grants_new_ones_with_fresh_epochs() {
        let now = Instant::now();
        let mut a = Authority::new(names(&["a", "b"]), BTreeMap::new(), 1, Duration::from_secs(3));
        a.set_balanced(true);
        a.connect("s1".into(), 1, now);
        let old = a.grant("a").unwrap().epoch;
        a.set_players(names(&["a/0", "a/1", "b"]).into_iter().zip([5, 5, 0]));
        let ch = a.repartition(
            &names(&["a"]),
            &[(Arc::from("a/0"), Some(Arc::from("s1"))), (Arc::from("a/1"), Some(Arc::from("s1")))],
        );
        assert!(a.grant("a").is_none());
        assert!(ch.contains(&Change::Revoked {
            territory: Arc::from("a"),
            server: Arc::from("s1"),
            epoch: old
        }));
        for t in ["a/0", "a/1"] {
            let g = a.grant(t).unwrap();
            assert!(g.epoch > old);
            assert_eq!(g.owner.as_deref(), Some("s1"));
        }
        // A second server: one of the two busy halves moves to it.
        a.connect("s2".into(), 2, now);
        assert_eq!(load_of(&a, "s1"), 7);
        assert_eq!(load_of(&a, "s2"), 6);
        // Merge back: the parent starts with a child's owner and is granted once.
        let ch = a.repartition(&names(&["a/0", "a/1"]), &[(Arc::from("a"), Some(Arc::from("s2")))]);
        assert!(ch.iter().filter(|c| matches!(c, Change::Revoked { .. })).count() >= 2);
        assert!(a.grant("a").unwrap().owner.is_some());
        assert_eq!(a.grants().count(), 2);
    }

    #[test]
    fn superseding_connection_fences_old_one_and_old_close_is_ignored() {
        let now = Instant::now();
        let mut a = Authority::new(names(&["a"]), BTreeMap::new(), 7, Duration::from_secs(3));
        a.connect("s1".into(), 1, now);
        let e1 = a.grant("a").unwrap().epoch;
        assert_eq!(e1 >> 32, 7);
        a.connect("s1".into(), 2, now);
        let e2 = a.grant("a").unwrap().epoch;
        assert!(e2 > e1);
        assert!(
            a.disconnect("s1", 1).is_empty(),
            "the old connection closing must not revoke the new one"
        );
        assert_eq!(owner(&a, "a").as_deref(), Some("s1"));
    }
}
