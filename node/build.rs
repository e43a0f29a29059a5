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
    Ok(())
}
