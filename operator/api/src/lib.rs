//! The starmesh resource types (`StarSystem`, `ServerLayout` in `starmesh.dev/v1alpha1`),
//! the pure checks the schema cannot express, and the YAML loader that `starmesh local`
//! shares with the operator so both report the same field-naming errors.
//!
//! Distances are kilometres, speeds kilometres per second, angles degrees.

// kube's `printcolumn(name = .., type_ = ..)` repeats keys by design.
#![allow(clippy::duplicated_attributes)]

pub mod autoscale;
pub mod crds;
pub mod geometry;
pub mod partition;
pub mod reference;
pub mod server_layout;
pub mod star_system;
pub mod validation;
pub mod yaml;

pub use server_layout::*;
pub use star_system::*;
pub use validation::{FieldError, validate_server_layout, validate_star_system};
pub use yaml::{LoadError, Resource};

/// The API group of every starmesh resource.
pub const GROUP: &str = "starmesh.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// The territory that holds whatever no location claims.
pub const DEEP_SPACE: &str = "deep-space";
