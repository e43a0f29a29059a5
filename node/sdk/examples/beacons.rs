//! A complete (small) starmesh game server built on `starmesh-sdk`.
//!
//! Beacons orbit the point they were spawned at. Each beacon's state is its
//! custom component: the orbit's centre, radius and phase, 32 bytes, so any
//! server that takes it over (after a handoff or a crash) continues the same
//! orbit. A player's first input spawns their beacon; later inputs of one
//! byte set its angular speed (radians per second / 10). The first input may
//! be the text `x,y,territory` or the mesh's own `GameInput` spawn (what
//! `starmesh bots` sends), so the bots can load-test a studio's server too.
//!
//! Run it against a replicant like `starmesh server`:
//! `cargo run -p starmesh-sdk --example beacons -- --replicant 127.0.0.1:7000 --name s-earth`.

use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message;
use starmesh_sdk::{Entity, EntityId, Game, Neighbour, PlayerId, Slot, Spawned, Vec3, pb};

const BEACON_KIND: u32 = 42;

/// The beacon's component: centre (x, y, z), radius, phase, angular speed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Orbit {
    cx: f64,
    cy: f64,
    cz: f64,
    radius: f64,
    phase: f64,
    speed: f64,
}

impl Orbit {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(48);
        for f in [self.cx, self.cy, self.cz, self.radius, self.phase, self.speed] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Components from another game (or corrupted) decode as `None`: left alone.
    fn decode(b: &[u8]) -> Option<Orbit> {
        let f = |i: usize| Some(f64::from_le_bytes(b.get(i * 8..i * 8 + 8)?.try_into().ok()?));
        let o =
            Orbit { cx: f(0)?, cy: f(1)?, cz: f(2)?, radius: f(3)?, phase: f(4)?, speed: f(5)? };
        [o.cx, o.cy, o.cz, o.radius, o.phase, o.speed].iter().all(|x| x.is_finite()).then_some(o)
    }

    fn position(&self) -> Vec3 {
        Vec3::new(
            self.cx + self.radius * self.phase.cos(),
            self.cy + self.radius * self.phase.sin(),
            self.cz,
        )
    }
}

#[derive(Default)]
struct Beacons {
    /// Which beacons we hold: only for the log line; the state is in the entities.
    held: BTreeSet<EntityId>,
}

impl Game for Beacons {
    fn tick(&mut self, entities: &mut [Slot<'_>], dt: f64) {
        for s in entities {
            let Some(mut o) = Orbit::decode(&s.entity().components) else { continue };
            if s.entity().kind != BEACON_KIND || o.speed == 0.0 {
                continue;
            }
            o.phase = (o.phase + o.speed * dt) % std::f64::consts::TAU;
            let e = s.entity_mut();
            let before = e.position;
            e.position = o.position();
            e.velocity = Vec3::new(
                (e.position.x - before.x) / dt.max(1e-9),
                (e.position.y - before.y) / dt.max(1e-9),
                0.0,
            );
            e.components = o.encode();
        }
    }

    fn input(&mut self, e: &mut Entity, _player: PlayerId, input: &[u8]) -> bool {
        let (Some(o), [speed]) = (Orbit::decode(&e.components), input) else { return false };
        e.components = Orbit { speed: f64::from(*speed) / 10.0, ..o }.encode();
        true
    }

    fn spawn(&mut self, id: EntityId, _player: PlayerId, input: &[u8]) -> Option<Spawned> {
        let (centre, territory) = spawn_point(input)?;
        let o = Orbit {
            cx: centre.x,
            cy: centre.y,
            cz: centre.z,
            radius: 10.0,
            phase: 0.0,
            speed: 0.5,
        };
        Some(Spawned {
            entity: Entity {
                id,
                kind: BEACON_KIND,
                position: o.position(),
                velocity: Vec3::default(),
                location: "".into(),
                version: 0,
                components: o.encode(),
                components_version: 0,
                territory: territory.as_str().into(),
            },
            territory,
        })
    }

    fn entered(&mut self, e: &Entity) {
        self.held.insert(e.id);
        eprintln!("beacon {} is ours ({} held)", e.id, self.held.len());
    }

    fn left(&mut self, id: EntityId) {
        self.held.remove(&id);
    }

    fn neighbourhood(&self) -> Option<(Vec3, f64)> {
        // Beacons within 1000 km of the origin, held elsewhere, are streamed to us.
        Some((Vec3::default(), 1000.0))
    }

    fn neighbour(&mut self, n: Neighbour<'_>) {
        if let Neighbour::Entered(e) = n {
            eprintln!("neighbour {} at {:?}", e.id, e.position);
        }
    }

    fn component_changed(&mut self, id: EntityId, components: &Bytes) {
        if let Some(o) = Orbit::decode(components) {
            eprintln!("neighbour {id} now orbits at {} rad/s", o.speed);
        }
    }
}

/// Where a player's first input puts their beacon, and the territory that is:
/// the text `x,y,territory`, or the mesh's `GameInput` spawn (position and
/// territory the gateway chose) that `starmesh bots` sends.
fn spawn_point(input: &[u8]) -> Option<(Vec3, String)> {
    if let Ok(text) = std::str::from_utf8(input) {
        let mut parts = text.splitn(3, ',');
        if let (Some(x), Some(y), Some(t)) = (parts.next(), parts.next(), parts.next())
            && let (Ok(x), Ok(y)) = (x.parse(), y.parse())
        {
            return Some((Vec3::new(x, y, 0.0), t.to_string()));
        }
    }
    let g = pb::GameInput::decode(input).ok()?;
    let Some(pb::game_input::Cmd::Spawn(sp)) = g.cmd else { return None };
    let p = sp.position?;
    [p.x, p.y, p.z].iter().all(|c| c.is_finite()).then(|| (Vec3::new(p.x, p.y, p.z), sp.territory))
}

fn main() -> anyhow::Result<()> {
    starmesh_sdk::main(Beacons::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beacon_orbits_from_its_component_alone() {
        let mut g = Beacons::default();
        let sp = g.spawn(7, 1, b"100,0,earth").expect("spawned");
        assert_eq!(sp.territory, "earth");
        let mut e = sp.entity;
        assert_eq!(e.position, Vec3::new(110.0, 0.0, 0.0));
        let mut slots = vec![Slot::new(&mut e)];
        g.tick(&mut slots, std::f64::consts::PI); // half a turn at 0.5 rad/s: a quarter orbit
        assert!(slots[0].changed());
        drop(slots);
        assert!((e.position.x - 100.0).abs() < 1e-9 && (e.position.y - 10.0).abs() < 1e-9);
        // Another server (a fresh `Beacons`) continues from the entity alone.
        let mut other = Beacons::default();
        assert!(other.input(&mut e, 1, &[0]), "speed 0");
        let mut slots = vec![Slot::new(&mut e)];
        other.tick(&mut slots, 1.0);
        assert!(!slots[0].changed(), "at rest: no write");
    }

    #[test]
    fn the_bots_spawn_input_places_a_beacon_where_the_gateway_chose() {
        let input = pb::GameInput {
            cmd: Some(pb::game_input::Cmd::Spawn(pb::Spawn {
                position: Some(pb::Vec3 { x: 5.0, y: 6.0, z: 7.0 }),
                territory: "delamar".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let sp = Beacons::default().spawn(9, 1, &input).expect("spawned");
        assert_eq!(sp.territory, "delamar");
        assert_eq!(sp.entity.position, Vec3::new(15.0, 6.0, 7.0));
        assert_eq!(Orbit::decode(&sp.entity.components).map(|o| o.cz), Some(7.0));
        assert!(Beacons::default().spawn(9, 1, b"not a spawn").is_none());
    }
}
