//! `ServerLayout`: how a StarSystem is served — shards, which game server owns which
//! territory (static) or the rules to split and merge territories (dynamic), tick rate,
//! persistence, images and resources.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How one StarSystem is served: the shards, the game servers of each shard and what
/// they own, and how the replication layer persists the world.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "starmesh.dev",
    version = "v1alpha1",
    kind = "ServerLayout",
    plural = "serverlayouts",
    shortname = "sl",
    category = "starmesh",
    namespaced,
    status = "ServerLayoutStatus",
    derive = "PartialEq",
    scale = r#"{"specReplicasPath":".spec.shards","statusReplicasPath":".status.shards","labelSelectorPath":".status.selector"}"#,
    printcolumn(name = "System", type_ = "string", json_path = ".spec.systemRef"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(name = "Servers", type_ = "integer", json_path = ".status.servers"),
    printcolumn(name = "Players", type_ = "integer", json_path = ".status.players"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ServerLayoutSpec {
    /// Name of the StarSystem (same namespace) this layout serves.
    #[schemars(length(min = 1, max = 63))]
    pub system_ref: String,
    /// Number of shards: full copies of the world, each with its own players.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 0, max = 64))]
    pub shards: i32,
    /// `Static`: `servers` says who owns what. `Dynamic`: territories are split and
    /// merged by player load within `dynamic`.
    #[serde(default)]
    pub mode: LayoutMode,
    /// Static mode: the game servers of every shard and the territories each owns. A
    /// territory is a location's name (its subtree, minus subtrees another server owns)
    /// or `deep-space` (everything no location claims). Every territory is owned once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub servers: Vec<StaticServer>,
    /// Dynamic mode: the bounds and thresholds of splitting and merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicLayout>,
    /// Simulation ticks per second of every game server.
    #[serde(default = "default_tick_rate")]
    #[schemars(range(min = 1, max = 240))]
    pub tick_rate: u32,
    /// Where the replication layer persists entities.
    #[serde(default)]
    pub persistence: Persistence,
    /// The container image of the node binary (replicant, servers, gateway).
    #[serde(default)]
    pub image: Image,
    /// The studio's own game-server image, run by the game-server pods in place of `image`
    /// (the replicant and the gateway keep `image`): a program built with `starmesh-sdk`
    /// (`starmesh_sdk::main`), or any that speaks the ServerLink protocol. It gets the
    /// contract of `starmesh server`: the argument `server`, the `STARMESH_*` environment
    /// (mesh map, shard, tick rate, system file, metrics address), `POD_NAME`, and must serve
    /// `/healthz` and `/readyz` on the metrics port (see node/sdk/).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub game_server_image: Option<Image>,
    /// Requests and limits per role.
    #[serde(default)]
    pub resources: RoleResources,
    /// How players reach the gateway.
    #[serde(default)]
    pub gateway: Gateway,
    /// When set, the operator drives `shards` (through the scale subresource, as an
    /// HorizontalPodAutoscaler would) from the players per shard; when absent, `shards`
    /// is the user's or an HPA's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_autoscaling: Option<ShardAutoscaling>,
    /// Where the autoscaler reads the players per shard and cell.
    #[serde(default, skip_serializing_if = "PlayerCounts::is_default")]
    pub player_counts: PlayerCounts,
}

fn default_shards() -> i32 {
    1
}

fn default_tick_rate() -> u32 {
    30
}

/// Whether territories are assigned by hand or by load.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum LayoutMode {
    #[default]
    Static,
    Dynamic,
}

impl LayoutMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutMode::Static => "Static",
            LayoutMode::Dynamic => "Dynamic",
        }
    }
}

/// One game server of a static layout (one per shard is run).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticServer {
    /// Unique within the layout; a DNS-1123 label (it names the server's pods).
    #[schemars(length(min = 1, max = 40))]
    pub name: String,
    /// Location names (or `deep-space`) this server has authority over.
    #[schemars(length(min = 1, max = 256))]
    pub territories: Vec<String>,
}

/// Bounds and thresholds for a dynamic layout.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamicLayout {
    /// Fewest game servers per shard.
    #[serde(default = "default_min_servers")]
    #[schemars(range(min = 1, max = 256))]
    pub min_servers: u32,
    /// Most game servers per shard.
    #[serde(default = "default_max_servers")]
    #[schemars(range(min = 1, max = 256))]
    pub max_servers: u32,
    /// Players one server is sized for.
    #[serde(default = "default_target_players_per_server")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_players_per_server: u32,
    /// Split a territory into cells when it holds more players than this.
    #[serde(default = "default_split_above_players")]
    #[schemars(range(min = 1, max = 100000))]
    pub split_above_players: u32,
    /// Merge neighbouring cells when together they hold fewer players than this.
    #[serde(default = "default_merge_below_players")]
    #[schemars(range(min = 0, max = 100000))]
    pub merge_below_players: u32,
    /// Least time between two scaling decisions for the same territory.
    #[serde(default = "default_cooldown_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: u32,
}

fn default_min_servers() -> u32 {
    1
}
fn default_max_servers() -> u32 {
    8
}
fn default_target_players_per_server() -> u32 {
    100
}
fn default_split_above_players() -> u32 {
    120
}
fn default_merge_below_players() -> u32 {
    40
}
fn default_cooldown_seconds() -> u32 {
    120
}

impl Default for DynamicLayout {
    fn default() -> Self {
        DynamicLayout {
            min_servers: default_min_servers(),
            max_servers: default_max_servers(),
            target_players_per_server: default_target_players_per_server(),
            split_above_players: default_split_above_players(),
            merge_below_players: default_merge_below_players(),
            cooldown_seconds: default_cooldown_seconds(),
        }
    }
}

/// Bounds of shard autoscaling.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardAutoscaling {
    /// Fewest shards.
    #[serde(default = "default_min_shards")]
    #[schemars(range(min = 1, max = 64))]
    pub min_shards: i32,
    /// Most shards.
    #[serde(default = "default_max_shards")]
    #[schemars(range(min = 1, max = 64))]
    pub max_shards: i32,
    /// Players one shard is sized for: a shard is added when the players exceed this
    /// times the shards.
    #[serde(default = "default_target_players_per_shard")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_players_per_shard: u32,
    /// How long fewer shards must do before the highest one is drained.
    #[serde(default = "default_shard_cooldown_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub cooldown_seconds: u32,
}

fn default_min_shards() -> i32 {
    1
}
fn default_max_shards() -> i32 {
    4
}
fn default_target_players_per_shard() -> u32 {
    500
}
fn default_shard_cooldown_seconds() -> u32 {
    300
}

impl Default for ShardAutoscaling {
    fn default() -> Self {
        ShardAutoscaling {
            min_shards: default_min_shards(),
            max_shards: default_max_shards(),
            target_players_per_shard: default_target_players_per_shard(),
            cooldown_seconds: default_shard_cooldown_seconds(),
        }
    }
}

/// Which source the autoscaler reads player counts from.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum PlayerCountSource {
    /// Each shard's replicant, through its Admin service (`GetPartition`).
    #[default]
    Replicant,
    /// A PromQL query against `prometheus.url`.
    Prometheus,
}

/// Where player counts come from. Either way they are the `starmesh_players` metric.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlayerCounts {
    #[serde(default)]
    pub source: PlayerCountSource,
    /// Required when `source` is `Prometheus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
}

impl PlayerCounts {
    pub fn is_default(&self) -> bool {
        *self == PlayerCounts::default()
    }
}

/// A Prometheus HTTP API to query.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL of the Prometheus server (`http://prometheus.monitoring:9090`); plain
    /// http, reached from the operator's pod.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// An instant query giving players by `shard` and `territory` labels. Default:
    /// `sum by (shard, territory) (starmesh_players{system="<systemRef>"})` (the labels
    /// the replicant attaches itself; add `namespace` if your Prometheus attaches it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub query: Option<String>,
}

/// Which store backs the replication layer.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PersistenceBackend {
    /// A store in a folder on the replicant's volume.
    #[default]
    Embedded,
    /// A PostgreSQL server (or a PostgreSQL-wire distributed database).
    Postgres,
}

/// Where entities are persisted.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    #[serde(default)]
    pub backend: PersistenceBackend,
    /// Settings of the embedded store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedStore>,
    /// Settings of the PostgreSQL store; required when `backend` is `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresStore>,
}

/// The replicant's volume for the embedded store.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedStore {
    /// Size of the volume claim, as a Kubernetes quantity (`1Gi`).
    #[serde(default = "default_volume_size")]
    #[schemars(length(min = 1, max = 32))]
    pub volume_size: String,
    /// Storage class of the claim; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

fn default_volume_size() -> String {
    "1Gi".to_string()
}

impl Default for EmbeddedStore {
    fn default() -> Self {
        EmbeddedStore { volume_size: default_volume_size(), storage_class_name: None }
    }
}

/// Connection to PostgreSQL, from a Secret.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStore {
    /// A Secret in the layout's namespace holding the connection string.
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret; `url` by default.
    #[serde(default = "default_secret_key")]
    pub key: String,
}

fn default_secret_key() -> String {
    "url".to_string()
}

/// The node image.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    #[serde(default = "default_image_repository")]
    pub repository: String,
    #[serde(default = "default_image_tag")]
    pub tag: String,
    /// `IfNotPresent` suits locally loaded images (kind, air-gapped clusters).
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

fn default_image_repository() -> String {
    "starmesh/node".to_string()
}
fn default_image_tag() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

impl Default for Image {
    fn default() -> Self {
        Image {
            repository: default_image_repository(),
            tag: default_image_tag(),
            pull_policy: PullPolicy::default(),
        }
    }
}

/// Kubernetes image pull policy.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Requests and limits for each role's container.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleResources {
    #[serde(default = "ResourceSpec::replicant")]
    pub replicant: ResourceSpec,
    #[serde(default = "ResourceSpec::server")]
    pub server: ResourceSpec,
    #[serde(default = "ResourceSpec::gateway")]
    pub gateway: ResourceSpec,
}

impl Default for RoleResources {
    fn default() -> Self {
        RoleResources {
            replicant: ResourceSpec::replicant(),
            server: ResourceSpec::server(),
            gateway: ResourceSpec::gateway(),
        }
    }
}

/// Requests and limits as Kubernetes quantities (`250m`, `512Mi`). Plain strings, not
/// `Quantity`: Kubernetes 1.20 mishandles `x-kubernetes-int-or-string` in CRD schemas.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl ResourceSpec {
    fn sized(cpu_request: &str, memory: &str, cpu_limit: &str) -> Self {
        ResourceSpec {
            requests: BTreeMap::from([
                ("cpu".to_string(), cpu_request.to_string()),
                ("memory".to_string(), memory.to_string()),
            ]),
            limits: BTreeMap::from([
                ("cpu".to_string(), cpu_limit.to_string()),
                ("memory".to_string(), memory.to_string()),
            ]),
        }
    }
    pub fn replicant() -> Self {
        Self::sized("100m", "256Mi", "1")
    }
    pub fn server() -> Self {
        Self::sized("100m", "128Mi", "1")
    }
    pub fn gateway() -> Self {
        Self::sized("50m", "128Mi", "1")
    }
}

/// The gateway's Service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// Number of gateway pods per shard.
    #[serde(default = "default_gateway_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: i32,
    #[serde(default)]
    pub service_type: ServiceType,
    /// Port players connect to.
    #[serde(default = "default_gateway_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret (same namespace) whose key `player-token-key` signs player tokens: mounted
    /// into the gateway pods, which then admit only players with a valid token. Unset:
    /// development mode, any name joins (the gateway logs it as a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub player_token_secret: Option<String>,
}

/// The key of [`Gateway::player_token_secret`] holding the token key.
pub const PLAYER_TOKEN_SECRET_KEY: &str = "player-token-key";

fn default_gateway_replicas() -> i32 {
    1
}
fn default_gateway_port() -> i32 {
    7777
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            replicas: default_gateway_replicas(),
            service_type: ServiceType::default(),
            port: default_gateway_port(),
            player_token_secret: None,
        }
    }
}

/// Kubernetes Service type of the gateway.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator last observed of the layout.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerLayoutStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`, `Ready`, `Progressing`, `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Shards that exist (the scale subresource's current replicas).
    #[serde(default)]
    pub shards: i32,
    /// Shards whose replicant, servers and gateway are all ready.
    #[serde(default)]
    pub ready_shards: i32,
    /// Game servers across all shards.
    #[serde(default)]
    pub servers: i32,
    /// Players across all shards.
    #[serde(default)]
    pub players: i64,
    /// Label selector of the layout's pods, for the scale subresource and autoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Per shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_statuses: Vec<ShardStatus>,
    /// Who owns each territory (the intended owner in static mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub territories: Vec<TerritoryStatus>,
    /// The shard marked for removal by shard autoscaling: the gateway places no new
    /// player there, and it is removed once it holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_shard: Option<i32>,
    /// Last shard autoscaling decision (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shard_scale_time: Option<String>,
    /// What shard autoscaling remembers between reconciles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_autoscale: Option<crate::autoscale::ShardMemory>,
}

/// One shard's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    pub index: i32,
    pub replicant_ready: bool,
    pub ready_servers: i32,
    pub servers: i32,
    pub gateway_ready: bool,
    #[serde(default)]
    pub players: i64,
    /// Dynamic layouts: game servers the autoscaler wants for this shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_wanted: Option<i32>,
    /// Dynamic layouts: the leaf cells with owner and players, as the replicant reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<CellStatus>,
    /// Dynamic layouts: the replicant's partition version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_version: Option<u64>,
    /// Dynamic layouts: last split, merge or server count change (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Dynamic layouts: game servers being drained before they are deleted, and since
    /// when (Unix seconds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining_servers: Vec<DrainingServer>,
    /// Dynamic layouts: what the autoscaler remembers between reconciles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::autoscale::AutoscaleMemory>,
}

/// One leaf cell of a dynamic shard.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CellStatus {
    pub cell: String,
    /// Owning game server; empty while unowned.
    pub server: String,
    pub players: i64,
}

/// A game server being drained.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingServer {
    pub server: String,
    /// Unix seconds.
    pub since: i64,
    /// Cells it still owned at the last Drain call.
    pub remaining: i64,
}

/// Owner of one territory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TerritoryStatus {
    pub name: String,
    pub server: String,
    #[serde(default)]
    pub players: i64,
}
