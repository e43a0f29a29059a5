//! The replicant's Admin gRPC service, as a client: the autoscaler reads and changes a
//! shard's partition and drains game servers through it. Generated from node/proto by
//! `build.rs`, so both sides share one definition.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("starmesh.v1");
}

/// Deadline of one Admin call. `SetPartition` answers after the change is applied at a
/// tick boundary and persisted, so it gets more.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
pub const SET_PARTITION_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub type Client = pb::admin_client::AdminClient<Channel>;

/// Connects to a replicant's Admin service (the replicant Service's cluster IP and gRPC
/// port, the address the mesh map gives every pod).
pub async fn connect(addr: SocketAddr) -> Result<Client, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(SET_PARTITION_TIMEOUT);
    // Over mesh mTLS when the operator has the mesh's certificate (--tls-dir).
    let channel = crate::tls::connect(endpoint, crate::tls::process().as_ref())
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(pb::admin_client::AdminClient::new(channel))
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

pub async fn get_partition(c: &mut Client) -> Result<pb::PartitionState, String> {
    c.get_partition(request(pb::GetPartitionRequest {}, CALL_TIMEOUT))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("GetPartition: {}: {}", s.code(), s.message()))
}

pub async fn set_partition(
    c: &mut Client,
    split: Vec<String>,
    merge: Vec<String>,
) -> Result<pb::PartitionState, String> {
    c.set_partition(request(pb::SetPartitionRequest { split, merge }, SET_PARTITION_TIMEOUT))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("SetPartition: {}: {}", s.code(), s.message()))
}

/// Drains `server`; returns the cells it still owns (0: safe to delete).
pub async fn drain(c: &mut Client, server: &str) -> Result<u32, String> {
    c.drain(request(pb::DrainRequest { server: server.to_string() }, CALL_TIMEOUT))
        .await
        .map(|r| r.into_inner().territories_remaining)
        .map_err(|s| format!("Drain {server}: {}: {}", s.code(), s.message()))
}
