//! Who a player is and where its ship starts. A name always maps to the same
//! player id and ship. With a token key (`auth`) the name comes from a signed
//! token; without one (development mode) any name is accepted and the token is
//! derived from the name (`token_for`/`player_for_token`), so anyone who knows
//! a name can play as it.

use std::collections::HashMap;
use std::path::PathBuf;

use starmesh_api::LocationKind;

use crate::model::{EntityId, PlayerId, Vec3};
use crate::resources;
use crate::server::GATE_RADIUS_KM;
use crate::server::system::SystemView;
use crate::territory::TerritoryMap;
use crate::wire::pb;
use crate::wire::validate::MAX_NAME_LEN;

/// Player ships live in their own id range, so they never collide with
/// entities a game server creates for itself (ids below 2^62).
pub const PLAYER_ENTITY_BASE: u64 = 1 << 62;
const TOKEN_PREFIX: &str = "dev.";

/// FNV-1a: stable across processes and releases (unlike `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A valid player name: 1..=64 printable ASCII characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_graphic())
}

pub fn player_id(name: &str) -> PlayerId {
    // Below 2^62 and never 0 (0 means "no player" on the wire).
    (fnv1a(name) & (PLAYER_ENTITY_BASE - 1)).max(1)
}

pub fn ship_of(player: PlayerId) -> EntityId {
    PLAYER_ENTITY_BASE | player
}

pub fn token_for(name: &str) -> String {
    format!("{TOKEN_PREFIX}{name}")
}

/// The player a token stands for (development mode: the token names it).
pub fn player_for_token(token: &str) -> Option<(String, PlayerId)> {
    let name = token.strip_prefix(TOKEN_PREFIX)?;
    valid_name(name).then(|| (name.to_string(), player_id(name)))
}

/// The places of the StarSystem the gateway serves, and where ships spawn.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub destinations: Vec<pb::Destination>,
    /// Indices into `destinations` where ships may spawn (stations, landing zones).
    spawns: Vec<usize>,
    /// The StarSystem's name and jump gates.
    pub system: SystemView,
    /// Gateways of other systems (`--gateway-peer SYSTEM=ADDR`): where a player
    /// whose ship left through a gate continues.
    pub peers: HashMap<String, String>,
}

impl World {
    /// Without resources: everyone spawns at the origin, in deep space.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn load(files: &[PathBuf]) -> anyhow::Result<Self> {
        let mesh = resources::load(files, "0").map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut system = None;
        for f in files {
            for r in starmesh_api::yaml::load_path(f).map_err(|e| anyhow::anyhow!("{e}"))? {
                if let starmesh_api::Resource::StarSystem(s) = r {
                    system = Some((s.metadata.name.clone().unwrap_or_default(), s.spec));
                }
            }
        }
        let (name, system) = system.ok_or_else(|| anyhow::anyhow!("no StarSystem in the files"))?;
        let mut w = Self::from_spec(&system, &mesh.map);
        w.system = SystemView::from_spec(&name, &system);
        for g in w.system.gates.clone() {
            // A route ending here flies the ship into the gate.
            w.destinations.push(pb::Destination {
                name: g.name.clone(),
                kind: "jumpGate".to_string(),
                position: Some(pb::Vec3 { x: g.position.x, y: g.position.y, z: g.position.z }),
                radius: GATE_RADIUS_KM / 2.0,
                territory: mesh.map.locate(g.position).to_string(),
            });
        }
        Ok(w)
    }

    /// With the gateways of other systems (`--gateway-peer SYSTEM=ADDR`).
    pub fn with_peers(mut self, peers: &[(String, String)]) -> Self {
        self.peers.extend(peers.iter().cloned());
        self
    }

    pub fn from_spec(system: &starmesh_api::StarSystemSpec, map: &TerritoryMap) -> Self {
        let mut w = Self::default();
        for p in starmesh_api::geometry::place_locations(system).into_iter().flatten() {
            let centre = Vec3::new(p.centre.x, p.centre.y, p.centre.z);
            let kind = p.kind.map_or("star", LocationKind::as_str);
            if matches!(p.kind, Some(LocationKind::Station | LocationKind::LandingZone)) {
                w.spawns.push(w.destinations.len());
            }
            w.destinations.push(pb::Destination {
                name: p.name,
                kind: kind.to_string(),
                position: Some(pb::Vec3 { x: centre.x, y: centre.y, z: centre.z }),
                radius: p.radius,
                territory: map.locate(centre).to_string(),
            });
        }
        w
    }

    /// Where a player's ship is created: one of the stations and landing
    /// zones, spread evenly and stable per player.
    pub fn spawn_for(&self, player: PlayerId) -> pb::Spawn {
        match self.spawns.get((player % self.spawns.len().max(1) as u64) as usize) {
            Some(&i) => {
                let d = &self.destinations[i];
                pb::Spawn {
                    position: d.position,
                    location: d.name.clone(),
                    territory: d.territory.clone(),
                }
            }
            None => pb::Spawn {
                position: Some(pb::Vec3::default()),
                location: String::new(),
                territory: crate::territory::DEEP_SPACE.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_stable_players_and_ships() {
        assert_eq!(player_id("alice"), player_id("alice"));
        assert_ne!(player_id("alice"), player_id("bob"));
        assert!(player_id("alice") < PLAYER_ENTITY_BASE);
        assert!(ship_of(player_id("alice")) >= PLAYER_ENTITY_BASE);
        assert_eq!(
            player_for_token(&token_for("alice")),
            Some(("alice".into(), player_id("alice")))
        );
        assert_eq!(player_for_token("alice"), None);
        assert_eq!(player_for_token("dev."), None);
        assert!(!valid_name(&"x".repeat(65)));
        assert!(!valid_name("with space"));
    }

    #[test]
    fn stanton_spawns_at_stations_and_landing_zones() {
        let files = [
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/stanton.yaml"
            )),
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../manifests/examples/stanton-layout.yaml"
            )),
        ];
        let w = World::load(&files).unwrap();
        let lorville = w.destinations.iter().find(|d| d.name == "lorville").unwrap();
        assert_eq!(
            (lorville.kind.as_str(), lorville.territory.as_str()),
            ("landingZone", "lorville")
        );
        let everus = w.destinations.iter().find(|d| d.name == "everus-harbor").unwrap();
        assert_eq!(everus.territory, "hurston", "an unnamed station belongs to its planet");
        let spawns: std::collections::BTreeSet<String> =
            (0..100).map(|p| w.spawn_for(p).location).collect();
        assert!(spawns.len() >= 8, "{spawns:?}");
        assert!(spawns.contains("lorville"));
        assert_eq!(World::empty().spawn_for(3).territory, "deep-space");
    }
}
