//! Compiles the protobuf definitions with `protox` (a pure-Rust protobuf
//! compiler) so a fresh machine needs no `protoc`, and nothing generated is
//! committed that could drift from the `.proto` files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/starmesh/v1/entity.proto",
        "proto/starmesh/v1/server_link.proto",
        "proto/starmesh/v1/gateway_link.proto",
        "proto/starmesh/v1/admin.proto",
        "proto/starmesh/v1/player_link.proto",
        "proto/starmesh/v1/gate_link.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().bytes(".starmesh.v1").compile_fds(fds)?;
    gateway_forwarding_stubs();
    Ok(())
}

/// The gateway forwards bubble batches as the bytes the replicant encoded, so its two
/// streaming ends use views of the same wire messages (`gateway::forward`): the
/// replicant link decodes `GatewayUpdate.batch` as bytes, and the Play stream encodes
/// `PlayerUpdate.bubble` from bytes. These stubs are the generated ones with only those
/// types swapped; the paths and codec are the same, so peers see no difference.
fn gateway_forwarding_stubs() {
    use tonic_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let fwd = "crate::gateway::forward";
    let pb = "crate::wire::pb";
    let player_link = Service::builder()
        .name("PlayerLink")
        .package("starmesh.v1")
        .method(
            Method::builder()
                .name("join")
                .route_name("Join")
                .input_type(format!("{pb}::JoinRequest"))
                .output_type(format!("{pb}::JoinResponse"))
                .codec_path(codec)
                .build(),
        )
        .method(
            Method::builder()
                .name("play")
                .route_name("Play")
                .input_type(format!("{pb}::PlayerMessage"))
                .output_type(format!("{fwd}::PlayerUpdateOut"))
                .codec_path(codec)
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().build_client(false).build_transport(false).compile(&[player_link]);
    let gateway_link = Service::builder()
        .name("GatewayLink")
        .package("starmesh.v1")
        .method(
            Method::builder()
                .name("session")
                .route_name("Session")
                .input_type(format!("{pb}::GatewayMessage"))
                .output_type(format!("{fwd}::GatewayUpdateIn"))
                .codec_path(codec)
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().build_server(false).compile(&[gateway_link]);
}
