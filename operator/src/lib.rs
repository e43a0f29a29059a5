//! The starmesh operator: reconciles `StarSystem` and `ServerLayout` resources into the
//! pods, Services and mesh map of a starmesh installation.
//!
//! Decisions (object builders, validation verdicts, status and conditions) are pure
//! functions in [`builders`], [`checks`], [`status`] and [`conditions`]; the reconcilers in
//! [`star_system`] and [`server_layout`] only read, call those, and write.

pub mod admin;
pub mod autoscaler;
pub mod builders;
pub mod checks;
pub mod conditions;
pub mod gate_peers;
pub mod leader;
pub mod metrics;
pub mod players;
pub mod pod_security;
pub mod prometheus;
pub mod server_layout;
pub mod star_system;
pub mod status;
pub mod telemetry;
pub mod watch_check;

/// Mesh mTLS: the same crate as the node's end of the Admin link.
pub use starmesh_tls as tls;

use std::sync::Arc;

use kube::{Client, runtime::events::Recorder};

/// Errors of one reconciliation. Invalid specs are not errors (they are reported in
/// status); these are failures to talk to the API server or impossible objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no {0} (not read from the API server?)")]
    MissingObjectKey(&'static str),
    #[error("cannot serialize: {0}")]
    Serialization(String),
}

impl Error {
    /// A bounded label for `starmesh_operator_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "kube_client".into(),
            Error::MissingObjectKey(_) => "missing_object_key".into(),
            Error::Serialization(_) => "serialization".into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconciler shares.
pub struct Context {
    /// The mesh TLS Secret the layouts' pods mount (`--mesh-tls-secret`); None: plaintext.
    pub mesh_tls_secret: Option<String>,
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: metrics::Metrics,
    /// Image of layouts that leave `spec.image` at its default (`--node-image`).
    pub node_image: String,
    /// Read player counts from the replicants' metrics (only possible in the cluster).
    pub player_counts: bool,
}

pub type Ctx = Arc<Context>;
