//! The ServerLink contract (node/proto/PROTOCOL.md) from the outside: a
//! hand-written client, speaking only the protobuf wire, against a real
//! `starmesh replicant` process on loopback. Each test breaks one rule and
//! checks the documented answer, then that the replicant changed nothing
//! (Admin `Lookup` / `Assignments`).

mod common;

use std::time::Duration;

use common::process::Replicant;
use common::{msg, v, write};
use starmesh_node::wire::pb::{self, replicant_message::Msg, server_message};
use starmesh_node::wire::validate::{MAX_COMPONENT_BYTES, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

fn replicant(dir: &tempfile::TempDir) -> Replicant {
    let sol = common::sol_path();
    let r = Replicant::spawn(
        env!("CARGO_BIN_EXE_starmesh"),
        &[
            "--system".as_ref(),
            sol.as_os_str(),
            "--tick-hz".as_ref(),
            "50".as_ref(),
            "--data-dir".as_ref(),
            dir.path().as_os_str(),
        ],
    );
    r.wait_ready(Duration::from_secs(30));
    r
}

fn ty(name: &str, version: u32, max_bytes: u32) -> pb::ComponentType {
    pb::ComponentType { type_name: name.into(), schema_version: version, max_bytes }
}

/// The component types the test game declares (unless a test says otherwise).
fn acme() -> Vec<pb::ComponentType> {
    vec![ty("acme.cargo", 2, 64), ty("acme.crew", 1, 0)]
}

/// A raw ServerLink session: Hello with any version, then whatever the test sends.
struct Raw {
    tx: mpsc::Sender<pb::ServerMessage>,
    rx: Result<Streaming<pb::ReplicantMessage>, Status>,
}

impl Raw {
    async fn hello(r: &Replicant, name: &str, version: u32) -> Raw {
        Self::hello_declaring(r, name, version, acme()).await
    }

    /// Hello declaring the custom component types `components`.
    async fn hello_declaring(
        r: &Replicant,
        name: &str,
        version: u32,
        components: Vec<pb::ComponentType>,
    ) -> Raw {
        let mut c = pb::server_link_client::ServerLinkClient::connect(format!("http://{}", r.grpc))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(64);
        let hello = pb::Hello { server_name: name.into(), protocol_version: version, components };
        tx.send(msg(server_message::Msg::Hello(hello))).await.expect("queue hello");
        let rx = c
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner());
        Raw { tx, rx }
    }

    async fn send(&self, m: pb::ServerMessage) {
        self.tx.send(m).await.expect("stream open");
    }

    /// The next message, `Err` with the status that ended the stream.
    async fn next(&mut self) -> Result<Msg, Status> {
        let rx = match &mut self.rx {
            Ok(rx) => rx,
            Err(s) => return Err(s.clone()),
        };
        match tokio::time::timeout(Duration::from_secs(10), rx.message()).await {
            Ok(Ok(Some(m))) => Ok(m.msg.expect("msg set")),
            Ok(Ok(None)) => Err(Status::ok("stream closed without a status")),
            Ok(Err(s)) => Err(s),
            Err(_) => panic!("no message within 10 s"),
        }
    }

    /// Reads until `f` matches; panics if the stream ends first.
    async fn until<T>(&mut self, mut f: impl FnMut(&Msg) -> Option<T>) -> T {
        loop {
            match self.next().await {
                Ok(m) => {
                    if let Some(t) = f(&m) {
                        return t;
                    }
                }
                Err(s) => panic!("stream ended while waiting: {s:?}"),
            }
        }
    }

    /// Reads until the stream ends; returns its status.
    async fn end(&mut self) -> Status {
        loop {
            if let Err(s) = self.next().await {
                return s;
            }
        }
    }

    async fn grant(&mut self, territory: &str) -> u64 {
        self.until(|m| match m {
            Msg::Grant(g) if g.territory == territory => Some(g.epoch),
            _ => None,
        })
        .await
    }

    async fn committed(&mut self, seq: u64) {
        self.until(|m| matches!(m, Msg::Committed(c) if c.seq >= seq).then_some(())).await
    }

    /// The first rejection reported: (seq, id, reason, current epoch).
    async fn rejected(&mut self) -> (u64, u64, i32, u64) {
        self.until(|m| match m {
            Msg::Rejected(r) => r.first.first().map(|f| (f.seq, f.id, f.reason, f.current_epoch)),
            _ => None,
        })
        .await
    }
}

async fn admin(r: &Replicant) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    pb::admin_client::AdminClient::connect(format!("http://{}", r.grpc)).await.expect("admin")
}

async fn lookup(r: &Replicant, id: u64) -> Option<pb::EntityState> {
    let l = admin(r).await.lookup(pb::LookupRequest { id }).await.expect("lookup").into_inner();
    l.entity
}

async fn owner(r: &Replicant, territory: &str) -> (String, u64) {
    let a = admin(r).await.assignments(pb::AssignmentsRequest {}).await.expect("assignments");
    let a = a.into_inner().assignments.into_iter().find(|a| a.territory == territory);
    a.map(|a| (a.server, a.epoch)).expect("territory listed")
}

/// `s-earth` connected (v1), earth granted, entity 7 written at earth and committed.
async fn earth_with_ship(r: &Replicant) -> (Raw, u64, pb::EntityState) {
    let mut s = Raw::hello(r, "s-earth", PROTOCOL_VERSION).await;
    let welcome = s
        .until(|m| match m {
            Msg::Welcome(w) => Some(*w),
            _ => None,
        })
        .await;
    assert_eq!(welcome.protocol_version, PROTOCOL_VERSION, "the replicant says its version");
    let epoch = s.grant("earth").await;
    s.send(write(1, epoch, 7, (1000.0, 0.0, 0.0))).await;
    s.committed(1).await;
    let e = lookup(r, 7).await.expect("entity 7 resident");
    assert_eq!((e.version, e.territory.as_str()), (1, "earth"));
    (s, epoch, e)
}

#[tokio::test]
async fn an_unknown_protocol_version_is_refused_at_connect_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicant(&dir);
    let before = owner(&r, "earth").await;
    let future = PROTOCOL_VERSION + 41;
    let mut s = Raw::hello(&r, "s-earth", future).await;
    let st = s.end().await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    let want = format!(
        "ServerLink protocol version {future} is not supported: this replicant speaks versions 1..={PROTOCOL_VERSION}"
    );
    assert!(st.message().contains(&want), "{:?}", st.message());
    // Changed nothing: never welcomed, earth not granted to it.
    assert_eq!(owner(&r, "earth").await, before);
    assert_eq!(before.0, "", "earth had no owner");
    // The same name with a version it speaks (and 0: from before versioning) is welcomed.
    for v in [PROTOCOL_VERSION, 0] {
        let mut ok = Raw::hello(&r, "s-earth", v).await;
        let w = ok.until(|m| if let Msg::Welcome(w) = m { Some(w.lease_ms) } else { None }).await;
        assert!(w > 0);
        ok.grant("earth").await;
    }
}

#[tokio::test]
async fn a_stale_epoch_write_is_rejected_with_the_current_epoch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicant(&dir);
    let (mut s, epoch, before) = earth_with_ship(&r).await;
    for (seq, stale) in [(2, epoch - 1), (3, epoch + 1)] {
        s.send(write(seq, stale, 7, (1100.0, 0.0, 0.0))).await;
        assert_eq!(
            s.rejected().await,
            (seq, 7, pb::RejectReason::StaleEpoch as i32, epoch),
            "epoch {stale} against {epoch}"
        );
    }
    assert_eq!(lookup(&r, 7).await, Some(before.clone()), "state unchanged");
    // The stream stays up: a rejection is an answer, not an error.
    s.send(write(4, epoch, 7, (1050.0, 0.0, 0.0))).await;
    s.committed(4).await;
    let after = lookup(&r, 7).await.expect("resident");
    assert_eq!((after.version, after.position), (2, v(1050.0, 0.0, 0.0)));
}

#[tokio::test]
async fn a_write_outside_authority_is_rejected_not_owner_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicant(&dir);
    let (_earth, epoch, before) = earth_with_ship(&r).await;
    let mut moon = Raw::hello(&r, "s-moon", PROTOCOL_VERSION).await;
    moon.grant("moon").await;
    // Earth's current epoch, but earth is not moon's: an existing entity...
    moon.send(write(1, epoch, 7, (1100.0, 0.0, 0.0))).await;
    assert_eq!(moon.rejected().await, (1, 7, pb::RejectReason::NotOwner as i32, epoch));
    // ...and a new one placed in earth.
    moon.send(write(2, epoch, 8, (900.0, 0.0, 0.0))).await;
    assert_eq!(moon.rejected().await, (2, 8, pb::RejectReason::NotOwner as i32, epoch));
    assert_eq!(lookup(&r, 7).await, Some(before), "entity 7 unchanged");
    assert_eq!(lookup(&r, 8).await, None, "entity 8 not created");
    assert_eq!(owner(&r, "earth").await, ("s-earth".to_string(), epoch), "authority unchanged");
}

#[tokio::test]
async fn an_oversized_component_ends_the_stream_with_invalid_argument_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicant(&dir);
    let (mut s, epoch, before) = earth_with_ship(&r).await;
    let mut big = write(2, epoch, 7, (1100.0, 0.0, 0.0));
    if let Some(server_message::Msg::Write(w)) = &mut big.msg {
        w.components = vec![7u8; MAX_COMPONENT_BYTES + 1].into();
    }
    s.send(big).await;
    let st = s.end().await;
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let want = format!(
        "field `write.components` is {} bytes, more than {MAX_COMPONENT_BYTES}",
        MAX_COMPONENT_BYTES + 1
    );
    assert!(st.message().contains(&want), "{:?}", st.message());
    let after = lookup(&r, 7).await.expect("still resident: the replicant keeps entities");
    assert_eq!(after, before, "the bad write applied nothing");

    // A message over the whole-message bound (64 KiB) is refused the same way.
    let mut s = Raw::hello(&r, "s-earth", PROTOCOL_VERSION).await;
    let epoch = s.grant("earth").await;
    let mut huge = write(1, epoch, 7, (1100.0, 0.0, 0.0));
    if let Some(server_message::Msg::Write(w)) = &mut huge.msg {
        w.components = vec![7u8; 80 * 1024].into();
    }
    s.send(huge).await;
    let st = s.end().await;
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().starts_with("starmesh.wire: undecodable message"), "{st:?}");
    assert_eq!(lookup(&r, 7).await.map(|e| e.version), Some(before.version));
}

fn comp(name: &str, version: u32, data: &[u8]) -> pb::CustomComponent {
    pb::CustomComponent {
        type_name: name.into(),
        schema_version: version,
        data: bytes::Bytes::copy_from_slice(data),
    }
}

fn typed_write(seq: u64, epoch: u64, custom: Vec<pb::CustomComponent>) -> pb::ServerMessage {
    let mut w = write(seq, epoch, 7, (1000.0, 0.0, 0.0));
    if let Some(server_message::Msg::Write(w)) = &mut w.msg {
        w.components = bytes::Bytes::new();
        w.custom = custom;
    }
    w
}

#[tokio::test]
async fn custom_components_replicate_persist_and_stream_and_bad_ones_change_nothing() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let mut r = replicant(&dir);
    let (mut s, epoch, _) = earth_with_ship(&r).await;
    let set = vec![comp("acme.crew", 1, b"4"), comp("acme.cargo", 2, b"ore")];
    s.send(typed_write(2, epoch, set)).await;
    s.committed(2).await;
    let stored = lookup(&r, 7).await.expect("resident");
    let decoded = pb::ComponentSet::decode(stored.components.as_ref()).expect("a ComponentSet");
    let want = vec![comp("acme.cargo", 2, b"ore"), comp("acme.crew", 1, b"4")];
    assert_eq!(decoded.custom, want, "stored sorted by type name");

    // Streamed like positions: a neighbourhood subscription gets them.
    let mut moon = Raw::hello(&r, "s-moon", PROTOCOL_VERSION).await;
    moon.grant("moon").await;
    let interest = pb::Interest { center: v(1000.0, 0.0, 0.0), radius: 500.0 };
    moon.send(msg(server_message::Msg::Neighbourhood(interest))).await;
    let seen = moon
        .until(|m| match m {
            Msg::Neighbourhood(b) => b.updates.iter().find_map(|u| match &u.change {
                Some(pb::entity_update::Change::Enter(e)) if e.id == 7 => Some(e.clone()),
                _ => None,
            }),
            _ => None,
        })
        .await;
    assert_eq!(seen.components, stored.components);

    // A bad set (an invalid type name, or too large) ends the stream with
    // INVALID_ARGUMENT and changes nothing.
    for (bad, field) in [
        (vec![comp("Acme Cargo", 1, b"x")], "field `write.custom.type_name` is out of range"),
        (vec![comp("acme.cargo", 1, &vec![0; MAX_COMPONENT_BYTES])], "field `write.custom` is"),
    ] {
        let mut s = Raw::hello(&r, "s-earth", PROTOCOL_VERSION).await;
        let epoch = s.grant("earth").await;
        s.send(typed_write(1, epoch, bad)).await;
        let st = s.end().await;
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(st.message().contains(field), "{:?}", st.message());
        assert_eq!(lookup(&r, 7).await.map(|e| e.components), Some(stored.components.clone()));
    }

    // Persisted: a replicant restarted after kill -9 has them.
    drop((s, moon));
    r.kill_9();
    let r = replicant(&dir);
    let back = lookup(&r, 7).await.map(|e| e.components);
    let back = match back {
        Some(c) => c,
        // Not resident until needed: a server's grant streams it back in.
        None => {
            let mut s = Raw::hello(&r, "s-earth", PROTOCOL_VERSION).await;
            s.until(|m| match m {
                Msg::HandoffIn(h) => {
                    h.entity.as_ref().filter(|e| e.id == 7).map(|e| e.components.clone())
                }
                _ => None,
            })
            .await
        }
    };
    assert_eq!(back, stored.components);
}

/// `starmesh_rejected_writes_total{reason}` from the replicant's `/metrics`.
fn rejected_total(r: &Replicant, reason: &str) -> f64 {
    let (status, body) = common::process::http_get(r.metrics, "/metrics");
    assert_eq!(status, 200, "metrics: {body}");
    let want = format!("reason=\"{reason}\"");
    body.lines()
        .filter(|l| l.starts_with("starmesh_rejected_writes_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_typed_write_of_an_unregistered_type_or_another_version_is_rejected_and_changes_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let r = replicant(&dir);
    let (mut s, epoch, _) = earth_with_ship(&r).await;
    s.send(typed_write(2, epoch, vec![comp("acme.cargo", 2, b"ore")])).await;
    s.committed(2).await;
    let before = lookup(&r, 7).await.expect("resident");
    let cases = [
        // Nobody declared `acme.hull`.
        (
            3,
            vec![comp("acme.hull", 1, b"x")],
            pb::RejectReason::ComponentUnregistered,
            "component_unregistered",
        ),
        // `acme.cargo` is registered at version 2.
        (
            4,
            vec![comp("acme.cargo", 3, b"ice")],
            pb::RejectReason::ComponentVersion,
            "component_version",
        ),
        // ...with at most 64 bytes; one bad component refuses the whole write.
        (
            5,
            vec![comp("acme.crew", 1, b"4"), comp("acme.cargo", 2, &[0; 65])],
            pb::RejectReason::ComponentTooLarge,
            "component_too_large",
        ),
    ];
    for (seq, set, reason, label) in cases {
        let counted = rejected_total(&r, label);
        s.send(typed_write(seq, epoch, set)).await;
        assert_eq!(s.rejected().await, (seq, 7, reason as i32, 0), "{label}");
        assert_eq!(lookup(&r, 7).await, Some(before.clone()), "{label}: state unchanged");
        assert_eq!(rejected_total(&r, label), counted + 1.0, "{label} counted");
    }
    // An answer, not an error: the stream stays up and a registered write applies.
    s.send(typed_write(6, epoch, vec![comp("acme.crew", 1, b"5")])).await;
    s.committed(6).await;
    assert_eq!(lookup(&r, 7).await.map(|e| e.version), Some(before.version + 1));
}

#[tokio::test]
async fn a_conflicting_component_registration_is_refused_at_connect_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicant(&dir);
    let (mut earth, epoch, _) = earth_with_ship(&r).await;
    let moon_before = owner(&r, "moon").await;
    // Another version of a type `s-earth` (still connected) holds.
    let mut moon =
        Raw::hello_declaring(&r, "s-moon", PROTOCOL_VERSION, vec![ty("acme.cargo", 3, 64)]).await;
    let st = moon.end().await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    for part in [
        "component type `acme.cargo` is registered at schema version 2 (max 64 bytes)",
        "by connected server `s-earth`",
        "this server declares version 3 (max 64 bytes)",
    ] {
        assert!(st.message().contains(part), "{part:?} in {:?}", st.message());
    }
    // Changed nothing: moon not granted to it, and the registry is as before.
    assert_eq!(owner(&r, "moon").await, moon_before);
    earth.send(typed_write(2, epoch, vec![comp("acme.cargo", 2, b"ore")])).await;
    earth.committed(2).await;
    // Once every server of version 2 is gone, version 3 may register (an upgrade).
    drop(earth);
    let mut up =
        Raw::hello_declaring(&r, "s-earth", PROTOCOL_VERSION, vec![ty("acme.cargo", 3, 64)]).await;
    let epoch = up.grant("earth").await;
    up.send(typed_write(1, epoch, vec![comp("acme.cargo", 3, b"ice")])).await;
    up.committed(1).await;
    let e = lookup(&r, 7).await.expect("resident");
    let set = <pb::ComponentSet as prost::Message>::decode(e.components.as_ref()).expect("set");
    assert_eq!(set.custom, vec![comp("acme.cargo", 3, b"ice")]);
}
