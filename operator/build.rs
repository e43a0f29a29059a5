//! Compiles the replicant's Admin service (node/proto) into a gRPC client with `protox`
//! (pure Rust, no `protoc` on the machine), the same way the node compiles it, so the
//! operator and the replicant can never disagree about the wire.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["../node/proto/starmesh/v1/entity.proto", "../node/proto/starmesh/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["../node/proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
