//! Who has authority over which territory, with fencing epochs. Pure: time
//! is passed in, changes are returned, nothing is sent from here.
//!
//! Epochs are `generation << 32 | counter`: the generation is persisted and
//! bumped at every replicant start, so an epoch handed out before a restart
//! can never equal one handed out after it (fencing survives restarts).

use std::collections::BTreeMap;
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
        Self { grants, static_owner, servers: BTreeMap::new(), generation, counter: 0, lease }
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
        changes
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
        let changes = self.rebalance();
        let remaining = self.owned_by(server).count();
        (changes, remaining)
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
        let mut load: BTreeMap<ServerName, usize> =
            self.servers.iter().filter(|(_, s)| !s.draining).map(|(n, _)| (n.clone(), 0)).collect();
        for g in self.grants.values() {
            if let Some(o) = &g.owner
                && let Some(c) = load.get_mut(o)
            {
                *c += 1;
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
            let Some(g) = self.grants.get_mut(&t) else { continue };
            if let Some(old) = g.owner.take() {
                if let Some(c) = load.get_mut(&old) {
                    *c = c.saturating_sub(1);
                }
                changes.push(Change::Revoked { territory: t.clone(), server: old, epoch: g.epoch });
            }
            g.epoch = epoch;
            if let Some(new) = desired {
                *load.entry(new.clone()).or_default() += 1;
                g.owner = Some(new.clone());
                changes.push(Change::Granted { territory: t.clone(), server: new, epoch });
            }
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
