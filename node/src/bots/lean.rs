//! The bubble as the bots read it: only the fields the observer checks (id, version,
//! territory, components), decoded from the same wire bytes as `pb::PlayerUpdate`
//! (same tags). Position, velocity and location are skipped rather than decoded, and
//! byte strings are slices of the receive buffer (`Bytes`) rather than new `String`s:
//! decoding the whole `pb::PlayerUpdate` was most of what a bot spent per update.

use bytes::{Buf, Bytes};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::wire::pb;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PlayerUpdate {
    #[prost(oneof = "Msg", tags = "1, 2, 3")]
    pub msg: Option<Msg>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Msg {
    #[prost(message, tag = "1")]
    Bubble(UpdateBatch),
    #[prost(uint64, tag = "2")]
    InputsDropped(u64),
    #[prost(message, tag = "3")]
    Transferred(pb::Transferred),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateBatch {
    #[prost(uint64, tag = "1")]
    pub tick: u64,
    #[prost(message, repeated, tag = "2")]
    pub updates: Vec<EntityUpdate>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntityUpdate {
    #[prost(oneof = "Change", tags = "1, 2, 3")]
    pub change: Option<Change>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    #[prost(message, tag = "1")]
    Enter(EntityState),
    #[prost(message, tag = "2")]
    Delta(EntityDelta),
    #[prost(uint64, tag = "3")]
    Leave(u64),
}

/// `pb::EntityState`'s id, version, components and territory (a UTF-8 string on the
/// wire, compared as bytes here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntityState {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "6")]
    pub version: u64,
    #[prost(bytes = "bytes", tag = "7")]
    pub components: Bytes,
    #[prost(bytes = "bytes", tag = "8")]
    pub territory: Bytes,
}

/// `pb::EntityDelta`'s id, version, territory and components.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntityDelta {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub version: u64,
    #[prost(bytes = "bytes", tag = "5")]
    pub territory: Bytes,
    #[prost(bytes = "bytes", optional, tag = "7")]
    pub components: Option<Bytes>,
}

/// Encodes `pb::PlayerMessage` as the generated client does; decodes [`PlayerUpdate`]
/// with [`parse`] from one contiguous `Bytes` (a zero-copy split of the receive buffer)
/// rather than through tonic's `DecodeBuf`, whose every advance (several per field) was
/// a `BytesMut::advance` call: the largest single cost left after the lean types.
#[derive(Default)]
struct Codec;

struct Decoder;

impl tonic::codec::Codec for Codec {
    type Encode = pb::PlayerMessage;
    type Decode = PlayerUpdate;
    type Encoder = tonic_prost::ProstEncoder<pb::PlayerMessage>;
    type Decoder = Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder
    }
}

impl tonic::codec::Decoder for Decoder {
    type Item = PlayerUpdate;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<PlayerUpdate>, tonic::Status> {
        let whole = src.copy_to_bytes(src.remaining());
        parse(&whole).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Reads a `PlayerUpdate` from one buffer by hand: what the prost derives above read
/// (the tests hold the two equal), without prost's generic per-field machinery, which
/// was most of the bots' decoding. Byte fields are slices of `whole` (no copy).
/// Unknown fields are skipped, as prost does; malformed input is an error, never a panic.
pub fn parse(whole: &Bytes) -> Result<PlayerUpdate, Malformed> {
    let mut r = Reader { b: whole, pos: 0, end: whole.len() };
    let mut msg = None;
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delimited()?;
                msg = Some(Msg::Bubble(parse_batch(whole, s, e)?));
            }
            (2, VARINT) => msg = Some(Msg::InputsDropped(r.varint()?)),
            (3, LEN) => {
                let (s, e) = r.len_delimited()?;
                let t = pb::Transferred::decode(&whole[s..e]).map_err(|_| Malformed)?;
                msg = Some(Msg::Transferred(t));
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(PlayerUpdate { msg })
}

const VARINT: u8 = 0;
const LEN: u8 = 2;

/// A cursor over `b[pos..end]` (one message's bytes within the whole buffer).
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    end: usize,
}

/// Malformed wire bytes (a small error: the parser's results stay in registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed PlayerUpdate")
    }
}

impl Reader<'_> {
    /// A base-128 varint, as prost reads it (at most ten bytes, the tenth 0 or 1).
    #[inline]
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = if self.pos < self.end { self.b.get(self.pos) } else { None };
            let byte = *byte.ok_or(Malformed)?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(Malformed);
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(Malformed)
    }

    /// The next field's (tag, wire type); `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u64, u8)>, Malformed> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let k = self.varint()?;
        Ok(Some((k >> 3, (k & 7) as u8)))
    }

    /// The range of a length-delimited field's bytes, stepped over.
    fn len_delimited(&mut self) -> Result<(usize, usize), Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed)?;
        let s = self.pos;
        self.advance(len)?;
        Ok((s, self.pos))
    }

    fn advance(&mut self, n: usize) -> Result<(), Malformed> {
        match self.pos.checked_add(n) {
            Some(e) if e <= self.end => {
                self.pos = e;
                Ok(())
            }
            _ => Err(Malformed),
        }
    }

    fn skip(&mut self, wt: u8) -> Result<(), Malformed> {
        match wt {
            VARINT => self.varint().map(|_| ()),
            1 => self.advance(8),
            LEN => self.len_delimited().map(|_| ()),
            5 => self.advance(4),
            // Groups (3, 4): none in these messages.
            _ => Err(Malformed),
        }
    }
}

fn parse_batch(whole: &Bytes, s: usize, e: usize) -> Result<UpdateBatch, Malformed> {
    let mut r = Reader { b: whole, pos: s, end: e };
    // Room for the updates up front (a delta is ~60-90 bytes): no regrowth copies.
    let mut b = UpdateBatch { tick: 0, updates: Vec::with_capacity((e - s) / 64) };
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, VARINT) => b.tick = r.varint()?,
            (2, LEN) => {
                let (s, e) = r.len_delimited()?;
                b.updates.push(parse_update(whole, s, e)?);
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(b)
}

fn parse_update(whole: &Bytes, s: usize, e: usize) -> Result<EntityUpdate, Malformed> {
    let mut r = Reader { b: whole, pos: s, end: e };
    let mut change = None;
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, LEN) => {
                let (s, e) = r.len_delimited()?;
                change = Some(Change::Enter(parse_state(whole, s, e)?));
            }
            (2, LEN) => {
                let (s, e) = r.len_delimited()?;
                change = Some(Change::Delta(parse_delta(whole, s, e)?));
            }
            (3, VARINT) => change = Some(Change::Leave(r.varint()?)),
            _ => r.skip(wt)?,
        }
    }
    Ok(EntityUpdate { change })
}

fn parse_state(whole: &Bytes, s: usize, e: usize) -> Result<EntityState, Malformed> {
    let mut r = Reader { b: whole, pos: s, end: e };
    let mut st = EntityState::default();
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, VARINT) => st.id = r.varint()?,
            (6, VARINT) => st.version = r.varint()?,
            (7, LEN) => {
                let (s, e) = r.len_delimited()?;
                st.components = whole.slice(s..e);
            }
            (8, LEN) => {
                let (s, e) = r.len_delimited()?;
                st.territory = whole.slice(s..e);
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(st)
}

fn parse_delta(whole: &Bytes, s: usize, e: usize) -> Result<EntityDelta, Malformed> {
    let mut r = Reader { b: whole, pos: s, end: e };
    let mut d = EntityDelta::default();
    while let Some((tag, wt)) = r.key()? {
        match (tag, wt) {
            (1, VARINT) => d.id = r.varint()?,
            (2, VARINT) => d.version = r.varint()?,
            (5, LEN) => {
                let (s, e) = r.len_delimited()?;
                d.territory = whole.slice(s..e);
            }
            (7, LEN) => {
                let (s, e) = r.len_delimited()?;
                d.components = Some(whole.slice(s..e));
            }
            _ => r.skip(wt)?,
        }
    }
    Ok(d)
}

/// `PlayerLink/Play` (what `PlayerLinkClient::play` sends), its replies decoded as
/// [`PlayerUpdate`].
pub async fn play(
    ch: Channel,
    rx: ReceiverStream<pb::PlayerMessage>,
) -> Result<tonic::codec::Streaming<PlayerUpdate>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(4 * 1024 * 1024);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/starmesh.v1.PlayerLink/Play");
    let mut req = tonic::Request::new(rx);
    req.extensions_mut().insert(tonic::GrpcMethod::new("starmesh.v1.PlayerLink", "Play"));
    Ok(grpc.streaming(req, path, Codec).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random full `PlayerUpdate` (every field of the bubble's messages, some empty).
    fn random_update(x: &mut u64) -> pb::PlayerUpdate {
        let mut rnd = |m: u64| {
            *x = crate::bots::splitmix(*x);
            *x % m
        };
        let v3 = |a: u64| Some(pb::Vec3 { x: a as f64, y: -1.5, z: 1e9 });
        let msg = match rnd(10) {
            0 => pb::player_update::Msg::InputsDropped(rnd(1 << 40)),
            1 => pb::player_update::Msg::Transferred(pb::Transferred {
                system: "pyro".into(),
                gateway: format!("127.0.0.1:{}", rnd(65536)),
                gate: "gate".into(),
                entity_id: rnd(1 << 50),
            }),
            _ => {
                let n = rnd(40) as usize;
                let updates = (0..n)
                    .map(|_| {
                        let id = rnd(1 << 34);
                        let change = match rnd(3) {
                            0 => pb::entity_update::Change::Enter(pb::EntityState {
                                id,
                                kind: rnd(4) as u32,
                                position: v3(rnd(1000)),
                                velocity: if rnd(2) == 0 { None } else { v3(rnd(10)) },
                                location: "x".repeat(rnd(12) as usize),
                                version: rnd(1 << 20),
                                components: vec![7u8; rnd(300) as usize].into(),
                                territory: "t".repeat(rnd(20) as usize),
                                components_version: rnd(100),
                            }),
                            1 => pb::entity_update::Change::Delta(pb::EntityDelta {
                                id,
                                version: rnd(1 << 20),
                                position: v3(rnd(1000)),
                                velocity: v3(rnd(10)),
                                territory: "u".repeat(rnd(20) as usize),
                                location: "y".repeat(rnd(5) as usize),
                                components: match rnd(3) {
                                    0 => None,
                                    1 => Some(bytes::Bytes::new()),
                                    _ => Some(vec![3u8; rnd(200) as usize].into()),
                                },
                                components_version: rnd(100),
                            }),
                            _ => pb::entity_update::Change::Leave(id),
                        };
                        pb::EntityUpdate { change: Some(change) }
                    })
                    .collect();
                pb::player_update::Msg::Bubble(pb::UpdateBatch { tick: rnd(1 << 33), updates })
            }
        };
        pb::PlayerUpdate { msg: Some(msg) }
    }

    #[test]
    fn the_hand_parser_reads_what_prost_reads() {
        let mut x = 11u64;
        let mut bubbles = 0;
        for _ in 0..500 {
            let full = random_update(&mut x);
            bubbles += usize::from(matches!(full.msg, Some(pb::player_update::Msg::Bubble(_))));
            let bytes = Bytes::from(full.encode_to_vec());
            let want = PlayerUpdate::decode(bytes.clone()).expect("prost decodes");
            assert_eq!(parse(&bytes), Ok(want));
        }
        assert!(bubbles > 300, "{bubbles}");
        // Every truncation of a message is an error or a shorter message, never a panic,
        // and agrees with prost on which.
        let bytes = Bytes::from(random_update(&mut 3).encode_to_vec());
        for cut in 0..bytes.len() {
            let part = bytes.slice(..cut);
            let ours = parse(&part);
            let prost = PlayerUpdate::decode(part.clone());
            assert_eq!(ours.is_ok(), prost.is_ok(), "cut at {cut}");
            if let (Ok(a), Ok(b)) = (ours, prost) {
                assert_eq!(a, b, "cut at {cut}");
            }
        }
        assert!(parse(&Bytes::from_static(b"\x0a\x05\x08")).is_err(), "a length past the end");
        assert!(parse(&Bytes::from_static(b"\x0b")).is_err(), "a group (unsupported)");
        // Field 2 (inputs_dropped): the largest ten-byte varint, and one past it.
        let max = Bytes::from_static(b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01");
        assert_eq!(parse(&max), Ok(PlayerUpdate { msg: Some(Msg::InputsDropped(u64::MAX)) }));
        let over = Bytes::from_static(b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02");
        assert!(parse(&over).is_err() && PlayerUpdate::decode(over).is_err());
    }

    #[test]
    fn reads_what_the_full_messages_wrote() {
        let comps = Bytes::from_static(b"\x08\x07");
        let full = pb::PlayerUpdate {
            msg: Some(pb::player_update::Msg::Bubble(pb::UpdateBatch {
                tick: 42,
                updates: vec![
                    pb::EntityUpdate {
                        change: Some(pb::entity_update::Change::Enter(pb::EntityState {
                            id: 7,
                            kind: 3,
                            position: Some(pb::Vec3 { x: 1.0, y: 2.0, z: 3.0 }),
                            velocity: Some(pb::Vec3 { x: 4.0, y: 5.0, z: 6.0 }),
                            location: "Lorville".into(),
                            version: 9,
                            components: comps.clone(),
                            territory: "hurston".into(),
                            components_version: 2,
                        })),
                    },
                    pb::EntityUpdate {
                        change: Some(pb::entity_update::Change::Delta(pb::EntityDelta {
                            id: 8,
                            version: 11,
                            position: Some(pb::Vec3 { x: 1.0, y: 2.0, z: 3.0 }),
                            velocity: None,
                            territory: "crusader".into(),
                            location: "Orison".into(),
                            components: None,
                            components_version: 5,
                        })),
                    },
                    pb::EntityUpdate {
                        change: Some(pb::entity_update::Change::Delta(pb::EntityDelta {
                            id: 9,
                            version: 1,
                            components: Some(comps.clone()),
                            ..Default::default()
                        })),
                    },
                    pb::EntityUpdate { change: Some(pb::entity_update::Change::Leave(5)) },
                ],
            })),
        };
        let bytes = Bytes::from(full.encode_to_vec());
        let lean = PlayerUpdate::decode(bytes.clone()).expect("decodes");
        assert_eq!(parse(&bytes).as_ref(), Ok(&lean), "the hand parser reads the same");
        let Some(Msg::Bubble(b)) = lean.msg else { panic!("a bubble: {lean:?}") };
        assert_eq!(b.tick, 42);
        let changes: Vec<Change> = b.updates.into_iter().filter_map(|u| u.change).collect();
        assert_eq!(
            changes,
            vec![
                Change::Enter(EntityState {
                    id: 7,
                    version: 9,
                    components: comps.clone(),
                    territory: Bytes::from_static(b"hurston"),
                }),
                Change::Delta(EntityDelta {
                    id: 8,
                    version: 11,
                    territory: Bytes::from_static(b"crusader"),
                    components: None,
                }),
                Change::Delta(EntityDelta {
                    id: 9,
                    version: 1,
                    territory: Bytes::new(),
                    components: Some(comps),
                }),
                Change::Leave(5),
            ]
        );
        for (msg, want) in [
            (pb::player_update::Msg::InputsDropped(3), Msg::InputsDropped(3)),
            (
                pb::player_update::Msg::Transferred(pb::Transferred {
                    system: "pyro".into(),
                    gateway: "127.0.0.1:1".into(),
                    ..Default::default()
                }),
                Msg::Transferred(pb::Transferred {
                    system: "pyro".into(),
                    gateway: "127.0.0.1:1".into(),
                    ..Default::default()
                }),
            ),
        ] {
            let bytes = pb::PlayerUpdate { msg: Some(msg) }.encode_to_vec();
            assert_eq!(PlayerUpdate::decode(bytes.as_slice()).expect("decodes").msg, Some(want));
        }
    }
}
