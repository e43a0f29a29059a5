//! A complete (small) starmesh game server built on `starmesh-sdk`.
//!
//! Beacons orbit the point they were spawned at. Each beacon's state is its
//! custom component: the orbit's centre, radius and phase, 32 bytes, so any
//! server that takes it over (after a handoff or a crash) continues the same
//! orbit. A player's first input spawns their beacon; later inputs of one
//! byte set its angular speed (radians per second / 10).
//!
//! Run it against a replicant like `starmesh server`:
//! `cargo run -p starmesh-sdk --example beacons -- --replicant 127.0.0.1:7000 --name s-earth`.

use std::collections::BTreeSet;

use bytes::Bytes;
use starmesh_sdk::{Entity, EntityId, Game, Neighbour, PlayerId, Slot, Spawned, Vec3};

const BEACON_KIND: u32 = 42;

/// The beacon's component: centre (x, y), radius, phase, angular speed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Orbit {
    cx: f64,
    cy: f64,
    radius: f64,
    phase: f64,
    speed: f64,
}

impl Orbit {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(40);
        for f in [self.cx, self.cy, self.radius, self.phase, self.speed] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Components from another game (or corrupted) decode as `None`: left alone.
    fn decode(b: &[u8]) -> Option<Orbit> {
        let f = |i: usize| Some(f64::from_le_bytes(b.get(i * 8..i * 8 + 8)?.try_into().ok()?));
        let o = Orbit { cx: f(0)?, cy: f(1)?, radius: f(2)?, phase: f(3)?, speed: f(4)? };
        [o.cx, o.cy, o.radius, o.phase, o.speed].iter().all(|x| x.is_finite()).then_some(o)
    }

    fn position(&self) -> Vec3 {
        Vec3::new(
            self.cx + self.radius * self.phase.cos(),
            self.cy + self.radius * self.phase.sin(),
            0.0,
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
        // "x,y,territory": where to put the beacon and the territory that is.
        let text = std::str::from_utf8(input).ok()?;
        let mut parts = text.splitn(3, ',');
        let (x, y) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        let territory = parts.next()?.to_string();
        let o = Orbit { cx: x, cy: y, radius: 10.0, phase: 0.0, speed: 0.5 };
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
}
