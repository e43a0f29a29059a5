//! Shared test helpers: an in-process replicant and typed clients, the test
//! world, a real PostgreSQL (`pg`) and the replicant as a process (`process`).
#![allow(dead_code)]

pub mod pg;
pub mod process;

use std::sync::Arc;
use std::time::Duration;

use starmesh_node::replicant::{self, Config, Running};
use starmesh_node::resources::{self, Mesh};
use starmesh_node::store::Store;
use starmesh_node::wire::pb::{self, replicant_message::Msg, server_message};
use tokio::sync::mpsc;
use tonic::Streaming;

/// The test world file: StarSystem `sol` (earth with a moon, a station) and
/// its static ServerLayout (s-earth, s-moon, s-station, s-deep), in one file.
pub fn sol_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sol.yaml")
}

pub fn sol() -> Mesh {
    resources::load(&[sol_path()], "0").expect("the test world is valid")
}

/// Starts an in-process replicant and waits until it has loaded the store.
pub async fn start(mesh: &Mesh, cfg: Config, store: Arc<dyn Store>) -> Running {
    let r = replicant::start(
        mesh,
        cfg,
        store,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("replicant starts");
    tokio::time::timeout(Duration::from_secs(30), r.loaded()).await.expect("replicant loads");
    r
}

pub fn fast_config() -> Config {
    Config { tick_hz: 50, lease: Duration::from_millis(800), ..Config::default() }
}

pub struct ServerClient {
    pub tx: mpsc::Sender<pb::ServerMessage>,
    pub rx: Streaming<pb::ReplicantMessage>,
}

pub fn msg(m: server_message::Msg) -> pb::ServerMessage {
    pb::ServerMessage { msg: Some(m) }
}

pub fn v(x: f64, y: f64, z: f64) -> Option<pb::Vec3> {
    Some(pb::Vec3 { x, y, z })
}

pub fn write(seq: u64, epoch: u64, id: u64, p: (f64, f64, f64)) -> pb::ServerMessage {
    msg(server_message::Msg::Write(pb::EntityWrite {
        seq,
        epoch,
        id,
        kind: 1,
        position: v(p.0, p.1, p.2),
        velocity: v(0.0, 0.0, 0.0),
        location: String::new(),
        components: bytes::Bytes::from(format!("state-{seq}")),
        custom: vec![],
    }))
}

impl ServerClient {
    pub async fn connect(addr: std::net::SocketAddr, name: &str) -> Self {
        let mut client =
            pb::server_link_client::ServerLinkClient::connect(format!("http://{addr}"))
                .await
                .expect("connect");
        let (tx, rx) = mpsc::channel(1024);
        tx.send(msg(server_message::Msg::Hello(pb::Hello {
            server_name: name.into(),
            protocol_version: 1,
            components: vec![],
        })))
        .await
        .unwrap();
        let rx = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("session")
            .into_inner();
        Self { tx, rx }
    }

    pub async fn send(&self, m: pb::ServerMessage) {
        self.tx.send(m).await.expect("stream open");
    }

    /// Next message, failing the test after a timeout.
    pub async fn next(&mut self) -> Msg {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Ok(Some(m))) => m.msg.expect("msg set"),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until `f` returns Some, failing after a timeout.
    pub async fn until<T>(&mut self, mut f: impl FnMut(&Msg) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.message()).await;
            match m {
                Ok(Ok(Some(pb::ReplicantMessage { msg: Some(m) }))) => {
                    if let Some(t) = f(&m) {
                        return t;
                    }
                }
                other => panic!("stream ended or timed out while waiting: {other:?}"),
            }
        }
    }

    pub async fn grant_for(&mut self, territory: &str) -> u64 {
        let t = territory.to_string();
        self.until(|m| match m {
            Msg::Grant(g) if g.territory == t => Some(g.epoch),
            _ => None,
        })
        .await
    }

    pub async fn committed(&mut self, seq: u64) {
        self.until(|m| matches!(m, Msg::Committed(c) if c.seq >= seq).then_some(())).await
    }
}
