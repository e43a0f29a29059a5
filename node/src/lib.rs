//! starmesh-node: the `starmesh` binary's roles: replicant, game server, gateway and bots.

pub mod bots;
pub mod gateway;
pub mod local;
pub mod mesh_map;
pub mod model;
pub mod reference;
pub mod replicant;
pub mod resources;
pub mod server;
pub mod signal;
pub mod store;
pub mod territory;
pub use starmesh_tls as tls;
pub use starmesh_tls::dev as tls_dev;
pub mod web_map;
pub mod wire;
