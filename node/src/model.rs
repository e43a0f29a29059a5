//! Typed domain values. Everything that comes off the network is converted
//! into these by `wire::validate`, so the rest of the replicant never sees an
//! unchecked float, an over-long name or an unbounded byte blob.

use std::sync::Arc;

use bytes::Bytes;

pub type EntityId = u64;
pub type PlayerId = u64;
/// Territory and server names are shared by many entities and grants;
/// `Arc<str>` makes cloning them free.
pub type TerritoryName = Arc<str>;
pub type ServerName = Arc<str>;

/// A position (km) or velocity (km/s); always finite once validated.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Vec3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

impl Vec3 {
    pub const fn new(x: f64, y: f64, z: f64) -> Self {
        Self { x, y, z }
    }

    pub fn dist2(self, o: Vec3) -> f64 {
        let (dx, dy, dz) = (self.x - o.x, self.y - o.y, self.z - o.z);
        dx * dx + dy * dy + dz * dz
    }

    pub fn dist(self, o: Vec3) -> f64 {
        self.dist2(o).sqrt()
    }
}

impl From<[f64; 3]> for Vec3 {
    fn from(a: [f64; 3]) -> Self {
        Self::new(a[0], a[1], a[2])
    }
}

/// Anything simulated: ship, player, cargo box, NPC.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    pub id: EntityId,
    pub kind: u32,
    pub position: Vec3,
    pub velocity: Vec3,
    pub location: Arc<str>,
    /// Grows by one with every change the replicant applies.
    pub version: u64,
    pub components: Bytes,
    /// Bumped only when `components` change, so deltas can leave them out.
    pub components_version: u64,
    /// Territory at the last tick boundary (authority is decided by it).
    pub territory: TerritoryName,
}

/// A validated write from a game server.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityWrite {
    pub seq: u64,
    pub epoch: u64,
    pub id: EntityId,
    pub kind: u32,
    pub position: Vec3,
    pub velocity: Vec3,
    pub location: Arc<str>,
    pub components: Bytes,
}

/// A validated sphere of interest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interest {
    pub center: Vec3,
    pub radius: f64,
}
