//! The wire: generated protobuf/tonic code, plus `validate`, which turns every
//! decoded message into typed domain values (or a typed `WireError`).

pub mod validate;

/// Generated at build time from `node/proto` by `protox` + `tonic-prost-build`.
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("starmesh.v1");
}

pub use validate::WireError;
