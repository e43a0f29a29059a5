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

/// The ServerLink protocol version this build speaks (`node/proto/PROTOCOL.md`).
/// Bumped only by an incompatible change; additive fields keep it.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest ServerLink version a replicant of this build still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

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
    #[error(
        "ServerLink protocol version {server} is not supported: this replicant speaks \
         versions {min}..={replicant} (see node/proto/PROTOCOL.md)"
    )]
    Version { server: u32, replicant: u32, min: u32 },
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        match e {
            // Not a malformed message: a well-formed one from an incompatible peer.
            WireError::Version { .. } => {
                tonic::Status::failed_precondition(format!("starmesh.wire: {e}"))
            }
            _ => tonic::Status::invalid_argument(format!("starmesh.wire: {e}")),
        }
    }
}

/// The version a `Hello` declares, if this replicant speaks it. 0 (unset) is
/// a server from before versioning, which spoke version 1.
pub fn protocol_version(v: u32) -> Result<u32> {
    let v = if v == 0 { 1 } else { v };
    if (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) {
        Ok(v)
    } else {
        Err(WireError::Version {
            server: v,
            replicant: PROTOCOL_VERSION,
            min: MIN_PROTOCOL_VERSION,
        })
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

/// Custom components in one entity (`CustomComponent`); far more than a game
/// needs, few enough that a set is cheap to check.
pub const MAX_CUSTOM_COMPONENTS: usize = 64;

/// A registered type name: 1..=64 bytes of `a-z 0-9 . _ -`, starting with a letter.
pub fn component_type_name(s: &str) -> Result<()> {
    const FIELD: &str = "write.custom.type_name";
    text(s, FIELD, false)?;
    let ok = s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !ok {
        return Err(WireError::OutOfRange(FIELD));
    }
    Ok(())
}

/// Validates typed custom components and encodes them as the entity's
/// `components` (a `ComponentSet` sorted by type name, so the same set is
/// always the same bytes), within the components bound.
pub fn component_set(mut custom: Vec<pb::CustomComponent>) -> Result<Bytes> {
    use prost::Message;
    if custom.len() > MAX_CUSTOM_COMPONENTS {
        return Err(WireError::OutOfRange("write.custom"));
    }
    for c in &custom {
        component_type_name(&c.type_name)?;
        if c.schema_version == 0 {
            return Err(WireError::Missing("write.custom.schema_version"));
        }
    }
    custom.sort_by(|a, b| a.type_name.cmp(&b.type_name));
    if custom.windows(2).any(|p| p[0].type_name == p[1].type_name) {
        return Err(WireError::Unexpected("write.custom: a type name twice"));
    }
    let set = pb::ComponentSet { custom };
    let len = set.encoded_len();
    if len > MAX_COMPONENT_BYTES {
        return Err(WireError::TooLong { field: "write.custom", len, max: MAX_COMPONENT_BYTES });
    }
    Ok(Bytes::from(set.encode_to_vec()))
}

pub fn entity_write(w: pb::EntityWrite) -> Result<EntityWrite> {
    if w.id == 0 {
        return Err(WireError::Missing("write.id"));
    }
    let components = if w.custom.is_empty() {
        bytes(w.components, "write.components", MAX_COMPONENT_BYTES)?
    } else if !w.components.is_empty() {
        return Err(WireError::Unexpected("write with both components and custom"));
    } else {
        component_set(w.custom)?
    };
    Ok(EntityWrite {
        seq: w.seq,
        epoch: w.epoch,
        id: w.id,
        kind: w.kind,
        position: vec3(w.position.as_ref(), "write.position", MAX_COORD_KM)?,
        velocity: vec3(w.velocity.as_ref(), "write.velocity", MAX_SPEED_KM_S)?,
        location: text(&w.location, "write.location", true)?,
        components,
    })
}

/// `None` means "clear the subscription" (radius 0).
pub fn interest(i: &pb::Interest) -> Result<Option<Interest>> {
    let radius = radius(i.radius, "interest.radius")?;
    let center = vec3(i.center.as_ref(), "interest.center", MAX_COORD_KM)?;
    Ok((radius > 0.0).then_some(Interest { center, radius }))
}

/// A validated `ComponentType` declared in a `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentType {
    pub type_name: Arc<str>,
    pub schema_version: u32,
    /// Bytes of `data` one component may hold (0 on the wire: the components bound).
    pub max_bytes: usize,
}

/// What the registry checks of one component of a typed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentUse {
    pub type_name: Arc<str>,
    pub schema_version: u32,
    pub data_len: usize,
}

/// The component types a `Hello` declares (`None` for any other message).
/// Checked apart from `server_message`, which keeps one shape per message.
pub fn declared_components(m: &pb::ServerMessage) -> Result<Option<Vec<ComponentType>>> {
    let Some(pb::server_message::Msg::Hello(h)) = &m.msg else { return Ok(None) };
    if h.components.len() > MAX_CUSTOM_COMPONENTS {
        return Err(WireError::OutOfRange("hello.components"));
    }
    let mut out: Vec<ComponentType> = Vec::with_capacity(h.components.len());
    for c in &h.components {
        component_type_name(&c.type_name)
            .map_err(|_| WireError::OutOfRange("hello.components.type_name"))?;
        if c.schema_version == 0 {
            return Err(WireError::Missing("hello.components.schema_version"));
        }
        let max = c.max_bytes as usize;
        if max > MAX_COMPONENT_BYTES {
            return Err(WireError::TooLong {
                field: "hello.components.max_bytes",
                len: max,
                max: MAX_COMPONENT_BYTES,
            });
        }
        if out.iter().any(|o| *o.type_name == *c.type_name) {
            return Err(WireError::Unexpected("hello.components: a type name twice"));
        }
        out.push(ComponentType {
            type_name: Arc::from(c.type_name.as_str()),
            schema_version: c.schema_version,
            max_bytes: if max == 0 { MAX_COMPONENT_BYTES } else { max },
        });
    }
    Ok(Some(out))
}

/// The typed components of a write (`EntityWrite.custom`; empty for any other
/// message and for an untyped write). Read before `server_message` consumes it.
pub fn written_components(m: &pb::ServerMessage) -> Vec<ComponentUse> {
    let Some(pb::server_message::Msg::Write(w)) = &m.msg else { return Vec::new() };
    w.custom
        .iter()
        .map(|c| ComponentUse {
            type_name: Arc::from(c.type_name.as_str()),
            schema_version: c.schema_version,
            data_len: c.data.len(),
        })
        .collect()
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
            protocol_version(h.protocol_version)?;
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
        territory: cell_name(&e.territory, "entity.territory", true)?,
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

/// A territory name: a location's (at most `MAX_NAME_LEN`) and, in a dynamic
/// layout, `/0` or `/1` per split (`starmesh_api::partition::MAX_SPLIT_DEPTH`).
pub const MAX_CELL_NAME_LEN: usize = MAX_NAME_LEN + 2 * starmesh_api::partition::MAX_SPLIT_DEPTH;

fn cell_name(s: &str, field: &'static str, allow_empty: bool) -> Result<Arc<str>> {
    if s.len() > MAX_CELL_NAME_LEN {
        return Err(WireError::TooLong { field, len: s.len(), max: MAX_CELL_NAME_LEN });
    }
    if s.is_empty() && !allow_empty {
        return Err(WireError::Missing(field));
    }
    Ok(Arc::from(s))
}

/// Admin `SetPartition`: at most this many cells named per request.
pub const MAX_PARTITION_CHANGES: usize = 256;

/// Admin `SetPartition` as (cells to split, parents to merge), each name
/// non-empty and within `MAX_NAME_LEN`, duplicates removed. Whether the
/// cells exist is the replicant's state to judge, not the wire's.
pub fn partition_request(r: pb::SetPartitionRequest) -> Result<(Vec<String>, Vec<String>)> {
    if r.split.len() + r.merge.len() > MAX_PARTITION_CHANGES {
        return Err(WireError::OutOfRange("set_partition: too many cells"));
    }
    let names = |v: Vec<String>, field| -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::with_capacity(v.len());
        for c in v {
            cell_name(&c, field, false)?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    };
    Ok((names(r.split, "set_partition.split")?, names(r.merge, "set_partition.merge")?))
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
            custom: vec![],
        }
    }

    fn comp(name: &str, v: u32, data: &[u8]) -> pb::CustomComponent {
        pb::CustomComponent {
            type_name: name.into(),
            schema_version: v,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn custom_components_are_validated_and_stored_as_a_sorted_component_set() {
        use prost::Message;
        let mut w = good_write();
        w.components = Bytes::new();
        w.custom = vec![comp("acme.cargo", 2, b"ore"), comp("acme.crew", 1, b"4")];
        let a = entity_write(w.clone()).unwrap().components;
        w.custom.reverse();
        let b = entity_write(w.clone()).unwrap().components;
        assert_eq!(a, b, "the same set is the same bytes, whatever the order");
        let set = pb::ComponentSet::decode(a.as_ref()).unwrap();
        assert_eq!(set.custom[0], comp("acme.cargo", 2, b"ore"));
        assert_eq!(set.custom.len(), 2);

        let bad = |custom: Vec<pb::CustomComponent>, components: &'static [u8]| {
            let mut w = good_write();
            w.components = Bytes::from_static(components);
            w.custom = custom;
            entity_write(w).unwrap_err()
        };
        let field = "write.custom.type_name";
        assert_eq!(bad(vec![comp("", 1, b"")], b""), WireError::Missing(field));
        assert_eq!(bad(vec![comp("Acme", 1, b"")], b""), WireError::OutOfRange(field));
        assert_eq!(bad(vec![comp("1acme", 1, b"")], b""), WireError::OutOfRange(field));
        assert_eq!(bad(vec![comp("a b", 1, b"")], b""), WireError::OutOfRange(field));
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(bad(vec![comp(&long, 1, b"")], b""), WireError::TooLong { .. }));
        assert_eq!(
            bad(vec![comp("a", 0, b"")], b""),
            WireError::Missing("write.custom.schema_version")
        );
        assert!(matches!(
            bad(vec![comp("a", 1, b""), comp("a", 2, b"")], b""),
            WireError::Unexpected(_)
        ));
        assert!(matches!(bad(vec![comp("a", 1, b"")], b"raw"), WireError::Unexpected(_)));
        let big = vec![0u8; MAX_COMPONENT_BYTES];
        assert!(matches!(
            bad(vec![comp("a", 1, &big)], b""),
            WireError::TooLong { field: "write.custom", .. }
        ));
        let many = (0..=MAX_CUSTOM_COMPONENTS).map(|i| comp(&format!("t{i}"), 1, b"")).collect();
        assert_eq!(bad(many, b""), WireError::OutOfRange("write.custom"));
    }

    #[test]
    fn hello_versions_unset_means_one_and_unknown_is_a_typed_refusal() {
        assert_eq!(protocol_version(0), Ok(1));
        assert_eq!(protocol_version(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
        let e = protocol_version(PROTOCOL_VERSION + 1).unwrap_err();
        let st = tonic::Status::from(e);
        assert_eq!(st.code(), tonic::Code::FailedPrecondition);
        let want = format!(
            "protocol version {} is not supported: this replicant speaks versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        );
        assert!(st.message().contains(&want), "{}", st.message());
        let hello = |v| pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Hello(pb::Hello {
                components: vec![],
                server_name: "s".into(),
                protocol_version: v,
            })),
        };
        assert!(matches!(server_message(hello(1)), Ok(ServerCommand::Hello(_))));
        assert!(matches!(server_message(hello(99)), Err(WireError::Version { server: 99, .. })));
    }

    #[test]
    fn hello_component_declarations_are_validated_whole() {
        let ty = |n: &str, v, max| pb::ComponentType {
            type_name: n.into(),
            schema_version: v,
            max_bytes: max,
        };
        let hello = |components| pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Hello(pb::Hello {
                server_name: "s".into(),
                protocol_version: 1,
                components,
            })),
        };
        let ok = declared_components(&hello(vec![ty("acme.cargo", 2, 0), ty("acme.crew", 1, 8)]))
            .unwrap()
            .unwrap();
        assert_eq!(ok[0].max_bytes, MAX_COMPONENT_BYTES, "0 means the components bound");
        assert_eq!((ok[1].schema_version, ok[1].max_bytes), (1, 8));
        for (bad, want) in [
            (vec![ty("Acme", 1, 0)], WireError::OutOfRange("hello.components.type_name")),
            (vec![ty("acme", 0, 0)], WireError::Missing("hello.components.schema_version")),
            (
                vec![ty("acme", 1, 1 << 20)],
                WireError::TooLong {
                    field: "hello.components.max_bytes",
                    len: 1 << 20,
                    max: MAX_COMPONENT_BYTES,
                },
            ),
            (
                vec![ty("acme", 1, 0), ty("acme", 2, 0)],
                WireError::Unexpected("hello.components: a type name twice"),
            ),
        ] {
            assert_eq!(declared_components(&hello(bad)), Err(want));
        }
        let write = pb::ServerMessage { msg: Some(pb::server_message::Msg::Write(good_write())) };
        assert_eq!(declared_components(&write), Ok(None), "only a Hello declares");
        assert!(written_components(&write).is_empty(), "an untyped write uses no type");
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
    fn partition_requests_are_bounded_and_deduplicated() {
        let r = pb::SetPartitionRequest {
            split: vec!["a/0".into(), "a/0".into(), "b".into()],
            merge: vec!["c".into()],
        };
        assert_eq!(
            partition_request(r),
            Ok((vec!["a/0".to_string(), "b".to_string()], vec!["c".to_string()]))
        );
        let r = pb::SetPartitionRequest { split: vec![String::new()], merge: vec![] };
        assert_eq!(partition_request(r), Err(WireError::Missing("set_partition.split")));
        let deepest = format!("{}{}", "x".repeat(MAX_NAME_LEN), "/1".repeat(6));
        let r = pb::SetPartitionRequest { split: vec![deepest], merge: vec![] };
        assert!(partition_request(r).is_ok(), "the longest location name, split 6 deep");
        let r = pb::SetPartitionRequest {
            split: vec![],
            merge: vec!["x".repeat(MAX_CELL_NAME_LEN + 1)],
        };
        assert!(matches!(partition_request(r), Err(WireError::TooLong { .. })));
        let r = pb::SetPartitionRequest {
            split: vec!["a".into(); MAX_PARTITION_CHANGES + 1],
            merge: vec![],
        };
        assert!(matches!(partition_request(r), Err(WireError::OutOfRange(_))));
    }

    #[test]
    fn status_is_invalid_argument() {
        let s: tonic::Status = WireError::Missing("msg").into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }
}
