//! Write-behind persistence: each tick's changes are queued as one group,
//! the committer commits everything queued as one store transaction, and only
//! then are writers acknowledged (`Committed`, with the tick of that commit).
//!
//! # The framing: a continuously maintained snapshot, and the store's own log
//!
//! The store keeps **one row per entity** (its latest committed state), and
//! every group commit (one tick, or several ticks coalesced while the store
//! was slow) **upserts** the rows of the entities that changed, atomically,
//! each row replaced only by a higher version. So the table *is* a snapshot,
//! kept current at every commit rather than taken now and then. There is no
//! separate starmesh log to append to and replay: the commit log is the
//! store's own (redb's copy-on-write commit with fsync; PostgreSQL's WAL),
//! which already makes each group atomic and durable before we acknowledge it.
//! The in-memory queue below is only the not-yet-committed tail, and nothing
//! in it has been acknowledged, so losing it in a crash loses nothing promised.
//!
//! Why this bounds recovery time: recovery is "read the current rows", with
//! no log replay, so it costs O(entities stored), independent of how long the
//! replicant ran or how many writes it absorbed (a hot entity written 30 times
//! a second for a month is still one row). The store's own log replay (redb's
//! recovery, PostgreSQL's crash recovery) is bounded by its own checkpoints.
//! The benchmark measures it: `restart (…, kill -9 -> ready, all loaded)` in
//! BENCHMARKS.md. The price is write amplification (a full entity state per
//! changed entity per commit, not a delta), which group commit amortises.
//!
//! # Store trouble
//!
//! While the store is slow or down the queue grows up to `bound` entity
//! changes; past that the replicant refuses new writes (loudly: metric, log,
//! rejection reason) rather than dropping data or growing without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::model::{Entity, EntityId};
use crate::store::CommitBatch;

/// (connection, highest write seq of that connection in the group)
pub type Ack = (u64, u64);

#[derive(Debug, Default)]
pub struct TickGroup {
    pub tick: u64,
    pub entities: Vec<Entity>,
    pub acks: Vec<Ack>,
}

#[derive(Debug)]
pub struct WriteBehind {
    queue: VecDeque<TickGroup>,
    /// Entity changes accepted and not yet committed (queued + in flight).
    buffered: usize,
    bound: usize,
}

/// Several groups merged into one commit.
#[derive(Debug, Default)]
pub struct Merged {
    pub batch: CommitBatch,
    pub acks: Vec<Ack>,
    pub changes: usize,
}

impl Merged {
    /// Folds newer groups in, keeping each entity's highest version and each
    /// connection's highest seq (groups arrive in tick order).
    pub fn absorb(&mut self, groups: impl IntoIterator<Item = TickGroup>) {
        let mut by_id: HashMap<EntityId, usize> =
            self.batch.entities.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        for g in groups {
            self.batch.tick = self.batch.tick.max(g.tick);
            self.changes += g.entities.len();
            for e in g.entities {
                match by_id.get(&e.id) {
                    Some(i) if self.batch.entities[*i].version < e.version => {
                        self.batch.entities[*i] = e
                    }
                    Some(_) => {}
                    None => {
                        by_id.insert(e.id, self.batch.entities.len());
                        self.batch.entities.push(e);
                    }
                }
            }
            for (conn, seq) in g.acks {
                match self.acks.iter_mut().find(|(c, _)| *c == conn) {
                    Some(a) => a.1 = a.1.max(seq),
                    None => self.acks.push((conn, seq)),
                }
            }
        }
    }
}

impl WriteBehind {
    pub fn new(bound: usize) -> Self {
        Self { queue: VecDeque::new(), buffered: 0, bound }
    }

    pub fn push(&mut self, g: TickGroup) {
        self.buffered += g.entities.len();
        self.queue.push_back(g);
    }

    pub fn is_full(&self) -> bool {
        self.buffered >= self.bound
    }

    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn take(&mut self) -> Vec<TickGroup> {
        self.queue.drain(..).collect()
    }

    /// A commit of `changes` entity changes succeeded.
    pub fn committed(&mut self, changes: usize) {
        self.buffered = self.buffered.saturating_sub(changes);
    }
}

/// The committer loop: take everything queued, merge it with anything a
/// failed attempt left over, commit, acknowledge; on failure back off and retry.
pub async fn run_committer(shared: Arc<super::Shared>) {
    let mut carry = Merged::default();
    let mut backoff = Duration::from_millis(50);
    let mut was_down = false;
    loop {
        if carry.changes == 0 && carry.acks.is_empty() {
            tokio::select! {
                _ = shared.commit_notify.notified() => {}
                _ = shared.shutdown.notified() => return,
            }
        }
        let groups = shared.lock().wb.take();
        carry.absorb(groups);
        if carry.changes == 0 && carry.acks.is_empty() {
            continue;
        }
        let started = Instant::now();
        match shared.store.commit(&carry.batch).await {
            Ok(()) => {
                shared.metrics.commit_latency.observe(started.elapsed().as_secs_f64());
                shared.metrics.commits.inc();
                shared.metrics.store_up.set(1);
                shared.store_ok.store(true, Ordering::Relaxed);
                if was_down {
                    tracing::info!("store is back; backlog committed");
                    was_down = false;
                }
                backoff = Duration::from_millis(50);
                let done = std::mem::take(&mut carry);
                let mut core = shared.lock();
                core.wb.committed(done.changes);
                core.committed_tick = Some(done.batch.tick);
                shared.metrics.store_backlog.set(core.wb.buffered() as i64);
                for (conn, seq) in done.acks {
                    if let Some(s) = core.servers.get(&conn) {
                        s.committed.send_replace((seq, done.batch.tick));
                    }
                }
            }
            Err(e) => {
                shared.metrics.commit_failures.inc();
                shared.metrics.store_up.set(0);
                shared.store_ok.store(false, Ordering::Relaxed);
                if !was_down {
                    tracing::error!(error = %e, backlog = carry.changes, "store commit failed; serving from memory and retrying");
                    was_down = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.shutdown.notified() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Vec3;

    fn ent(id: u64, version: u64) -> Entity {
        Entity {
            id,
            kind: 0,
            position: Vec3::default(),
            velocity: Vec3::default(),
            location: "".into(),
            version,
            components: bytes::Bytes::new(),
            components_version: 0,
            territory: "t".into(),
        }
    }

    #[test]
    fn merge_keeps_latest_versions_and_highest_acks() {
        let mut wb = WriteBehind::new(3);
        wb.push(TickGroup { tick: 1, entities: vec![ent(1, 1), ent(2, 1)], acks: vec![(7, 10)] });
        assert!(!wb.is_full());
        wb.push(TickGroup { tick: 2, entities: vec![ent(1, 2)], acks: vec![(7, 12), (8, 1)] });
        assert!(wb.is_full(), "the bound counts entity changes");
        let mut m = Merged::default();
        m.absorb(wb.take());
        assert_eq!(m.batch.tick, 2);
        assert_eq!(
            m.batch.entities.iter().map(|e| (e.id, e.version)).collect::<Vec<_>>(),
            vec![(1, 2), (2, 1)]
        );
        assert_eq!(m.acks, vec![(7, 12), (8, 1)]);
        assert!(wb.is_full(), "in-flight changes still count until committed");
        wb.committed(m.changes);
        assert_eq!(wb.buffered(), 0);
    }
}
