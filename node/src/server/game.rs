//! The `Game` trait: the part of a game server a studio writes. The runner
//! (`super::run`) owns authority and the wire; a `Game` only turns the
//! entities it is given into their next state. All game state must live in
//! the entity (its `components`), because the replicant, not the server, is
//! the source of truth: another server resumes the entity from exactly that.
//! The crate `starmesh-sdk` (node/sdk/) is this trait and the runner as a
//! library; `starmesh server` is the runner with `ExampleGame`.
//!
//! The example game: ships fly a route of waypoints (location centres), slow
//! down on approach, dock at a station / land at a landing zone when within
//! its radius, wait, then leave for the next waypoint.

use bytes::Bytes;
use prost::Message;

use crate::model::{Entity, EntityId, PlayerId, Vec3};
use crate::wire::pb;
use crate::wire::validate::MAX_SPEED_KM_S;

use super::system::SystemView;

/// A new entity a game asks the server to create, and the territory it is in
/// (the server needs the territory's epoch to stamp the first write).
#[derive(Clone, Debug, PartialEq)]
pub struct Spawned {
    pub entity: Entity,
    pub territory: String,
}

/// One entity this server holds, as `Game::tick` sees it. Changing it through
/// `entity_mut` makes the runner write it at the end of the tick (stamped
/// with its territory's epoch); `quiet_mut` changes it without asking for a
/// write (the change goes out with the entity's next write, e.g. a countdown
/// not worth a write per tick).
#[derive(Debug)]
pub struct Slot<'a> {
    entity: &'a mut Entity,
    changed: bool,
}

impl<'a> Slot<'a> {
    pub fn new(entity: &'a mut Entity) -> Self {
        Self { entity, changed: false }
    }

    pub fn entity(&self) -> &Entity {
        self.entity
    }

    /// The entity, to change; it is written at the end of the tick.
    pub fn entity_mut(&mut self) -> &mut Entity {
        self.changed = true;
        self.entity
    }

    /// The entity, to change without a write of its own.
    pub fn quiet_mut(&mut self) -> &mut Entity {
        self.entity
    }

    /// Ask for a write even if nothing was changed through `entity_mut`.
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    pub fn changed(&self) -> bool {
        self.changed
    }
}

/// What a server's neighbourhood subscription (`Game::neighbourhood`) reports
/// about an entity it does not hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Neighbour<'a> {
    /// Came into the neighbourhood: its full state.
    Entered(&'a Entity),
    /// Moved (or changed territory or location) inside the neighbourhood.
    Moved { id: EntityId, position: Vec3, velocity: Vec3 },
    /// Left the neighbourhood (or was deleted).
    Left(EntityId),
}

/// The game logic of a starmesh game server. Only `tick` (or `step`) is
/// required in practice; every other hook has a do-nothing default. The
/// runner calls it from one task, never concurrently, in the replicant's
/// order: authority changes first, then the tick.
pub trait Game: Send + 'static {
    /// Simulates one tick of `dt` seconds over every entity this server holds
    /// authority over (sorted by id). The default steps each one with `step`.
    fn tick(&mut self, entities: &mut [Slot<'_>], dt: f64) {
        for s in entities {
            if self.step(s.quiet_mut(), dt) {
                s.mark_changed();
            }
        }
    }
    /// Advances one owned entity by `dt` seconds; true if it changed (and is
    /// to be written). Used by the default `tick`.
    fn step(&mut self, _e: &mut Entity, _dt: f64) -> bool {
        false
    }
    /// Applies a player's input to its (owned) entity; true if it changed.
    fn input(&mut self, _e: &mut Entity, _player: PlayerId, _input: &[u8]) -> bool {
        false
    }
    /// An input for an entity that does not exist yet: a game may create it.
    fn spawn(&mut self, _id: EntityId, _player: PlayerId, _input: &[u8]) -> Option<Spawned> {
        None
    }
    /// The server gained authority over `e` (handoff in, grant, spawn).
    fn entered(&mut self, _e: &Entity) {}
    /// The server lost authority over `id` (handoff out, revoke, disconnect).
    fn left(&mut self, _id: EntityId) {}
    /// The custom components (`Entity::components`) of an entity this server
    /// sees but does not hold changed: a neighbour's new game data, streamed
    /// only when it changed (`EntityDelta.components`).
    fn component_changed(&mut self, _id: EntityId, _components: &Bytes) {}
    /// The sphere (centre, radius km) around which this server wants the
    /// entities it does not hold streamed to it (`neighbour`,
    /// `component_changed`). Asked every tick; sent when it changes. `None`
    /// (the default): no neighbourhood.
    fn neighbourhood(&self) -> Option<(Vec3, f64)> {
        None
    }
    /// An entity in the neighbourhood entered, moved or left it.
    fn neighbour(&mut self, _n: Neighbour<'_>) {}
    /// `e` arrived through a jump gate into `system` (the one this server
    /// serves): its components may still hold the old system's state (e.g.
    /// waypoints there). True if it changed. Called after `entered`.
    fn arrived(&mut self, _e: &mut Entity, _system: &SystemView) -> bool {
        false
    }
    /// Whether `e`, handed to this server without a gate label (e.g. with a
    /// territory grant after the server that was to receive its arrival
    /// died), still needs `arrived`: its state belongs to another system.
    fn misplaced(&self, _e: &Entity, _system: &SystemView) -> bool {
        false
    }
    /// Whether `e`, within a jump gate's radius, enters it.
    fn takes_gate(&self, _e: &Entity) -> bool {
        true
    }
    /// The custom component types this game writes, declared to the
    /// replicant at connect (which refuses writes of any other type or
    /// version). Non-empty: `components` are typed, built with
    /// `custom::Registry::set`. Empty (the default): opaque bytes.
    fn components(&self) -> super::custom::Registry {
        super::custom::Registry::new()
    }
}

pub const SHIP_KIND: u32 = 1;
/// Ticks a ship waits docked before leaving for its next waypoint.
pub const DOCK_TICKS: u32 = 30;
/// The approach slows the ship so it covers the remaining distance in about
/// this many seconds: it never overshoots a small landing zone at high speed.
const APPROACH_SECONDS: f64 = 0.25;
const DEFAULT_SPEED: f64 = 100_000.0;

/// The built-in example game.
#[derive(Debug, Default)]
pub struct ExampleGame;

pub fn ship_state(e: &Entity) -> pb::ShipState {
    // Components written by another game or corrupted are treated as "no route".
    pb::ShipState::decode(e.components.as_ref()).unwrap_or_default()
}

fn set_state(e: &mut Entity, s: &pb::ShipState) {
    e.components = Bytes::from(s.encode_to_vec());
}

fn v(p: Option<&pb::Vec3>) -> Option<Vec3> {
    let p = p?;
    let out = Vec3::new(p.x, p.y, p.z);
    [out.x, out.y, out.z].iter().all(|c| c.is_finite()).then_some(out)
}

/// The pure flight rule: new position and velocity, and whether the ship arrived.
pub fn fly(pos: Vec3, target: Vec3, radius: f64, max_speed: f64, dt: f64) -> (Vec3, Vec3, bool) {
    let d = pos.dist(target);
    if d <= radius {
        return (pos, Vec3::default(), true);
    }
    let speed = max_speed.min(d / APPROACH_SECONDS);
    // Never step past the target (an overshoot could skip a boundary check).
    let step = (speed * dt).min(d);
    let k = step / d;
    let np = Vec3::new(
        pos.x + (target.x - pos.x) * k,
        pos.y + (target.y - pos.y) * k,
        pos.z + (target.z - pos.z) * k,
    );
    let vel = Vec3::new(
        (target.x - pos.x) / d * speed,
        (target.y - pos.y) / d * speed,
        (target.z - pos.z) / d * speed,
    );
    let arrived = np.dist(target) <= radius;
    (np, if arrived { Vec3::default() } else { vel }, arrived)
}

/// A new route in `system` for a ship that arrived through a gate: two of its
/// stations or landing zones, chosen by the ship's id (stable, spread out).
/// Empty when the system has nowhere to dock: the ship then rests at the gate.
pub fn arrival_route(system: &SystemView, id: EntityId) -> Vec<pb::Waypoint> {
    let n = system.docks.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let h = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7;
    let a = (h % n) as usize;
    let b = ((h / n.max(1) + 1) % n) as usize;
    let mut route = vec![system.docks[a].clone()];
    if b != a {
        route.push(system.docks[b].clone());
    }
    route
}

impl Game for ExampleGame {
    fn takes_gate(&self, e: &Entity) -> bool {
        e.kind == SHIP_KIND
    }

    fn misplaced(&self, e: &Entity, system: &SystemView) -> bool {
        // At rest at one of our gates' exits (where an arrival is put) with a
        // route through places this system does not have.
        let known = |n: &str| {
            system.docks.iter().any(|d| d.name == n) || system.gates.iter().any(|g| g.name == n)
        };
        e.kind == SHIP_KIND
            && system.gates.iter().any(|g| *g.name == *e.location)
            && ship_state(e).route.iter().any(|w| !known(&w.name))
    }

    fn arrived(&mut self, e: &mut Entity, system: &SystemView) -> bool {
        if e.kind != SHIP_KIND {
            return false;
        }
        let mut s = ship_state(e);
        s.route = arrival_route(system, e.id);
        s.next = 0;
        s.docked_ticks = 0;
        s.manual_velocity = None;
        set_state(e, &s);
        true
    }

    fn step(&mut self, e: &mut Entity, dt: f64) -> bool {
        if e.kind != SHIP_KIND {
            return false;
        }
        let mut s = ship_state(e);
        if s.route.is_empty() {
            // Manual flight (a player's thrust), or at rest.
            let Some(vel) = v(s.manual_velocity.as_ref()) else { return false };
            if vel == Vec3::default() {
                return false;
            }
            e.position = Vec3::new(
                e.position.x + vel.x * dt,
                e.position.y + vel.y * dt,
                e.position.z + vel.z * dt,
            );
            e.velocity = vel;
            if !e.location.is_empty() {
                e.location = "".into();
            }
            return true;
        }
        if s.docked_ticks > 0 {
            s.docked_ticks -= 1;
            set_state(e, &s);
            if s.docked_ticks > 0 {
                // Waiting is not worth a write per tick: a new owner after a
                // handoff or crash resumes the count from the last written value.
                return false;
            }
            s.next = (s.next + 1) % s.route.len() as u32;
            set_state(e, &s);
            return true;
        }
        let Some(wp) = s.route.get(s.next as usize) else {
            s.next = 0;
            set_state(e, &s);
            return true;
        };
        let Some(target) = v(wp.position.as_ref()) else { return false };
        let speed = if s.max_speed > 0.0 { s.max_speed } else { DEFAULT_SPEED };
        let (p, vel, arrived) = fly(e.position, target, wp.radius.max(0.0), speed, dt);
        e.position = p;
        e.velocity = vel;
        if arrived {
            e.location = wp.name.as_str().into();
            s.docked_ticks = DOCK_TICKS;
            s.arrivals += 1;
            set_state(e, &s);
        } else if !e.location.is_empty() {
            // Left the location it was docked at.
            e.location = "".into();
        }
        true
    }

    fn input(&mut self, e: &mut Entity, player: PlayerId, input: &[u8]) -> bool {
        let Ok(g) = pb::GameInput::decode(input) else { return false };
        let Some(pb::game_input::Cmd::Command(c)) = g.cmd else { return false };
        let mut s = ship_state(e);
        if c.seq <= s.last_input_seq && s.player_id == player {
            return false; // replayed or reordered: already applied
        }
        s.last_input_seq = c.seq;
        s.player_id = player;
        if !c.route.is_empty() {
            // Waypoints are validated by the gateway; keep only usable ones.
            s.route = c
                .route
                .into_iter()
                .filter(|w| v(w.position.as_ref()).is_some() && w.radius.is_finite())
                .collect();
            s.next = 0;
            s.docked_ticks = 0;
        }
        if c.max_speed.is_finite() && c.max_speed > 0.0 {
            s.max_speed = c.max_speed.min(MAX_SPEED_KM_S);
        }
        if let Some(t) = v(c.thrust.as_ref()) {
            let limit = if s.max_speed > 0.0 { s.max_speed } else { DEFAULT_SPEED };
            let clamp = |x: f64| x.clamp(-limit, limit);
            let vel = Vec3::new(clamp(t.x), clamp(t.y), clamp(t.z));
            s.route.clear();
            s.next = 0;
            s.docked_ticks = 0;
            s.manual_velocity = Some(pb::Vec3 { x: vel.x, y: vel.y, z: vel.z });
            e.velocity = vel;
        } else if !s.route.is_empty() {
            s.manual_velocity = None;
        }
        set_state(e, &s);
        true
    }

    fn spawn(&mut self, id: EntityId, player: PlayerId, input: &[u8]) -> Option<Spawned> {
        let g = pb::GameInput::decode(input).ok()?;
        let Some(pb::game_input::Cmd::Spawn(sp)) = g.cmd else { return None };
        let position = v(sp.position.as_ref())?;
        let s = pb::ShipState { player_id: player, ..Default::default() };
        Some(Spawned {
            entity: Entity {
                id,
                kind: SHIP_KIND,
                position,
                velocity: Vec3::default(),
                location: sp.location.as_str().into(),
                version: 0,
                components: Bytes::from(s.encode_to_vec()),
                components_version: 0,
                territory: sp.territory.as_str().into(),
            },
            territory: sp.territory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ship(pos: Vec3) -> Entity {
        Entity {
            id: 1,
            kind: SHIP_KIND,
            position: pos,
            velocity: Vec3::default(),
            location: "".into(),
            version: 1,
            components: Bytes::new(),
            components_version: 1,
            territory: "t".into(),
        }
    }

    fn wp(name: &str, x: f64, r: f64) -> pb::Waypoint {
        pb::Waypoint {
            name: name.into(),
            position: Some(pb::Vec3 { x, y: 0.0, z: 0.0 }),
            radius: r,
        }
    }

    fn cmd(seq: u64, route: Vec<pb::Waypoint>, speed: f64) -> Vec<u8> {
        pb::GameInput {
            cmd: Some(pb::game_input::Cmd::Command(pb::ShipCommand {
                seq,
                route,
                max_speed: speed,
                thrust: None,
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn fly_never_overshoots_and_stops_within_radius() {
        let (p, vel, arrived) = fly(Vec3::default(), Vec3::new(100.0, 0.0, 0.0), 1.0, 1e6, 1.0);
        assert!(p.x <= 100.0 && p.x >= 99.0, "{p:?}");
        assert!(arrived);
        assert_eq!(vel, Vec3::default());
        let (p, _, arrived) = fly(Vec3::default(), Vec3::new(1000.0, 0.0, 0.0), 1.0, 10.0, 1.0);
        assert_eq!((p.x, arrived), (10.0, false));
    }

    #[test]
    fn ship_flies_route_docks_and_moves_on() {
        let mut g = ExampleGame;
        let mut e = ship(Vec3::default());
        assert!(!g.step(&mut e, 0.1), "no route: nothing to do");
        assert!(g.input(&mut e, 9, &cmd(1, vec![wp("a", 100.0, 5.0), wp("b", 0.0, 5.0)], 50.0)));
        assert!(!g.input(&mut e, 9, &cmd(1, vec![], 0.0)), "the same seq twice applies once");
        let mut ticks = 0;
        while ship_state(&e).docked_ticks == 0 {
            assert!(g.step(&mut e, 0.1));
            ticks += 1;
            assert!(ticks < 1000, "never arrived");
        }
        assert_eq!(&*e.location, "a");
        assert!(e.position.dist(Vec3::new(100.0, 0.0, 0.0)) <= 5.0);
        for _ in 0..DOCK_TICKS {
            g.step(&mut e, 0.1);
        }
        assert_eq!(ship_state(&e).next, 1, "undocked and heading for the next waypoint");
        g.step(&mut e, 0.1);
        assert!(e.velocity.x < 0.0);
        assert_eq!(ship_state(&e).last_input_seq, 1);
        assert_eq!(ship_state(&e).arrivals, 1);
    }

    #[test]
    fn thrust_flies_manually_and_a_route_resumes_autopilot() {
        let mut g = ExampleGame;
        let mut e = ship(Vec3::default());
        let thrust = |seq, x| {
            pb::GameInput {
                cmd: Some(pb::game_input::Cmd::Command(pb::ShipCommand {
                    seq,
                    route: vec![],
                    max_speed: 10.0,
                    thrust: Some(pb::Vec3 { x, y: 0.0, z: 0.0 }),
                })),
            }
            .encode_to_vec()
        };
        assert!(g.input(&mut e, 1, &thrust(1, 1e9)));
        assert!(g.step(&mut e, 1.0));
        assert_eq!(e.position.x, 10.0, "thrust is clamped to the speed limit");
        assert!(g.input(&mut e, 1, &thrust(2, 0.0)));
        assert!(!g.step(&mut e, 1.0), "zero thrust: at rest");
        assert!(g.input(&mut e, 1, &cmd(3, vec![wp("a", 100.0, 1.0)], 10.0)));
        assert!(g.step(&mut e, 1.0));
        assert_eq!(e.position.x, 20.0, "autopilot resumed");
    }

    #[test]
    fn an_arrival_gets_a_route_in_the_new_system() {
        let mut g = ExampleGame;
        let mut e = ship(Vec3::default());
        assert!(g.input(&mut e, 9, &cmd(1, vec![wp("old-a", 100.0, 5.0)], 50.0)));
        let sys = SystemView {
            name: "b".into(),
            gates: vec![],
            docks: vec![wp("new-a", 10.0, 1.0), wp("new-b", 20.0, 1.0), wp("new-c", 30.0, 1.0)],
        };
        assert!(!g.misplaced(&e, &sys), "not at a gate");
        e.location = "gate-b".into();
        let sys = SystemView {
            gates: vec![crate::server::system::GateSpot {
                name: "gate-b".into(),
                position: Vec3::default(),
                target_system: "a".into(),
                target_gate: "gate-a".into(),
            }],
            ..sys
        };
        assert!(g.misplaced(&e, &sys), "at our gate with another system's route");
        assert!(g.arrived(&mut e, &sys));
        assert!(!g.misplaced(&e, &sys));
        let s = ship_state(&e);
        assert_eq!(s.route.len(), 2);
        assert!(s.route.iter().all(|w| w.name.starts_with("new-")), "{:?}", s.route);
        assert_eq!((s.player_id, s.last_input_seq), (9, 1), "the rest of the state is kept");
        assert!(g.step(&mut e, 0.01));
        assert!(g.arrived(&mut e, &SystemView::default()));
        assert!(ship_state(&e).route.is_empty(), "nowhere to dock: at rest");
    }

    #[test]
    fn spawn_only_from_spawn_commands_and_garbage_is_ignored() {
        let mut g = ExampleGame;
        let sp = pb::GameInput {
            cmd: Some(pb::game_input::Cmd::Spawn(pb::Spawn {
                position: Some(pb::Vec3 { x: 1.0, y: 2.0, z: 3.0 }),
                location: "lorville".into(),
                territory: "lorville".into(),
            })),
        }
        .encode_to_vec();
        let s = g.spawn(5, 7, &sp).expect("spawned");
        assert_eq!((s.entity.id, &*s.territory), (5, "lorville"));
        assert_eq!(ship_state(&s.entity).player_id, 7);
        assert!(g.spawn(5, 7, &cmd(1, vec![], 0.0)).is_none());
        assert!(g.spawn(5, 7, b"\xff\xff garbage").is_none());
        let mut e = ship(Vec3::default());
        assert!(!g.input(&mut e, 1, b"\xff\xff garbage"));
    }
}
