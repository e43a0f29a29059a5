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
    let fwd = "crate::gateway::forward";
    let pb = "crate::wire::pb";
    // A method of package starmesh.v1 with prost's codec; `bidi`: streams both ways.
    let method = |name: &str, input: String, output: String, bidi: bool| {
        let route = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
        let m = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("tonic_prost::ProstCodec");
        if bidi { m.client_streaming().server_streaming().build() } else { m.build() }
    };
    let service = |name: &str, methods: Vec<Method>| {
        methods
            .into_iter()
            .fold(Service::builder().name(name).package("starmesh.v1"), |s, m| s.method(m))
            .build()
    };
    let player_link = service(
        "PlayerLink",
        vec![
            method("join", format!("{pb}::JoinRequest"), format!("{pb}::JoinResponse"), false),
            method("play", format!("{pb}::PlayerMessage"), format!("{fwd}::PlayerUpdateOut"), true),
        ],
    );
    Builder::new().build_client(false).build_transport(false).compile(&[player_link]);
    let gateway_link = service(
        "GatewayLink",
        vec![method(
            "session",
            format!("{pb}::GatewayMessage"),
            format!("{fwd}::GatewayUpdateIn"),
            true,
        )],
    );
    Builder::new().build_server(false).compile(&[gateway_link]);
}
