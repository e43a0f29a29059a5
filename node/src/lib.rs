//! starmesh-node: the `starmesh` binary's roles. Only the replicant exists so far.

pub mod model;
pub mod replicant;
pub mod store;
pub mod territory;
pub mod wire;
