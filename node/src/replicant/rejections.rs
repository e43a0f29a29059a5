//! Rejected writes, coalesced per server per tick. A burst of stale writes
//! (thousands at once from a buggy or lagging server) must neither grow the
//! replicant's memory nor fill the server's outbound queue and get it
//! disconnected: each tick a server gets at most one `WritesRejected` with
//! counts by reason and the first few rejections. A summary that does not fit
//! in the queue is kept and merged into the next tick's (counts add up).

use std::collections::BTreeMap;

use crate::wire::pb;

/// Rejections listed one by one in a summary; the rest are only counted.
pub const MAX_SAMPLES: usize = 32;

#[derive(Debug, Default)]
pub struct Rejections {
    counts: BTreeMap<i32, u64>,
    first: Vec<pb::WriteRejected>,
    highest_seq: u64,
}

impl Rejections {
    pub fn add(&mut self, r: pb::WriteRejected) {
        *self.counts.entry(r.reason).or_default() += 1;
        self.highest_seq = self.highest_seq.max(r.seq);
        if self.first.len() < MAX_SAMPLES {
            self.first.push(r);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn to_pb(&self, tick: u64) -> pb::WritesRejected {
        pb::WritesRejected {
            tick,
            counts: self
                .counts
                .iter()
                .map(|(reason, count)| pb::RejectionCount { reason: *reason, count: *count })
                .collect(),
            first: self.first.clone(),
            highest_seq: self.highest_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_everything_and_samples_a_bounded_prefix() {
        let mut r = Rejections::default();
        for seq in 1..=10_000 {
            let reason = if seq % 2 == 0 {
                pb::RejectReason::StaleEpoch
            } else {
                pb::RejectReason::NotOwner
            };
            r.add(pb::WriteRejected { seq, id: seq, reason: reason as i32, current_epoch: 9 });
        }
        let m = r.to_pb(4);
        assert_eq!(r.total(), 10_000);
        assert_eq!(m.first.len(), MAX_SAMPLES);
        assert_eq!(m.first[0].seq, 1);
        assert_eq!(m.highest_seq, 10_000);
        assert_eq!(m.counts.iter().map(|c| c.count).sum::<u64>(), 10_000);
    }
}
