//! Which shard of the layout a joining player plays in. In a cluster every shard has its
//! own gateway; the operator's mesh map tells each of them every shard's address, whether
//! it is being drained away and its last known player count. A player whose ship lives in
//! a shard always goes back there (one ship per player, never a second one elsewhere); a
//! new player goes to the least-loaded shard that is not draining. The decision is the
//! pure [`choose`]; the gateway does the lookups and answers with a redirect.

use crate::mesh_map::ShardLoad;

/// Where a new player goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// This gateway's shard.
    Here,
    /// Another shard (its index).
    Shard(i32),
}

/// Pure: the shard a new player (no ship anywhere yet) is placed on, seen from the
/// gateway of shard `own`.
///
/// - Draining shards never get a new player, unless every shard drains (then here: a
///   player must play somewhere, and the drain waits for it).
/// - Among the others, the fewest players wins; a tie keeps the player here (no
///   pointless redirect), else the lowest index.
/// - Unknown counts are never compared: while this shard's own count is unknown and it
///   is not draining, the player stays here; a shard with an unknown count is chosen
///   only when this one drains and no shard with a known count is open.
/// - A shard missing from the map (ours included) is no choice; without ours, here.
pub fn choose(own: i32, shards: &[ShardLoad]) -> Placement {
    let Some(me) = shards.iter().find(|s| s.index == own) else { return Placement::Here };
    let open = || shards.iter().filter(|s| !s.draining);
    if !me.draining && me.players.is_none() {
        return Placement::Here;
    }
    let best = open()
        .filter_map(|s| Some((s.players?, s.index != own, s.index)))
        .min()
        .map(|(_, _, index)| index);
    let pick = match best {
        Some(i) => Some(i),
        // Draining, and no open shard with a known count: any open shard will do.
        None if me.draining => open().map(|s| s.index).min(),
        None => None,
    };
    match pick {
        Some(i) if i != own => Placement::Shard(i),
        _ => Placement::Here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(index: i32, players: Option<u64>, draining: bool) -> ShardLoad {
        ShardLoad::fixture(index, players, draining)
    }

    #[test]
    fn the_least_loaded_open_shard_wins() {
        let s = [shard(0, Some(40), false), shard(1, Some(3), false), shard(2, Some(9), false)];
        assert_eq!(choose(0, &s), Placement::Shard(1));
        assert_eq!(choose(2, &s), Placement::Shard(1));
        assert_eq!(choose(1, &s), Placement::Here, "already on the least loaded");
    }

    #[test]
    fn ties_keep_the_player_here_else_the_lowest_index() {
        let s = [shard(0, Some(5), false), shard(1, Some(5), false), shard(2, Some(5), false)];
        for own in 0..3 {
            assert_eq!(choose(own, &s), Placement::Here, "own {own}");
        }
        let s = [shard(0, Some(9), false), shard(1, Some(2), false), shard(2, Some(2), false)];
        assert_eq!(choose(0, &s), Placement::Shard(1));
    }

    #[test]
    fn a_draining_shard_never_gets_a_new_player() {
        // Empty but draining: the busier open shard is chosen anyway.
        let s = [shard(0, Some(30), false), shard(1, Some(0), true)];
        assert_eq!(choose(0, &s), Placement::Here);
        assert_eq!(choose(1, &s), Placement::Shard(0), "the draining shard sends players away");
    }

    #[test]
    fn all_draining_keeps_the_player_here() {
        let s = [shard(0, Some(3), true), shard(1, Some(1), true)];
        assert_eq!(choose(0, &s), Placement::Here);
        assert_eq!(choose(1, &s), Placement::Here);
    }

    #[test]
    fn unknown_counts_are_never_compared() {
        // Our own count unknown (a new shard): stay.
        let s = [shard(0, Some(0), false), shard(1, None, false)];
        assert_eq!(choose(1, &s), Placement::Here);
        // Another's unknown: it is not "less loaded"; ours is the only known one.
        assert_eq!(choose(0, &s), Placement::Here);
        // Draining, the only open shard's count unknown: it still beats draining.
        let s = [shard(0, None, false), shard(1, Some(4), true)];
        assert_eq!(choose(1, &s), Placement::Shard(0));
        // Draining: a known open shard is preferred to an unknown one.
        let s = [shard(0, None, false), shard(1, Some(4), true), shard(2, Some(50), false)];
        assert_eq!(choose(1, &s), Placement::Shard(2));
    }

    #[test]
    fn a_shard_missing_from_the_map_is_no_choice() {
        assert_eq!(choose(0, &[]), Placement::Here);
        assert_eq!(choose(3, &[shard(0, Some(0), false)]), Placement::Here, "we are not listed");
        assert_eq!(choose(0, &[shard(0, Some(10), false)]), Placement::Here, "alone");
    }
}
