//! Validation of every decoded message. Size bounds on whole messages are
//! enforced earlier by tonic (`MAX_MESSAGE_BYTES`); here each field is checked
//! so that nothing non-finite, over-long or out of range reaches the state.
//! Validation happens before any state is touched, so a bad message changes
//! nothing: it only ends its own stream.

use std::sync::Arc;

use bytes::Bytes;

use super::pb;
use crate::model::{Entity, EntityId, EntityWrite, Interest, PlayerId, ServerName, Vec3};

/// Whole-message bound given to tonic (`max_decoding_message_size`).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_COMPONENT_BYTES: usize = 16 * 1024;
pub const MAX_INPUT_BYTES: usize = 1024;
/// About 6,700 AU: far beyond any StarSystem, small enough that squared
/// distances stay finite.
pub const MAX_COORD_KM: f64 = 1e12;
pub const MAX_SPEED_KM_S: f64 = 1e6;
pub const MAX_RADIUS_KM: f64 = 1e9;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` is not a finite number")]
    NotFinite(&'static str),
    #[error("field `{0}` is out of range")]
    OutOfRange(&'static str),
    #[error("field `{field}` is {len} bytes, more than {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("unexpected message: {0}")]
    Unexpected(&'static str),
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        tonic::Status::invalid_argument(format!("starmesh.wire: {e}"))
    }
}

type Result<T> = std::result::Result<T, WireError>;

fn vec3(v: Option<&pb::Vec3>, field: &'static str, bound: f64) -> Result<Vec3> {
    let v = v.ok_or(WireError::Missing(field))?;
    let out = Vec3::new(v.x, v.y, v.z);
    for c in [out.x, out.y, out.z] {
        if !c.is_finite() {
            return Err(WireError::NotFinite(field));
        }
        if c.abs() > bound {
            return Err(WireError::OutOfRange(field));
        }
    }
    Ok(out)
}

fn text(s: &str, field: &'static str, allow_empty: bool) -> Result<Arc<str>> {
    if s.len() > MAX_NAME_LEN {
        return Err(WireError::TooLong { field, len: s.len(), max: MAX_NAME_LEN });
    }
    if s.is_empty() && !allow_empty {
        return Err(WireError::Missing(field));
    }
    Ok(Arc::from(s))
}

fn bytes(b: Bytes, field: &'static str, max: usize) -> Result<Bytes> {
    if b.len() > max {
        return Err(WireError::TooLong { field, len: b.len(), max });
    }
    Ok(b)
}

fn radius(r: f64, field: &'static str) -> Result<f64> {
    if !r.is_finite() {
        return Err(WireError::NotFinite(field));
    }
    if !(0.0..=MAX_RADIUS_KM).contains(&r) {
        return Err(WireError::OutOfRange(field));
    }
    Ok(r)
}

pub fn entity_write(w: pb::EntityWrite) -> Result<EntityWrite> {
    if w.id == 0 {
        return Err(WireError::Missing("write.id"));
    }
    Ok(EntityWrite {
        seq: w.seq,
        epoch: w.epoch,
        id: w.id,
        kind: w.kind,
        position: vec3(w.position.as_ref(), "write.position", MAX_COORD_KM)?,
        velocity: vec3(w.velocity.as_ref(), "write.velocity", MAX_SPEED_KM_S)?,
        location: text(&w.location, "write.location", true)?,
        components: bytes(w.components, "write.components", MAX_COMPONENT_BYTES)?,
    })
}

/// `None` means "clear the subscription" (radius 0).
pub fn interest(i: &pb::Interest) -> Result<Option<Interest>> {
    let radius = radius(i.radius, "interest.radius")?;
    let center = vec3(i.center.as_ref(), "interest.center", MAX_COORD_KM)?;
    Ok((radius > 0.0).then_some(Interest { center, radius }))
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerCommand {
    Hello(ServerName),
    Heartbeat,
    Write(EntityWrite),
    Neighbourhood(Option<Interest>),
    GateEnter(GateEnter),
}

/// A validated `GateEnter` (see `server_link.proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct GateEnter {
    pub seq: u64,
    pub epoch: u64,
    pub id: EntityId,
    pub gate: Arc<str>,
}

pub fn gate_enter(g: pb::GateEnter) -> Result<GateEnter> {
    if g.id == 0 {
        return Err(WireError::Missing("gate_enter.id"));
    }
    Ok(GateEnter {
        seq: g.seq,
        epoch: g.epoch,
        id: g.id,
        gate: text(&g.gate, "gate_enter.gate", false)?,
    })
}

/// Long enough for `<system>/<shard>/<id>@<version>` (63 + 64 + 2 * 20 + 3).
pub const MAX_TRANSFER_ID_LEN: usize = 192;

/// A validated `ArriveRequest` (see `gate_link.proto`).
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub transfer_id: Arc<str>,
    pub source_system: Arc<str>,
    pub source_gate: Arc<str>,
    pub target_gate: Arc<str>,
    pub entity: Entity,
}

/// Transfer ids are keys in both stores and in logs: printable ASCII only.
pub fn transfer_id(s: &str, field: &'static str) -> Result<Arc<str>> {
    if s.len() > MAX_TRANSFER_ID_LEN {
        return Err(WireError::TooLong { field, len: s.len(), max: MAX_TRANSFER_ID_LEN });
    }
    if s.is_empty() {
        return Err(WireError::Missing(field));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WireError::OutOfRange(field));
    }
    Ok(Arc::from(s))
}

pub fn arrive_request(r: pb::ArriveRequest) -> Result<Arrival> {
    let entity = entity_from_pb(r.entity.ok_or(WireError::Missing("arrive.entity"))?)?;
    if entity.id == 0 {
        return Err(WireError::Missing("arrive.entity.id"));
    }
    Ok(Arrival {
        transfer_id: transfer_id(&r.transfer_id, "arrive.transfer_id")?,
        source_system: text(&r.source_system, "arrive.source_system", false)?,
        source_gate: text(&r.source_gate, "arrive.source_gate", false)?,
        target_gate: text(&r.target_gate, "arrive.target_gate", false)?,
        entity,
    })
}

pub fn server_message(m: pb::ServerMessage) -> Result<ServerCommand> {
    use pb::server_message::Msg;
    match m.msg.ok_or(WireError::Missing("msg"))? {
        Msg::Hello(h) => {
            Ok(ServerCommand::Hello(text(&h.server_name, "hello.server_name", false)?))
        }
        Msg::Heartbeat(_) => Ok(ServerCommand::Heartbeat),
        Msg::Write(w) => Ok(ServerCommand::Write(entity_write(w)?)),
        Msg::Neighbourhood(i) => Ok(ServerCommand::Neighbourhood(interest(&i)?)),
        Msg::GateEnter(g) => Ok(ServerCommand::GateEnter(gate_enter(g)?)),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GatewayCommand {
    Attach { player: PlayerId, entity: EntityId, radius: f64, position: Vec3 },
    Detach(PlayerId),
    Input { player: PlayerId, seq: u64, input: Bytes },
}

pub fn gateway_message(m: pb::GatewayMessage) -> Result<GatewayCommand> {
    use pb::gateway_message::Msg;
    match m.msg.ok_or(WireError::Missing("msg"))? {
        Msg::Attach(a) => {
            if a.player_id == 0 {
                return Err(WireError::Missing("attach.player_id"));
            }
            let r = radius(a.radius, "attach.radius")?;
            if r == 0.0 {
                return Err(WireError::OutOfRange("attach.radius"));
            }
            Ok(GatewayCommand::Attach {
                player: a.player_id,
                entity: a.entity_id,
                radius: r,
                position: vec3(a.position.as_ref(), "attach.position", MAX_COORD_KM)?,
            })
        }
        Msg::Detach(d) => Ok(GatewayCommand::Detach(d.player_id)),
        Msg::Input(i) => Ok(GatewayCommand::Input {
            player: i.player_id,
            seq: i.seq,
            input: bytes(i.input, "input.input", MAX_INPUT_BYTES)?,
        }),
    }
}

/// Entities read back from a store are validated like anything else off disk.
pub fn entity_from_pb(e: pb::EntityState) -> Result<Entity> {
    Ok(Entity {
        id: e.id,
        kind: e.kind,
        position: vec3(e.position.as_ref(), "entity.position", MAX_COORD_KM)?,
        velocity: vec3(e.velocity.as_ref(), "entity.velocity", MAX_SPEED_KM_S)?,
        location: text(&e.location, "entity.location", true)?,
        version: e.version,
        components: bytes(e.components, "entity.components", MAX_COMPONENT_BYTES)?,
        components_version: e.components_version,
        territory: text(&e.territory, "entity.territory", true)?,
    })
}

pub fn vec3_to_pb(v: Vec3) -> pb::Vec3 {
    pb::Vec3 { x: v.x, y: v.y, z: v.z }
}

pub fn entity_to_pb(e: &Entity) -> pb::EntityState {
    pb::EntityState {
        id: e.id,
        kind: e.kind,
        position: Some(vec3_to_pb(e.position)),
        velocity: Some(vec3_to_pb(e.velocity)),
        location: e.location.to_string(),
        version: e.version,
        components: e.components.clone(),
        territory: e.territory.to_string(),
        components_version: e.components_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_write() -> pb::EntityWrite {
        pb::EntityWrite {
            seq: 1,
            epoch: 1,
            id: 5,
            kind: 1,
            position: Some(pb::Vec3 { x: 1.0, y: 2.0, z: 3.0 }),
            velocity: Some(pb::Vec3::default()),
            location: "earth".into(),
            components: Bytes::from_static(b"abc"),
        }
    }

    #[test]
    fn accepts_good_write() {
        let w = entity_write(good_write()).unwrap();
        assert_eq!(w.position, Vec3::new(1.0, 2.0, 3.0));
    }

    #[test]
    fn rejects_bad_fields() {
        let mut w = good_write();
        w.position = Some(pb::Vec3 { x: f64::NAN, y: 0.0, z: 0.0 });
        assert_eq!(entity_write(w), Err(WireError::NotFinite("write.position")));
        let mut w = good_write();
        w.velocity = None;
        assert_eq!(entity_write(w), Err(WireError::Missing("write.velocity")));
        let mut w = good_write();
        w.position = Some(pb::Vec3 { x: 1e13, y: 0.0, z: 0.0 });
        assert_eq!(entity_write(w), Err(WireError::OutOfRange("write.position")));
        let mut w = good_write();
        w.location = "x".repeat(65);
        assert!(matches!(entity_write(w), Err(WireError::TooLong { .. })));
        let mut w = good_write();
        w.components = Bytes::from(vec![0; MAX_COMPONENT_BYTES + 1]);
        assert!(matches!(
            entity_write(w),
            Err(WireError::TooLong { field: "write.components", .. })
        ));
        assert_eq!(server_message(pb::ServerMessage { msg: None }), Err(WireError::Missing("msg")));
        let i = pb::Interest { center: Some(pb::Vec3::default()), radius: f64::INFINITY };
        assert_eq!(interest(&i), Err(WireError::NotFinite("interest.radius")));
        let i = pb::Interest { center: Some(pb::Vec3::default()), radius: -1.0 };
        assert_eq!(interest(&i), Err(WireError::OutOfRange("interest.radius")));
    }

    fn good_arrival() -> pb::ArriveRequest {
        pb::ArriveRequest {
            transfer_id: "alpha/0/5@3".into(),
            source_system: "alpha".into(),
            source_gate: "alpha-beta".into(),
            target_gate: "beta-alpha".into(),
            entity: Some(entity_to_pb(&Entity {
                id: 5,
                kind: 1,
                position: Vec3::new(1.0, 2.0, 3.0),
                velocity: Vec3::default(),
                location: "".into(),
                version: 3,
                components: Bytes::from_static(b"c"),
                components_version: 1,
                territory: "t".into(),
            })),
        }
    }

    #[test]
    fn gate_messages_are_validated() {
        let g = pb::GateEnter { seq: 1, epoch: 2, id: 5, gate: "alpha-beta".into() };
        let ok = gate_enter(g.clone()).unwrap();
        assert_eq!((ok.id, &*ok.gate), (5, "alpha-beta"));
        assert_eq!(
            gate_enter(pb::GateEnter { id: 0, ..g.clone() }),
            Err(WireError::Missing("gate_enter.id"))
        );
        assert_eq!(
            gate_enter(pb::GateEnter { gate: String::new(), ..g.clone() }),
            Err(WireError::Missing("gate_enter.gate"))
        );
        assert!(matches!(
            gate_enter(pb::GateEnter { gate: "g".repeat(65), ..g }),
            Err(WireError::TooLong { .. })
        ));

        assert_eq!(arrive_request(good_arrival()).unwrap().entity.id, 5);
        let mut r = good_arrival();
        r.entity = None;
        assert_eq!(arrive_request(r), Err(WireError::Missing("arrive.entity")));
        let mut r = good_arrival();
        r.transfer_id = "a b".into();
        assert_eq!(arrive_request(r), Err(WireError::OutOfRange("arrive.transfer_id")));
        let mut r = good_arrival();
        r.transfer_id = "x".repeat(MAX_TRANSFER_ID_LEN + 1);
        assert!(matches!(arrive_request(r), Err(WireError::TooLong { .. })));
        let mut r = good_arrival();
        r.target_gate = String::new();
        assert_eq!(arrive_request(r), Err(WireError::Missing("arrive.target_gate")));
        let mut r = good_arrival();
        if let Some(e) = r.entity.as_mut() {
            e.position = Some(pb::Vec3 { x: f64::NAN, y: 0.0, z: 0.0 });
        }
        assert_eq!(arrive_request(r), Err(WireError::NotFinite("entity.position")));
        let mut r = good_arrival();
        if let Some(e) = r.entity.as_mut() {
            e.id = 0;
        }
        assert_eq!(arrive_request(r), Err(WireError::Missing("arrive.entity.id")));
    }

    #[test]
    fn status_is_invalid_argument() {
        let s: tonic::Status = WireError::Missing("msg").into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }
}
