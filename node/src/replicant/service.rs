//! tonic glue: the server link, the gateway link, the admin service, and the
//! `/metrics` + `/readyz` HTTP endpoint. Every inbound message is validated
//! (`wire::validate`) before it touches state; an invalid or undecodable one
//! ends only its own stream, with a typed `InvalidArgument` status.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, WatchStream};
use tonic::{Request, Response, Status, Streaming};

use crate::model::ServerName;
use crate::wire::pb::{self, replicant_message::Msg};
use crate::wire::validate::{self, GatewayCommand, MAX_MESSAGE_BYTES, ServerCommand};

use super::authority::Fence;
use super::interest::Subscription;
use super::state::WriteOutcome;
use super::{GatewayConn, Player, ServerConn, Shared};

/// Minimum outbound queue of a server stream, in messages (see `session`).
pub const SERVER_QUEUE_FLOOR: usize = 65_536;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct Svc(pub Arc<Shared>);

pub async fn serve_grpc(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let svc = Svc(shared.clone());
    let router = tonic::transport::Server::builder()
        .add_service(
            pb::server_link_server::ServerLinkServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::gateway_link_server::GatewayLinkServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::gate_link_server::GateLinkServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::admin_server::AdminServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let stop = async move { shared.shutdown.notified().await };
    // Mesh mTLS when this process has it (--tls-dir): every link to the replicant.
    let r = match crate::tls::process() {
        Some(tls) => {
            router.serve_with_incoming_shutdown(crate::tls::incoming(listener, tls), stop).await
        }
        None => {
            // Accepted sockets do not inherit TCP_NODELAY, and tonic sets it only on
            // listeners it binds itself. Without it Nagle holds a tick's small batch
            // until the previous one is acknowledged (delayed ACK: up to 40 ms), so
            // subscribers got two ticks at once (BENCHMARKS.md, "Nagle").
            let incoming = TcpListenerStream::new(listener).map(|c| {
                let c = c?;
                let _ = c.set_nodelay(true);
                Ok::<_, std::io::Error>(c)
            });
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "gRPC server ended");
    }
}

pub async fn serve_metrics(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    use axum::{Router, http::StatusCode, routing::get};
    let s1 = shared.clone();
    let s2 = shared.clone();
    let app = Router::new()
        .route("/metrics", get(move || async move { s1.metrics.render() }))
        // Liveness: the process answers (readiness, below, waits for recovery).
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match s2.not_ready_reason() {
                    None => (StatusCode::OK, "ready"),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shared.shutdown.notified().await })
        .await
    {
        tracing::error!(error = %e, "metrics server ended");
    }
}

/// A decode failure (garbage, truncated or oversized message) becomes a typed error too.
fn undecodable(s: &Status) -> Status {
    Status::invalid_argument(format!("starmesh.wire: undecodable message: {}", s.message()))
}

/// Whether an error from reading a stream means the connection or the stream
/// broke under it (the peer crashed or was aborted: reset, cancel, broken
/// pipe, GOAWAY, EOF mid-frame) rather than a message that arrived and could
/// not be decoded. A crashed game server is a disconnect to recover from, not
/// a bad message: counting it as one would page whoever watches
/// `starmesh_bad_messages_total` for every kill.
///
/// How tonic (0.14) reports these: an h2 or hyper body error becomes a status
/// whose message starts "h2 protocol error" (the h2 error itself is dropped on
/// the way, so it cannot be downcast), RST_STREAM(CANCEL) and a dropped call
/// become `Cancelled`, a refused stream or keep-alive timeout `Unavailable`,
/// and other I/O failures keep the `io::Error` as the status's source. Decode
/// and size failures are `Internal`/`OutOfRange` with none of these, so they
/// stay bad messages. `tests/replicant_link.rs` pins this against a real
/// aborted client, so a tonic upgrade that changes it fails there.
pub fn is_transport_error(s: &Status) -> bool {
    if matches!(s.code(), tonic::Code::Cancelled | tonic::Code::Unavailable)
        || s.message().starts_with("h2 protocol error")
    {
        return true;
    }
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// How an inbound session stream ended.
enum StreamEnd {
    /// A message that could not be decoded or validated: the stream is ended with this status.
    Bad(Status),
    /// The connection or stream broke under it (the peer crashed or was aborted).
    Broken(Status),
    /// The peer closed it.
    Closed,
    /// A kill or shutdown here; whoever stopped it already accounted for it.
    StoppedHere,
}

impl StreamEnd {
    /// The status to end the stream with, for a bad message only.
    fn into_bad(self) -> Option<Status> {
        match self {
            StreamEnd::Bad(s) => Some(s),
            _ => None,
        }
    }
}

/// The next message of a session, or how its stream ended. Shared by the server
/// and gateway sessions so both tell a bad message from a dead peer the same way.
async fn next_message<T>(
    inbound: &mut Streaming<T>,
    kill: &Notify,
    shutdown: &Notify,
) -> Result<T, StreamEnd> {
    let msg = tokio::select! {
        _ = kill.notified() => return Err(StreamEnd::StoppedHere),
        _ = shutdown.notified() => return Err(StreamEnd::StoppedHere),
        msg = inbound.message() => msg,
    };
    match msg {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(StreamEnd::Closed),
        Err(s) if is_transport_error(&s) => Err(StreamEnd::Broken(s)),
        Err(s) => Err(StreamEnd::Bad(undecodable(&s))),
    }
}

/// Counts and logs how an inbound stream ended.
fn record_end(m: &super::metrics::Metrics, link: &'static str, end: &StreamEnd) {
    match end {
        StreamEnd::Bad(status) => {
            m.bad_messages.inc();
            tracing::warn!(link, status = %status.message(), "stream ended by a bad message");
        }
        StreamEnd::Broken(status) => {
            m.stream_disconnects.with_label_values(&[link, "reset"]).inc();
            tracing::info!(link, code = ?status.code(), status = %status.message(), "stream broke (peer gone)");
        }
        StreamEnd::Closed => {
            m.stream_disconnects.with_label_values(&[link, "closed"]).inc();
        }
        StreamEnd::StoppedHere => {}
    }
}

#[tonic::async_trait]
impl pb::server_link_server::ServerLink for Svc {
    type SessionStream = BoxStream<pb::ReplicantMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::ServerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let shared = self.0.clone();
        // A grant queues one HandoffIn per entity of the territory at once (under
        // the lock, so nobody drains meanwhile): the queue must hold a whole
        // territory, or a takeover disconnects the very server it picked.
        // Neighbourhood batches still use only `queue_capacity` of it (tick.rs).
        let (tx, rx) = mpsc::channel(shared.cfg.queue_capacity.max(SERVER_QUEUE_FLOOR));
        let (committed_tx, committed_rx) = watch::channel((0u64, 0u64));
        let kill = Arc::new(Notify::new());
        let out = ReceiverStream::new(rx);
        // `Committed` acks are coalesced in a watch channel: they can never fill the queue.
        let acks = WatchStream::from_changes(committed_rx).map(|(seq, tick)| {
            Ok(pb::ReplicantMessage { msg: Some(Msg::Committed(pb::Committed { seq, tick })) })
        });
        let stream = futures::stream::select(out, acks);
        tokio::spawn(async move {
            server_session(shared, &mut inbound, tx, committed_tx, kill).await;
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

async fn server_session(
    shared: Arc<Shared>,
    inbound: &mut Streaming<pb::ServerMessage>,
    tx: super::ServerTx,
    committed: watch::Sender<(u64, u64)>,
    kill: Arc<Notify>,
) {
    let m = &shared.metrics;
    let mut session: Option<(u64, ServerName)> = None;
    let end = loop {
        let msg = match next_message(inbound, &kill, &shared.shutdown).await {
            Ok(msg) => msg,
            Err(end) => break end,
        };
        m.count("server", "in", msg.encoded_len());
        // Read before `server_message` consumes the message (the registry's inputs).
        let declared = match validate::declared_components(&msg) {
            Ok(d) => d,
            Err(e) => break StreamEnd::Bad(e.into()),
        };
        let typed = validate::written_components(&msg);
        let cmd = match validate::server_message(msg) {
            Ok(c) => c,
            Err(e) => break StreamEnd::Bad(e.into()),
        };
        let mut core = shared.lock();
        match (cmd, &session) {
            (ServerCommand::Hello(name), None) => {
                let conn = core.next_conn();
                // A conflicting component declaration refuses the whole Hello: nothing changed.
                if let Err(c) =
                    core.components.register(conn, &name, declared.as_deref().unwrap_or_default())
                {
                    tracing::warn!(server = %name, error = %c, "server refused at connect");
                    break StreamEnd::Bad(Status::failed_precondition(format!(
                        "starmesh.wire: {c}"
                    )));
                }
                core.servers.insert(
                    conn,
                    ServerConn {
                        name: name.clone(),
                        tx: tx.clone(),
                        kill: kill.clone(),
                        committed: committed.clone(),
                        sub: None,
                        slow_ticks: 0,
                    },
                );
                tracing::info!(server = %name, conn, "server connected");
                core.send_control(
                    conn,
                    Msg::Welcome(pb::Welcome {
                        lease_ms: shared.cfg.lease.as_millis() as u64,
                        protocol_version: validate::PROTOCOL_VERSION,
                    }),
                    m,
                );
                // A connection under the same name supersedes the old one.
                if let Some(old) = core.world.authority.conn_of(&name).filter(|c| *c != conn)
                    && let Some(s) = core.servers.remove(&old)
                {
                    let _ = s.tx.try_send(Err(Status::aborted(
                        "starmesh: superseded by a newer connection",
                    )));
                    s.kill.notify_one();
                }
                // A dynamic layout's cells are balanced by players when a server joins.
                if core.world.authority.is_balanced() {
                    super::partition::refresh_players(&mut core);
                }
                let changes = core.world.authority.connect(name.clone(), conn, Instant::now());
                core.apply_changes(changes, m);
                session = Some((conn, name));
            }
            (ServerCommand::Hello(_), Some(_)) => {
                break StreamEnd::Bad(validate::WireError::Unexpected("second hello").into());
            }
            (_, None) => {
                break StreamEnd::Bad(
                    validate::WireError::Unexpected("first message must be hello").into(),
                );
            }
            (ServerCommand::Heartbeat, Some((conn, name))) => {
                core.world.authority.heartbeat(name, *conn, Instant::now())
            }
            (ServerCommand::Neighbourhood(i), Some((conn, _))) => {
                let budget = shared.cfg.budget_bytes;
                if let Some(s) = core.servers.get_mut(conn) {
                    match (i, s.sub.as_mut()) {
                        (Some(i), Some(sub)) => sub.interest = i,
                        (Some(i), None) => s.sub = Some(Subscription::new(i, budget)),
                        (None, _) => s.sub = None,
                    }
                }
            }
            (ServerCommand::GateEnter(g), Some((conn, name))) => {
                let (conn, name) = (*conn, name.clone());
                super::gate::enter(&shared, &mut core, conn, &name, g);
            }
            (ServerCommand::Write(w), Some((conn, name))) => {
                let (conn, seq, id) = (*conn, w.seq, w.id);
                if let Err(r) = core.components.check(&typed) {
                    // A typed component the shard's registry does not allow: refused whole.
                    m.rejected_writes.with_label_values(&[r.label()]).inc();
                    let r =
                        pb::WriteRejected { seq, id, reason: r.reason() as i32, current_epoch: 0 };
                    core.tick_rejections.entry(conn).or_default().add(r);
                    continue;
                }
                if core.gates.fences(id) {
                    // Left (or leaving) through a jump gate: a write must not
                    // re-create it here (that would be a second copy).
                    m.rejected_writes.with_label_values(&["gate_in_transit"]).inc();
                    let r = pb::WriteRejected {
                        seq,
                        id,
                        reason: pb::RejectReason::GateInTransit as i32,
                        current_epoch: 0,
                    };
                    core.tick_rejections.entry(conn).or_default().add(r);
                    continue;
                }
                if core.wb.is_full() {
                    m.rejected_writes.with_label_values(&["backlog_full"]).inc();
                    tracing::error!(
                        backlog = core.wb.buffered(),
                        "store backlog bound reached: refusing writes"
                    );
                    let r = pb::WriteRejected {
                        seq,
                        id,
                        reason: pb::RejectReason::BacklogFull as i32,
                        current_epoch: 0,
                    };
                    core.tick_rejections.entry(conn).or_default().add(r);
                    continue;
                }
                match core.world.apply_write(name, &w) {
                    WriteOutcome::Applied { created, .. } => {
                        m.writes_applied.inc();
                        let a = core.tick_acks.entry(conn).or_insert(0);
                        *a = (*a).max(seq);
                        if created {
                            core.tick_created.push((conn, id));
                        }
                    }
                    WriteOutcome::Rejected(f) => {
                        let (reason, current, label) = match f {
                            Fence::StaleEpoch { current } => {
                                (pb::RejectReason::StaleEpoch, current, "stale_epoch")
                            }
                            Fence::NotOwner { current } => {
                                (pb::RejectReason::NotOwner, current, "not_owner")
                            }
                        };
                        if label == "stale_epoch" {
                            m.stale_epoch_rejections.inc();
                        }
                        m.rejected_writes.with_label_values(&[label]).inc();
                        let r = pb::WriteRejected {
                            seq,
                            id,
                            reason: reason as i32,
                            current_epoch: current,
                        };
                        core.tick_rejections.entry(conn).or_default().add(r);
                    }
                }
            }
        }
    };
    record_end(m, "server", &end);
    let end = end.into_bad();
    let mut core = shared.lock();
    match session {
        Some((conn, name)) => {
            tracing::info!(server = %name, conn, "server stream closed; giving its territories away");
            core.components.release(conn);
            core.drop_server(
                conn,
                end.unwrap_or_else(|| Status::cancelled("starmesh: stream closed")),
                m,
            );
        }
        None => {
            if let Some(s) = end {
                let _ = tx.try_send(Err(s));
            }
        }
    }
}

#[tonic::async_trait]
impl pb::gateway_link_server::GatewayLink for Svc {
    type SessionStream = BoxStream<pb::GatewayUpdate>;

    async fn session(
        &self,
        req: Request<Streaming<pb::GatewayMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let shared = self.0.clone();
        let (tx, rx) = mpsc::channel(shared.cfg.queue_capacity);
        let kill = Arc::new(Notify::new());
        let conn = {
            let mut core = shared.lock();
            let conn = core.next_conn();
            core.gateways.insert(
                conn,
                GatewayConn {
                    tx: tx.clone(),
                    kill: kill.clone(),
                    players: BTreeSet::new(),
                    stalled_ticks: 0,
                },
            );
            conn
        };
        tokio::spawn(async move { gateway_session(shared, &mut inbound, conn, kill).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn gateway_session(
    shared: Arc<Shared>,
    inbound: &mut Streaming<pb::GatewayMessage>,
    conn: u64,
    kill: Arc<Notify>,
) {
    let m = &shared.metrics;
    let end = loop {
        let msg = match next_message(inbound, &kill, &shared.shutdown).await {
            Ok(msg) => msg,
            Err(end) => break end,
        };
        m.count("gateway", "in", msg.encoded_len());
        let cmd = match validate::gateway_message(msg) {
            Ok(c) => c,
            Err(e) => break StreamEnd::Bad(e.into()),
        };
        let mut core = shared.lock();
        match cmd {
            GatewayCommand::Attach { player, entity, radius, position } => {
                // The bubble goes where the ship is. An evicted ship (its player
                // was away) is not in memory but exists: centring on it makes
                // the next tick stream it back in and hand it to its owner.
                // Centred on the placement instead, the ship would never come
                // back, and spawn requests would try to create it a second time.
                let center = match core.world.entity(entity) {
                    Some(e) => e.position,
                    None => core.world.evicted_at(entity).map_or(position, |(p, _)| p),
                };
                // Capped (level of detail); the player's own ship is always held.
                let sub = Subscription::new(
                    crate::model::Interest { center, radius },
                    shared.cfg.budget_bytes,
                )
                .capped(shared.cfg.bubble_cap, vec![entity]);
                // Re-attaching (e.g. to another gateway) replaces the old placement.
                if let Some(old) =
                    core.players.insert(player, Player { conn, entity, sub, slow_ticks: 0 })
                    && let Some(g) = core.gateways.get_mut(&old.conn)
                {
                    g.players.remove(&player);
                }
                if let Some(g) = core.gateways.get_mut(&conn) {
                    g.players.insert(player);
                }
            }
            GatewayCommand::Detach(player) => {
                if core.players.get(&player).is_some_and(|p| p.conn == conn) {
                    core.players.remove(&player);
                }
                if let Some(g) = core.gateways.get_mut(&conn) {
                    g.players.remove(&player);
                }
            }
            GatewayCommand::Input { player, seq, input } => {
                // Routed to whoever owns the player's entity's territory now,
                // so inputs follow the player across handoffs and takeovers.
                let Some(p) = core.players.get(&player).filter(|p| p.conn == conn) else {
                    continue;
                };
                let entity = p.entity;
                let territory = match core.world.entity(entity) {
                    Some(e) => e.territory.clone(),
                    // Evicted: on its way back (the bubble centred on it asks for
                    // it). Dropped, not routed: the placement's owner would take a
                    // spawn for a ship that does not exist and create a second
                    // copy. The gateway re-asks until the ship shows.
                    None if core.world.evicted_at(entity).is_some() => {
                        core.stream_in_wanted.push(entity);
                        continue;
                    }
                    // Not created yet: the owner of the territory the player was
                    // placed in is the one that may create it (e.g. a spawn).
                    None => core.world.map.locate(p.sub.interest.center),
                };
                // A spawn names its territory as the gateway sees it: a base
                // territory. In a dynamic layout the replicant alone knows the
                // cells, so it names the cell the ship will be created in, and
                // routes the spawn to that cell's owner (whose epoch the first
                // write then carries).
                let (territory, input) = if core.world.map.partition().is_empty()
                    || core.world.entity(entity).is_some()
                {
                    (territory, input)
                } else {
                    spawn_in_cell(&core.world.map, &input).unwrap_or((territory, input))
                };
                let owner = core.world.authority.grant(&territory).and_then(|g| g.owner.clone());
                if let Some(server_conn) = owner.and_then(|o| core.world.authority.conn_of(&o)) {
                    let msg = Msg::PlayerInput(pb::PlayerInput {
                        player_id: player,
                        seq,
                        input,
                        entity_id: entity,
                    });
                    core.send_control(server_conn, msg, m);
                }
            }
        }
    };
    record_end(m, "gateway", &end);
    shared.lock().drop_gateway(conn, end.into_bad());
}

/// Moves every territory away from `server` and stops giving it new ones
/// (Admin `Drain`, and the local autoscaler before it stops a server).
/// Returns how many it still owns: 0 = safe to stop.
pub fn drain(shared: &Shared, server: &str) -> u32 {
    let mut core = shared.lock();
    if core.world.authority.is_balanced() {
        super::partition::refresh_players(&mut core);
    }
    let (changes, remaining) = core.world.authority.drain(server);
    core.apply_changes(changes, &shared.metrics);
    remaining as u32
}

/// The gateway's `Spawn` (the mesh's own command, `GameInput`) with its
/// territory replaced by the cell its position lies in; `None` for any other input.
fn spawn_in_cell(
    map: &crate::territory::TerritoryMap,
    input: &bytes::Bytes,
) -> Option<(crate::model::TerritoryName, bytes::Bytes)> {
    let mut g = pb::GameInput::decode(input.as_ref()).ok()?;
    let Some(pb::game_input::Cmd::Spawn(sp)) = g.cmd.as_mut() else { return None };
    let p = sp.position.as_ref()?;
    let pos = crate::model::Vec3::new(p.x, p.y, p.z);
    if ![pos.x, pos.y, pos.z].iter().all(|c| c.is_finite()) {
        return None;
    }
    let cell = map.locate(pos);
    sp.territory = cell.to_string();
    Some((cell, g.encode_to_vec().into()))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Svc {
    async fn assignments(
        &self,
        _: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<pb::AssignmentsResponse>, Status> {
        let core = self.0.lock();
        let a = &core.world.authority;
        let mut resp = pb::AssignmentsResponse::default();
        for (t, g) in a.grants() {
            resp.assignments.push(pb::Assignment {
                territory: t.to_string(),
                server: g.owner.as_deref().unwrap_or_default().to_string(),
                epoch: g.epoch,
            });
        }
        for (s, draining) in a.live_servers() {
            if draining {
                resp.draining_servers.push(s.to_string());
            } else {
                resp.live_servers.push(s.to_string());
            }
        }
        Ok(Response::new(resp))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let server = req.into_inner().server;
        if server.is_empty() || server.len() > validate::MAX_NAME_LEN {
            return Err(validate::WireError::Missing("drain.server").into());
        }
        Ok(Response::new(pb::DrainResponse { territories_remaining: drain(&self.0, &server) }))
    }

    async fn counts(
        &self,
        _: Request<pb::CountsRequest>,
    ) -> Result<Response<pb::CountsResponse>, Status> {
        let core = self.0.lock();
        let entities = core.world.counts_per_territory();
        let players = super::tick::player_counts(&core);
        let mut resp = pb::CountsResponse {
            players: core.players.len() as u64,
            entities: (core.world.len() + core.world.evicted_len()) as u64,
            resident_entities: core.world.len() as u64,
            evicted_entities: core.world.evicted_len() as u64,
            in_transit_entities: core.gates.in_transit() as u64,
            ..Default::default()
        };
        for t in core.world.map.names() {
            let c = entities.get(&t).copied().unwrap_or_default();
            resp.territories.push(pb::TerritoryCount {
                players: players.get(&t).copied().unwrap_or(0),
                entities: c.resident + c.evicted,
                resident_entities: c.resident,
                evicted_entities: c.evicted,
                territory: t.to_string(),
            });
        }
        Ok(Response::new(resp))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupResponse>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(super::gate::lookup(&self.0.lock(), id)))
    }

    async fn get_partition(
        &self,
        _: Request<pb::GetPartitionRequest>,
    ) -> Result<Response<pb::PartitionState>, Status> {
        Ok(Response::new(super::partition::state(&self.0.lock(), Vec::new())))
    }

    async fn set_partition(
        &self,
        req: Request<pb::SetPartitionRequest>,
    ) -> Result<Response<pb::PartitionState>, Status> {
        let (split, merge) = validate::partition_request(req.into_inner())?;
        let r = super::partition::Request { split, merge };
        Ok(Response::new(super::partition::request(&self.0, r).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_disconnects_and_decode_failures_are_bad_messages() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        for s in [
            Status::cancelled("h2 protocol error: stream no longer needed"),
            Status::internal("h2 protocol error: error reading a body from connection"),
            Status::unknown("h2 protocol error: connection reset"),
            Status::unavailable("keep-alive timed out"),
            Status::from_error(Box::new(reset)),
        ] {
            assert!(is_transport_error(&s), "{s:?}");
        }
        for s in [
            Status::internal("failed to decode Protobuf message: invalid wire type"),
            Status::out_of_range("Error, decoded message length too large"),
            Status::invalid_argument("starmesh.wire: bad"),
        ] {
            assert!(!is_transport_error(&s), "{s:?}");
        }
    }
}
