//! Spec → Kubernetes objects. Pure functions: no client, no clock, so every object the
//! operator applies can be checked by unit tests.
//!
//! Per shard `i` of layout `L` (all in L's namespace, all owned by L):
//!
//! | object | name | what |
//! |---|---|---|
//! | StatefulSet + ClusterIP Service | `L-shard-i-replicant` | the shard's replicant (1 replica); ports `grpc` 7100, `metrics` 9100 |
//! | StatefulSet + headless Service | `L-shard-i-servers` | the game servers; pod ordinal k of a static layout runs `spec.servers[k]` |
//! | Deployment + Service | `L-shard-i-gateway` | the gateway; port `game` = `spec.gateway.port`, `metrics` 9100 |
//!
//! and once per layout the ConfigMap `L-mesh-map` (see [`MeshMap`]).
//!
//! Pods get no Kubernetes API token and find each other only through the mesh map's
//! Service cluster IPs: there is no cluster DNS on the clusters starmesh is tested on.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Service,
            ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use starmesh_api::{
    Image, LayoutMode, PersistenceBackend, ResourceSpec, ServerLayout, ServerLayoutSpec,
    StarSystem, TerritoryStatus,
};

// ---- the constants every pod, Service and the mesh map agree on -----------------------

/// The one field manager of every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "starmesh-operator";
/// Finalizer that makes a layout's deletion wait for its drain step.
pub const FINALIZER: &str = "starmesh.dev/drain";
/// The replicant's gRPC port (servers, gateways, admin API).
pub const REPLICANT_GRPC_PORT: i32 = 7100;
/// Every role serves `/metrics`, `/healthz` and `/readyz` here.
pub const METRICS_PORT: i32 = 9100;
/// Where the mesh-map ConfigMap is mounted in every pod.
pub const MESH_MAP_DIR: &str = "/etc/starmesh";
/// Key (file name) of the JSON mesh map in the ConfigMap.
pub const MESH_MAP_KEY: &str = "mesh-map.json";
/// Key of the StarSystem YAML in the ConfigMap.
pub const STAR_SYSTEM_KEY: &str = "star-system.yaml";
/// Key of the ServerLayout YAML in the ConfigMap.
pub const SERVER_LAYOUT_KEY: &str = "server-layout.yaml";
/// The replicant's embedded store.
pub const DATA_DIR: &str = "/var/lib/starmesh";
/// Unprivileged uid/gid of every container (the distroless "nonroot" user).
pub const RUN_AS_USER: i64 = 65532;

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_LAYOUT: &str = "starmesh.dev/layout";
pub const LABEL_SHARD: &str = "starmesh.dev/shard";
pub const APP_NAME: &str = "starmesh";

/// The three pod roles, which are also the node binary's subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Replicant,
    Server,
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Replicant => "replicant",
            Role::Server => "server",
            Role::Gateway => "gateway",
        }
    }
}

// ---- names ---------------------------------------------------------------------------

pub fn replicant_name(layout: &str, shard: i32) -> String {
    format!("{layout}-shard-{shard}-replicant")
}
pub fn servers_name(layout: &str, shard: i32) -> String {
    format!("{layout}-shard-{shard}-servers")
}
pub fn gateway_name(layout: &str, shard: i32) -> String {
    format!("{layout}-shard-{shard}-gateway")
}
pub fn mesh_map_name(layout: &str) -> String {
    format!("{layout}-mesh-map")
}

// ---- labels --------------------------------------------------------------------------

/// Labels of everything belonging to a layout (children and their pods).
pub fn common_labels(
    layout: &str,
    role: Option<Role>,
    shard: Option<i32>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), layout.to_string()),
        (LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
        (LABEL_LAYOUT.to_string(), layout.to_string()),
    ]);
    if let Some(role) = role {
        l.insert(LABEL_COMPONENT.to_string(), role.as_str().to_string());
    }
    if let Some(shard) = shard {
        l.insert(LABEL_SHARD.to_string(), shard.to_string());
    }
    l
}

/// The immutable selector of a workload: layout, role, shard.
pub fn selector_labels(layout: &str, role: Role, shard: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_LAYOUT.to_string(), layout.to_string()),
        (LABEL_COMPONENT.to_string(), role.as_str().to_string()),
        (LABEL_SHARD.to_string(), shard.to_string()),
    ])
}

/// `status.selector` for the scale subresource: the replicant pods, one per shard, so the
/// pod count an autoscaler sees equals `status.shards`.
pub fn scale_selector(layout: &str) -> String {
    format!("{LABEL_LAYOUT}={layout},{LABEL_COMPONENT}={}", Role::Replicant.as_str())
}

/// Selector of every child object of a layout (for listing and deleting).
pub fn children_selector(layout: &str) -> String {
    format!("{LABEL_LAYOUT}={layout},{LABEL_MANAGED_BY}={FIELD_MANAGER}")
}

// ---- the layout as the builders see it ------------------------------------------------

/// A layout resolved for building: identity, owner reference and image.
#[derive(Debug, Clone)]
pub struct LayoutRef<'a> {
    pub name: String,
    pub namespace: String,
    pub spec: &'a ServerLayoutSpec,
    pub owner: OwnerReference,
    /// Full image reference of the node binary.
    pub image: String,
    /// The mesh TLS Secret the pods mount ([`add_mesh_tls`]); None: plaintext mesh.
    pub mesh_tls_secret: Option<String>,
}

impl<'a> LayoutRef<'a> {
    /// `None` when the object lacks what a stored object always has (namespace, uid).
    /// `default_image` (the operator's `--node-image`) is used when the layout leaves
    /// `spec.image` at the API default, so one flag retargets every default layout.
    pub fn new(layout: &'a ServerLayout, default_image: &str) -> Option<Self> {
        let owner = layout.controller_owner_ref(&())?;
        let image = if layout.spec.image.repository == Image::default().repository
            && layout.spec.image.tag == Image::default().tag
        {
            default_image.to_string()
        } else {
            format!("{}:{}", layout.spec.image.repository, layout.spec.image.tag)
        };
        Some(LayoutRef {
            name: layout.name_any(),
            namespace: layout.namespace()?,
            spec: &layout.spec,
            owner,
            image,
            mesh_tls_secret: None,
        })
    }

    /// The same layout with its pods on mesh mTLS from `secret` (the operator's
    /// `--mesh-tls-secret`).
    pub fn with_mesh_tls(mut self, secret: Option<String>) -> Self {
        self.mesh_tls_secret = secret;
        self
    }

    fn meta(&self, name: String, role: Option<Role>, shard: Option<i32>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(common_labels(&self.name, role, shard)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Game servers per shard: the static list's length, or the dynamic minimum (what a
/// new shard starts with; [`servers_for_shard`] gives a running shard's count).
pub fn servers_per_shard(spec: &ServerLayoutSpec) -> i32 {
    match spec.mode {
        LayoutMode::Static => i32::try_from(spec.servers.len()).unwrap_or(i32::MAX),
        LayoutMode::Dynamic => {
            let min = spec.dynamic.clone().unwrap_or_default().min_servers;
            i32::try_from(min).unwrap_or(i32::MAX)
        }
    }
}

/// The game-server replicas to apply to one shard. Static: the list's length. Dynamic:
/// `decided` (the autoscaler's count this pass, else the StatefulSet's current replicas)
/// raised to `minServers` (going up is always safe); never lowered here, because going
/// down is the autoscaler's, through a drain.
pub fn servers_for_shard(spec: &ServerLayoutSpec, decided: Option<i32>) -> i32 {
    match spec.mode {
        LayoutMode::Static => servers_per_shard(spec),
        LayoutMode::Dynamic => {
            let min = servers_per_shard(spec);
            decided.map_or(min, |d| d.max(min))
        }
    }
}

/// The intended owner of every territory of a static layout, in spec order.
pub fn territory_owners(spec: &ServerLayoutSpec) -> Vec<TerritoryStatus> {
    if spec.mode != LayoutMode::Static {
        return Vec::new();
    }
    spec.servers
        .iter()
        .flat_map(|s| {
            s.territories.iter().map(|t| TerritoryStatus {
                name: t.clone(),
                server: s.name.clone(),
                players: 0,
            })
        })
        .collect()
}

// ---- pods ----------------------------------------------------------------------------

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), ..EnvVar::default() }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..EnvVar::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn quantities(m: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
}

fn resources(r: &ResourceSpec) -> k8s_openapi::api::core::v1::ResourceRequirements {
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: quantities(&r.requests),
        limits: quantities(&r.limits),
        ..Default::default()
    }
}

fn http_probe(path: &str, initial_delay: i32, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The container of one role. Configuration goes in through environment variables, which
/// the node's clap arguments read (`env = ...`); the subcommand is the only argument.
/// A server finds its static assignment as `servers[k]` of the mesh map, `k` being its
/// pod ordinal (the number after the last `-` of `POD_NAME`).
fn container(l: &LayoutRef<'_>, role: Role, shard: i32) -> Container {
    let spec = l.spec;
    let mut env_vars = vec![
        env("STARMESH_ROLE", role.as_str()),
        env("STARMESH_LAYOUT", l.name.clone()),
        env("STARMESH_SYSTEM", spec.system_ref.clone()),
        env("STARMESH_SHARD", shard.to_string()),
        env("STARMESH_MESH_MAP", format!("{MESH_MAP_DIR}/{MESH_MAP_KEY}")),
        // The same YAML `kubectl apply` took, for the node's resource loader.
        env("STARMESH_SYSTEM_FILE", format!("{MESH_MAP_DIR}/{STAR_SYSTEM_KEY}")),
        env("STARMESH_LAYOUT_FILE", format!("{MESH_MAP_DIR}/{SERVER_LAYOUT_KEY}")),
        env("STARMESH_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
    ];
    let mut ports = Vec::new();
    let mut mounts = vec![
        VolumeMount {
            name: "mesh-map".into(),
            mount_path: MESH_MAP_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    let res = match role {
        Role::Replicant => {
            ports.push(port("grpc", REPLICANT_GRPC_PORT));
            env_vars.push(env("STARMESH_GRPC_LISTEN", format!("0.0.0.0:{REPLICANT_GRPC_PORT}")));
            match spec.persistence.backend {
                PersistenceBackend::Embedded => {
                    env_vars.push(env("STARMESH_STORE", "embedded"));
                    env_vars.push(env("STARMESH_DATA_DIR", DATA_DIR));
                    mounts.push(VolumeMount {
                        name: "data".into(),
                        mount_path: DATA_DIR.into(),
                        ..VolumeMount::default()
                    });
                }
                PersistenceBackend::Postgres => {
                    env_vars.push(env("STARMESH_STORE", "postgres"));
                    // Validation requires spec.persistence.postgres for this backend; if it is
                    // absent anyway, the pod fails visibly instead of starting storeless.
                    if let Some(pg) = &spec.persistence.postgres {
                        env_vars.push(EnvVar {
                            name: "STARMESH_POSTGRES_URL".into(),
                            value_from: Some(EnvVarSource {
                                secret_key_ref: Some(SecretKeySelector {
                                    name: pg.secret_ref.name.clone(),
                                    key: pg.secret_ref.key.clone(),
                                    optional: Some(false),
                                }),
                                ..Default::default()
                            }),
                            ..EnvVar::default()
                        });
                    }
                }
            }
            &spec.resources.replicant
        }
        Role::Server => {
            env_vars.push(env("STARMESH_TICK_RATE", spec.tick_rate.to_string()));
            &spec.resources.server
        }
        Role::Gateway => {
            ports.push(port("game", spec.gateway.port));
            env_vars.push(env("STARMESH_GATEWAY_LISTEN", format!("0.0.0.0:{}", spec.gateway.port)));
            &spec.resources.gateway
        }
    };
    ports.push(port("metrics", METRICS_PORT));
    // A studio's game server replaces ours in the server pods only, with the same contract.
    let (image, pull_policy) = match (role, &spec.game_server_image) {
        (Role::Server, Some(i)) => (format!("{}:{}", i.repository, i.tag), i.pull_policy),
        _ => (l.image.clone(), spec.image.pull_policy),
    };
    Container {
        name: role.as_str().to_string(),
        image: Some(image),
        image_pull_policy: Some(pull_policy.as_str().to_string()),
        args: Some(vec![role.as_str().to_string()]),
        env: Some(env_vars),
        ports: Some(ports),
        resources: Some(resources(res)),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz", 2, 5)),
        liveness_probe: Some(http_probe("/healthz", 10, 10)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn pod_template(l: &LayoutRef<'_>, role: Role, shard: i32) -> PodTemplateSpec {
    let mut labels = common_labels(&l.name, Some(role), Some(shard));
    labels.extend(selector_labels(&l.name, role, shard));
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
        spec: Some(PodSpec {
            containers: vec![container(l, role, shard)],
            // Pods never call the Kubernetes API: no token in them.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                fs_group: Some(RUN_AS_USER),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            volumes: Some(vec![
                Volume {
                    name: "mesh-map".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: mesh_map_name(&l.name),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
    };
    if let Some(secret) = &l.mesh_tls_secret {
        add_mesh_tls(&mut template, secret);
    }
    template
}

/// Where the mesh TLS Secret is mounted in every mesh pod (`STARMESH_TLS_DIR`).
pub const MESH_TLS_DIR: &str = "/etc/starmesh-tls";

/// Mesh mTLS for a pod: the Secret `secret` (tls.crt, tls.key, ca.crt) mounted read-only at
/// [`MESH_TLS_DIR`] in every container, and `STARMESH_TLS_DIR` pointing there. The kubelet
/// updates the files in place when the Secret changes; the node reloads them.
pub fn add_mesh_tls(template: &mut PodTemplateSpec, secret: &str) {
    let Some(pod) = template.spec.as_mut() else { return };
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "mesh-tls".into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            // Group-readable: the pod's fsGroup is the node's group (non-root).
            default_mode: Some(0o440),
            optional: Some(false),
            ..Default::default()
        }),
        ..Volume::default()
    });
    for c in &mut pod.containers {
        c.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
            name: "mesh-tls".into(),
            mount_path: MESH_TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        c.env.get_or_insert_with(Vec::new).push(env("STARMESH_TLS_DIR", MESH_TLS_DIR));
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

// ---- per-shard objects ---------------------------------------------------------------

pub fn replicant_service(l: &LayoutRef<'_>, shard: i32) -> Service {
    Service {
        metadata: l.meta(replicant_name(&l.name, shard), Some(Role::Replicant), Some(shard)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&l.name, Role::Replicant, shard)),
            ports: Some(vec![
                service_port("grpc", REPLICANT_GRPC_PORT),
                service_port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn replicant_statefulset(l: &LayoutRef<'_>, shard: i32) -> StatefulSet {
    let claims = match l.spec.persistence.backend {
        PersistenceBackend::Embedded => {
            let store = l.spec.persistence.embedded.clone().unwrap_or_default();
            Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(common_labels(&l.name, Some(Role::Replicant), Some(shard))),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: store.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(store.volume_size.clone()),
                        )])),
                        ..Default::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }])
        }
        PersistenceBackend::Postgres => None,
    };
    StatefulSet {
        metadata: l.meta(replicant_name(&l.name, shard), Some(Role::Replicant), Some(shard)),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(replicant_name(&l.name, shard)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&l.name, Role::Replicant, shard)),
                ..LabelSelector::default()
            },
            template: pod_template(l, Role::Replicant, shard),
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

pub fn servers_service(l: &LayoutRef<'_>, shard: i32) -> Service {
    Service {
        metadata: l.meta(servers_name(&l.name, shard), Some(Role::Server), Some(shard)),
        spec: Some(ServiceSpec {
            // Headless: the StatefulSet's governing Service; servers are reached through the
            // replicant, never through this Service.
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&l.name, Role::Server, shard)),
            ports: Some(vec![service_port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn servers_statefulset(l: &LayoutRef<'_>, shard: i32, replicas: i32) -> StatefulSet {
    StatefulSet {
        metadata: l.meta(servers_name(&l.name, shard), Some(Role::Server), Some(shard)),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(servers_name(&l.name, shard)),
            // Servers are independent; ordinals only fix which static server a pod is.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&l.name, Role::Server, shard)),
                ..LabelSelector::default()
            },
            template: pod_template(l, Role::Server, shard),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

pub fn gateway_service(l: &LayoutRef<'_>, shard: i32) -> Service {
    Service {
        metadata: l.meta(gateway_name(&l.name, shard), Some(Role::Gateway), Some(shard)),
        spec: Some(ServiceSpec {
            type_: Some(l.spec.gateway.service_type.as_str().to_string()),
            selector: Some(selector_labels(&l.name, Role::Gateway, shard)),
            ports: Some(vec![
                ServicePort {
                    name: Some("game".into()),
                    port: l.spec.gateway.port,
                    target_port: Some(IntOrString::String("game".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
                service_port("metrics", METRICS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn gateway_deployment(l: &LayoutRef<'_>, shard: i32) -> Deployment {
    let mut template = pod_template(l, Role::Gateway, shard);
    // The player token key: the Secret's one key as a read-only file, its path in the
    // environment (`--player-token-key`). Only the gateway pods see it.
    if let (Some(secret), Some(pod)) = (&l.spec.gateway.player_token_secret, template.spec.as_mut())
    {
        const DIR: &str = "/etc/starmesh/player-token";
        let key = starmesh_api::PLAYER_TOKEN_SECRET_KEY;
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "player-token".into(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: key.into(),
                    path: key.into(),
                    ..Default::default()
                }]),
                // Group-readable: the pod's fsGroup is the gateway's group (non-root).
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Volume::default()
        });
        for c in &mut pod.containers {
            c.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
                name: "player-token".into(),
                mount_path: DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            c.env
                .get_or_insert_with(Vec::new)
                .push(env("STARMESH_PLAYER_TOKEN_KEY", format!("{DIR}/{key}")));
        }
    }
    Deployment {
        metadata: l.meta(gateway_name(&l.name, shard), Some(Role::Gateway), Some(shard)),
        spec: DeploymentSpec {
            replicas: Some(l.spec.gateway.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&l.name, Role::Gateway, shard)),
                ..LabelSelector::default()
            },
            template,
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

// ---- the mesh map --------------------------------------------------------------------

/// One Service as pods reach it: by cluster IP, never by DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Service name (for logs and humans).
    pub service: String,
    /// The Service's cluster IP, read back from the API server after applying it.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    /// Port name → port.
    pub ports: BTreeMap<String, i32>,
}

/// The addresses of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardMap {
    pub index: i32,
    pub replicant: Endpoint,
    pub gateway: Endpoint,
    /// The game servers' StatefulSet (pods `<statefulSet>-<k>`) and how many it runs.
    pub servers_stateful_set: String,
    pub servers: i32,
    /// Where this shard's jump gates lead: per target StarSystem, the replicant (GateLink)
    /// and gateway of the peer shard (see [`peer_shard`]). Empty until the target's
    /// layout has Services; the operator requeues until it does.
    #[serde(default)]
    pub gate_peers: Vec<GatePeerMap>,
    /// `status.drainingShard` is this shard: gateways place no new player here.
    #[serde(default)]
    pub draining: bool,
    /// Players in the shard as last counted (omitted when unknown): gateways place a new
    /// player on the least-loaded shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub players: Option<u64>,
}

/// The other end of this shard's jump gates to one StarSystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatePeerMap {
    /// The target StarSystem (the `SYSTEM` of `--gate-peer` / `--gateway-peer`).
    pub system: String,
    /// The layout serving it, and which of its shards this shard's ships go to.
    pub layout: String,
    pub shard: i32,
    pub replicant: Endpoint,
    pub gateway: Endpoint,
}

/// A layout serving the target StarSystem of this layout's gates, as the reconciler found
/// it: its shards whose Services have cluster IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLayout {
    pub system: String,
    pub layout: String,
    pub gateway_port: i32,
    pub shards: Vec<ShardIps>,
}

/// The target shard of shard `shard`'s ships: the target's shard with the same index when
/// it has one, else (the target has fewer shards) its shards in index order taken
/// round-robin, `shard mod count`. Deterministic, so every pod and every reconcile agree.
pub fn peer_shard(shard: i32, target: &[ShardIps]) -> Option<&ShardIps> {
    if let Some(same) = target.iter().find(|s| s.index == shard) {
        return Some(same);
    }
    let mut sorted: Vec<&ShardIps> = target.iter().collect();
    sorted.sort_by_key(|s| s.index);
    let n = i32::try_from(sorted.len()).ok().filter(|n| *n > 0)?;
    let k = usize::try_from(shard.rem_euclid(n)).ok()?;
    sorted.get(k).copied()
}

fn replicant_endpoint(layout: &str, shard: i32, ip: &str) -> Endpoint {
    Endpoint {
        service: replicant_name(layout, shard),
        cluster_ip: ip.to_string(),
        ports: BTreeMap::from([
            ("grpc".to_string(), REPLICANT_GRPC_PORT),
            ("metrics".to_string(), METRICS_PORT),
        ]),
    }
}

fn gateway_endpoint(layout: &str, shard: i32, ip: &str, game_port: i32) -> Endpoint {
    Endpoint {
        service: gateway_name(layout, shard),
        cluster_ip: ip.to_string(),
        ports: BTreeMap::from([
            ("game".to_string(), game_port),
            ("metrics".to_string(), METRICS_PORT),
        ]),
    }
}

/// The gate peers of shard `shard`: one entry per peer layout that has a shard for it.
fn gate_peers_of(shard: i32, peers: &[PeerLayout]) -> Vec<GatePeerMap> {
    peers
        .iter()
        .filter_map(|p| {
            let t = peer_shard(shard, &p.shards)?;
            Some(GatePeerMap {
                system: p.system.clone(),
                layout: p.layout.clone(),
                shard: t.index,
                replicant: replicant_endpoint(&p.layout, t.index, &t.replicant),
                gateway: gateway_endpoint(&p.layout, t.index, &t.gateway, p.gateway_port),
            })
        })
        .collect()
}

/// `mesh-map.json`: everything a pod needs to find its peers.
///
/// ```json
/// {"version":1,"namespace":"ns","layout":"stanton","system":"stanton","mode":"Static",
///  "tickRate":30,"servers":["hurston",...],"territories":{"deep-space":"hub",...},
///  "shards":[{"index":0,
///    "replicant":{"service":"stanton-shard-0-replicant","clusterIP":"198.18.128.10","ports":{"grpc":7100,"metrics":9100}},
///    "gateway":{"service":"stanton-shard-0-gateway","clusterIP":"198.18.128.11","ports":{"game":7777,"metrics":9100}},
///    "serversStatefulSet":"stanton-shard-0-servers","servers":6,
///    "gatePeers":[{"system":"pyro","layout":"pyro","shard":0,
///      "replicant":{"service":"pyro-shard-0-replicant","clusterIP":"198.18.128.20",...},
///      "gateway":{"service":"pyro-shard-0-gateway","clusterIP":"198.18.128.21",...}}]}]}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshMap {
    /// Format version; bumped on incompatible changes.
    pub version: u32,
    pub namespace: String,
    pub layout: String,
    pub system: String,
    pub mode: String,
    pub tick_rate: u32,
    /// Static layouts: server names in pod-ordinal order (pod k runs `servers[k]`).
    pub servers: Vec<String>,
    /// Static layouts: territory → server name.
    pub territories: BTreeMap<String, String>,
    pub shards: Vec<ShardMap>,
}

/// Cluster IPs of one shard's Services, as allocated by the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIps {
    pub index: i32,
    pub replicant: String,
    pub gateway: String,
}

/// `peers`: the layouts serving the StarSystems this layout's gates lead to.
pub fn mesh_map(l: &LayoutRef<'_>, ips: &[ShardIps], peers: &[PeerLayout]) -> MeshMap {
    let spec = l.spec;
    let is_static = spec.mode == LayoutMode::Static;
    let servers_per_shard = servers_per_shard(spec);
    MeshMap {
        version: 1,
        namespace: l.namespace.clone(),
        layout: l.name.clone(),
        system: spec.system_ref.clone(),
        mode: spec.mode.as_str().to_string(),
        tick_rate: spec.tick_rate,
        servers: if is_static {
            spec.servers.iter().map(|s| s.name.clone()).collect()
        } else {
            Vec::new()
        },
        territories: territory_owners(spec).into_iter().map(|t| (t.name, t.server)).collect(),
        shards: ips
            .iter()
            .map(|s| ShardMap {
                index: s.index,
                replicant: replicant_endpoint(&l.name, s.index, &s.replicant),
                gateway: gateway_endpoint(&l.name, s.index, &s.gateway, spec.gateway.port),
                servers_stateful_set: servers_name(&l.name, s.index),
                servers: servers_per_shard,
                gate_peers: gate_peers_of(s.index, peers),
                draining: false,
                players: None,
            })
            .collect(),
    }
}

/// The map with each shard's placement facts: `draining` (the layout's
/// `status.drainingShard`) and its last known players (`players[i]`, when known).
pub fn with_shard_loads(
    mut map: MeshMap,
    draining: Option<i32>,
    players: &BTreeMap<i32, u64>,
) -> MeshMap {
    for s in &mut map.shards {
        s.draining = draining == Some(s.index);
        s.players = players.get(&s.index).copied();
    }
    map
}

/// A resource reduced to what a user wrote (no status, no server-set metadata), for the
/// YAML copies in the mesh map.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plain<'a, S: Serialize> {
    api_version: &'a str,
    kind: &'a str,
    metadata: PlainMeta<'a>,
    spec: &'a S,
}

#[derive(Serialize)]
struct PlainMeta<'a> {
    name: &'a str,
    namespace: &'a str,
}

fn to_yaml<S: Serialize>(
    kind: &str,
    name: &str,
    namespace: &str,
    spec: &S,
) -> Result<String, String> {
    let plain = Plain {
        api_version: "starmesh.dev/v1alpha1",
        kind,
        metadata: PlainMeta { name, namespace },
        spec,
    };
    serde_saphyr::to_string(&plain).map_err(|e| e.to_string())
}

/// The `L-mesh-map` ConfigMap: the mesh map, plus the StarSystem and ServerLayout as
/// YAML (the same files `starmesh local` reads), so a pod needs nothing else.
pub fn mesh_map_configmap(
    l: &LayoutRef<'_>,
    system: &StarSystem,
    map: &MeshMap,
) -> Result<ConfigMap, String> {
    let json = serde_json::to_string_pretty(map).map_err(|e| e.to_string())?;
    let system_yaml = to_yaml("StarSystem", &system.name_any(), &l.namespace, &system.spec)?;
    let layout_yaml = to_yaml("ServerLayout", &l.name, &l.namespace, l.spec)?;
    Ok(ConfigMap {
        metadata: l.meta(mesh_map_name(&l.name), None, None),
        data: Some(BTreeMap::from([
            (MESH_MAP_KEY.to_string(), json),
            (STAR_SYSTEM_KEY.to_string(), system_yaml),
            (SERVER_LAYOUT_KEY.to_string(), layout_yaml),
        ])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use starmesh_api::{DynamicLayout, ServerLayoutSpec, StarSystemSpec};

    // The shipped examples are the fixtures: what users apply is what is tested.
    pub(crate) fn system_spec() -> StarSystemSpec {
        starmesh_api::yaml::load_star_system(include_str!("../../manifests/examples/stanton.yaml"))
            .expect("stanton example")
            .spec
    }

    pub(crate) fn layout_spec() -> ServerLayoutSpec {
        starmesh_api::yaml::load_server_layout(include_str!(
            "../../manifests/examples/stanton-layout.yaml"
        ))
        .expect("stanton layout example")
        .spec
    }

    pub(crate) fn layout(spec: ServerLayoutSpec) -> ServerLayout {
        let mut l = ServerLayout::new("stanton", spec);
        l.metadata.namespace = Some("ns".into());
        l.metadata.uid = Some("uid-1".into());
        l
    }

    #[test]
    fn layout_ref_needs_uid_and_namespace() {
        let mut l = layout(layout_spec());
        assert!(LayoutRef::new(&l, "img:1").is_some());
        l.metadata.uid = None;
        assert!(LayoutRef::new(&l, "img:1").is_none());
    }

    #[test]
    fn default_image_comes_from_the_flag_custom_image_from_spec() {
        let l = layout(layout_spec());
        assert_eq!(LayoutRef::new(&l, "starmesh:dev").expect("ref").image, "starmesh:dev");
        let mut spec = layout_spec();
        spec.image.repository = "reg/custom".into();
        spec.image.tag = "7".into();
        let l = layout(spec);
        assert_eq!(LayoutRef::new(&l, "starmesh:dev").expect("ref").image, "reg/custom:7");
    }

    #[test]
    fn every_child_is_owned_labelled_and_named() {
        let l = layout(layout_spec());
        let r = LayoutRef::new(&l, "starmesh:dev").expect("ref");
        let metas = [
            replicant_service(&r, 2).metadata,
            replicant_statefulset(&r, 2).metadata,
            servers_service(&r, 2).metadata,
            servers_statefulset(&r, 2, 3).metadata,
            gateway_service(&r, 2).metadata,
            gateway_deployment(&r, 2).metadata,
        ];
        let names: Vec<_> = metas.iter().map(|m| m.name.clone().unwrap_or_default()).collect();
        assert_eq!(
            names,
            [
                "stanton-shard-2-replicant",
                "stanton-shard-2-replicant",
                "stanton-shard-2-servers",
                "stanton-shard-2-servers",
                "stanton-shard-2-gateway",
                "stanton-shard-2-gateway"
            ]
        );
        for m in &metas {
            let owners = m.owner_references.as_ref().expect("owner");
            assert_eq!(owners[0].uid, "uid-1");
            assert_eq!(owners[0].controller, Some(true));
            let labels = m.labels.as_ref().expect("labels");
            assert_eq!(labels[LABEL_NAME], "starmesh");
            assert_eq!(labels[LABEL_INSTANCE], "stanton");
            assert_eq!(labels[LABEL_LAYOUT], "stanton");
            assert_eq!(labels[LABEL_SHARD], "2");
            assert!(labels.contains_key(LABEL_COMPONENT));
            assert_eq!(m.namespace.as_deref(), Some("ns"));
        }
    }

    #[test]
    fn a_studio_game_server_image_replaces_ours_in_the_server_pods_only() {
        let mut spec = layout_spec();
        spec.game_server_image = Some(starmesh_api::server_layout::Image {
            repository: "studio/game".into(),
            tag: "3".into(),
            pull_policy: starmesh_api::server_layout::PullPolicy::Always,
        });
        let l = layout(spec);
        let r = LayoutRef::new(&l, "starmesh:dev").expect("ref");
        let server = servers_statefulset(&r, 0, 2).spec.template.spec.expect("pod");
        let c = &server.containers[0];
        assert_eq!(c.image.as_deref(), Some("studio/game:3"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        // The same contract as ours: the role argument and the environment.
        assert_eq!(c.args.as_deref(), Some(&["server".to_string()][..]));
        let ours = LayoutRef::new(&layout(layout_spec()), "starmesh:dev")
            .map(|r| servers_statefulset(&r, 0, 2))
            .and_then(|s| s.spec.template.spec)
            .expect("our pod");
        assert_eq!(c.env, ours.containers[0].env);
        assert_eq!(c.ports, ours.containers[0].ports);
        let rep = replicant_statefulset(&r, 0).spec.template.spec.expect("pod");
        assert_eq!(
            rep.containers[0].image.as_deref(),
            Some("starmesh:dev"),
            "replicant keeps ours"
        );
    }

    #[test]
    fn pods_are_locked_down_and_probed() {
        let l = layout(layout_spec());
        let r = LayoutRef::new(&l, "starmesh:dev").expect("ref");
        let sts = replicant_statefulset(&r, 0);
        let spec = sts.spec;
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.expect("psc");
        assert_eq!(psc.run_as_non_root, Some(true));
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["replicant".to_string()][..]));
        assert_eq!(c.image.as_deref(), Some("starmesh:dev"));
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        let ready =
            c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("readiness");
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        let live = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("liveness");
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        let res = c.resources.as_ref().expect("resources");
        assert_eq!(res.requests.as_ref().expect("requests")["memory"], Quantity("256Mi".into()));
        // Selector labels are a subset of the pod labels (else the API refuses the workload).
        let pod_labels = spec.template.metadata.and_then(|m| m.labels).expect("pod labels");
        for (k, v) in spec.selector.match_labels.expect("selector") {
            assert_eq!(pod_labels.get(&k), Some(&v));
        }
        let env: Vec<_> = c.env.as_ref().expect("env").iter().map(|e| e.name.clone()).collect();
        for want in [
            "STARMESH_SHARD",
            "STARMESH_ROLE",
            "STARMESH_MESH_MAP",
            "STARMESH_DATA_DIR",
            "POD_NAME",
        ] {
            assert!(env.contains(&want.to_string()), "{want} missing from {env:?}");
        }
    }

    #[test]
    fn mesh_tls_mounts_the_secret_in_every_mesh_pod_only_when_set() {
        let l = layout(layout_spec());
        let templates = |r: &LayoutRef<'_>| {
            [
                replicant_statefulset(r, 0).spec.template,
                servers_statefulset(r, 0, 1).spec.template,
                gateway_deployment(r, 0).spec.template,
            ]
        };
        let plain = LayoutRef::new(&l, "i").expect("ref");
        for t in templates(&plain) {
            let pod = t.spec.expect("pod");
            assert!(!pod.volumes.unwrap_or_default().iter().any(|v| v.name == "mesh-tls"));
            let env = pod.containers[0].env.clone().unwrap_or_default();
            assert!(!env.iter().any(|e| e.name == "STARMESH_TLS_DIR"), "plaintext by default");
        }
        let tls = LayoutRef::new(&l, "i").expect("ref").with_mesh_tls(Some("mesh-tls".into()));
        for t in templates(&tls) {
            let pod = t.spec.expect("pod");
            let vols = pod.volumes.clone().unwrap_or_default();
            let v = vols.iter().find(|v| v.name == "mesh-tls").expect("mesh-tls volume");
            let secret = v.secret.as_ref().expect("a Secret volume");
            assert_eq!(secret.secret_name.as_deref(), Some("mesh-tls"));
            assert_eq!(secret.optional, Some(false), "a missing Secret shows on the pod");
            for c in &pod.containers {
                let m = c.volume_mounts.as_ref().expect("mounts");
                let m = m.iter().find(|m| m.name == "mesh-tls").expect("mounted");
                assert_eq!((m.mount_path.as_str(), m.read_only), (MESH_TLS_DIR, Some(true)));
                let env = c.env.as_ref().expect("env");
                let dir = env.iter().find(|e| e.name == "STARMESH_TLS_DIR").expect("env");
                assert_eq!(dir.value.as_deref(), Some(MESH_TLS_DIR));
            }
        }
    }

    #[test]
    fn embedded_store_gets_a_claim_postgres_a_secret() {
        let mut spec = layout_spec();
        spec.persistence.embedded = Some(starmesh_api::EmbeddedStore {
            volume_size: "5Gi".into(),
            storage_class_name: Some("local".into()),
        });
        let l = layout(spec.clone());
        let r = LayoutRef::new(&l, "i").expect("ref");
        let claims = replicant_statefulset(&r, 0).spec.volume_claim_templates.expect("claims");
        let claim = claims[0].spec.as_ref().expect("claim spec");
        assert_eq!(claim.storage_class_name.as_deref(), Some("local"));
        assert_eq!(
            claim
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .map(|r| r["storage"].clone()),
            Some(Quantity("5Gi".into()))
        );

        spec.persistence.backend = PersistenceBackend::Postgres;
        spec.persistence.postgres = Some(starmesh_api::PostgresStore {
            secret_ref: starmesh_api::SecretKeyRef { name: "pg".into(), key: "url".into() },
        });
        let l = layout(spec);
        let r = LayoutRef::new(&l, "i").expect("ref");
        let spec = replicant_statefulset(&r, 0).spec;
        assert!(spec.volume_claim_templates.is_none());
        let env = spec.template.spec.expect("pod").containers[0].env.clone().expect("env");
        let url = env.iter().find(|e| e.name == "STARMESH_POSTGRES_URL").expect("url env");
        let sel =
            url.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("secret ref");
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("pg", "url"));
    }

    #[test]
    fn servers_count_static_and_dynamic() {
        let mut spec = layout_spec();
        assert_eq!(servers_per_shard(&spec), 6);
        spec.mode = LayoutMode::Dynamic;
        spec.servers.clear();
        spec.dynamic = Some(DynamicLayout { min_servers: 2, ..DynamicLayout::default() });
        assert_eq!(servers_per_shard(&spec), 2);
        assert_eq!(servers_for_shard(&spec, None), 2);
        assert_eq!(servers_for_shard(&spec, Some(5)), 5, "the autoscaler's count");
        assert_eq!(servers_for_shard(&spec, Some(1)), 2, "raised to minServers");
        let static_spec = layout_spec();
        assert_eq!(servers_for_shard(&static_spec, Some(1)), 6, "static: the list");
        assert!(territory_owners(&spec).is_empty());
        let l = layout(spec);
        let r = LayoutRef::new(&l, "i").expect("ref");
        let sts = servers_statefulset(&r, 0, 2);
        assert_eq!(sts.spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(sts.spec.replicas, Some(2));
    }

    #[test]
    fn gateway_service_follows_spec() {
        let mut spec = layout_spec();
        spec.gateway.service_type = starmesh_api::ServiceType::NodePort;
        spec.gateway.port = 8000;
        spec.gateway.replicas = 2;
        let l = layout(spec);
        let r = LayoutRef::new(&l, "i").expect("ref");
        let svc = gateway_service(&r, 0).spec.expect("svc");
        assert_eq!(svc.type_.as_deref(), Some("NodePort"));
        assert_eq!(svc.ports.expect("ports")[0].port, 8000);
        assert_eq!(gateway_deployment(&r, 0).spec.replicas, Some(2));
        let headless = servers_service(&r, 0).spec.expect("svc");
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    }

    #[test]
    fn mesh_map_lists_addresses_order_and_territories() {
        let l = layout(layout_spec());
        let r = LayoutRef::new(&l, "i").expect("ref");
        let ips = [
            ShardIps { index: 0, replicant: "10.0.0.1".into(), gateway: "10.0.0.2".into() },
            ShardIps { index: 1, replicant: "10.0.0.3".into(), gateway: "10.0.0.4".into() },
        ];
        let map = mesh_map(&r, &ips, &[]);
        assert!(map.shards.iter().all(|s| s.gate_peers.is_empty()), "no peer layouts given");
        assert_eq!(
            map.servers,
            ["hurston", "crusader", "arccorp", "microtech", "cities", "deep-space"]
        );
        assert_eq!(map.territories["deep-space"], "deep-space");
        assert_eq!(map.territories["lorville"], "cities");
        assert_eq!(map.territories["hurston"], "hurston");
        assert_eq!(map.shards.len(), 2);
        assert_eq!(map.shards[1].replicant.cluster_ip, "10.0.0.3");
        assert_eq!(map.shards[1].replicant.ports["grpc"], REPLICANT_GRPC_PORT);
        assert_eq!(map.shards[0].gateway.ports["game"], 7777);
        assert_eq!(map.shards[0].servers, 6);
        let json = serde_json::to_value(&map).expect("json");
        assert_eq!(json["shards"][0]["replicant"]["clusterIP"], "10.0.0.1");
        assert_eq!(json["tickRate"], 30);

        let system = StarSystem::new("stanton", system_spec());
        let cm = mesh_map_configmap(&r, &system, &map).expect("cm");
        let data = cm.data.expect("data");
        let back: MeshMap = serde_json::from_str(&data[MESH_MAP_KEY]).expect("parse back");
        assert_eq!(back, map);
        let sys: serde_json::Value =
            serde_saphyr::from_str(&data[STAR_SYSTEM_KEY]).expect("system yaml");
        assert_eq!(sys["kind"], "StarSystem");
        assert_eq!(sys["spec"]["star"]["name"], serde_json::json!(system_spec().star.name));
        let lay: serde_json::Value =
            serde_saphyr::from_str(&data[SERVER_LAYOUT_KEY]).expect("layout yaml");
        assert_eq!(lay["spec"]["systemRef"], "stanton");
        assert_eq!(cm.metadata.name.as_deref(), Some("stanton-mesh-map"));
        // The node loads these files with the API crate's loader: they must round-trip.
        let sys = starmesh_api::yaml::load_star_system(&data[STAR_SYSTEM_KEY])
            .expect("node can load the system");
        assert_eq!(sys.spec, system_spec());
        let lay = starmesh_api::yaml::load_server_layout(&data[SERVER_LAYOUT_KEY])
            .expect("node can load the layout");
        assert_eq!(lay.spec, layout_spec());
    }

    fn ips(index: i32, n: u8) -> ShardIps {
        ShardIps { index, replicant: format!("10.1.{n}.1"), gateway: format!("10.1.{n}.2") }
    }

    #[test]
    fn peer_shard_is_the_same_index_else_round_robin() {
        let two = [ips(1, 1), ips(0, 0)];
        assert_eq!(peer_shard(0, &two).map(|s| s.index), Some(0));
        assert_eq!(peer_shard(1, &two).map(|s| s.index), Some(1));
        // Fewer target shards: in index order, shard mod count.
        assert_eq!(peer_shard(2, &two).map(|s| s.index), Some(0));
        assert_eq!(peer_shard(3, &two).map(|s| s.index), Some(1));
        let one = [ips(0, 0)];
        assert_eq!(peer_shard(5, &one).map(|s| s.index), Some(0));
        // A gap (shard 1's Services not there): 1 mod [0, 2] picks 2.
        let gap = [ips(0, 0), ips(2, 2)];
        assert_eq!(peer_shard(1, &gap).map(|s| s.index), Some(2));
        assert_eq!(peer_shard(0, &[]), None);
    }

    #[test]
    fn mesh_map_carries_draining_and_players_for_the_gateways() {
        let l = layout(layout_spec());
        let r = LayoutRef::new(&l, "i").expect("ref");
        let ips: Vec<ShardIps> = (0..2)
            .map(|i| ShardIps {
                index: i,
                replicant: format!("10.0.0.{i}"),
                gateway: format!("10.0.1.{i}"),
            })
            .collect();
        let map = with_shard_loads(mesh_map(&r, &ips, &[]), Some(1), &BTreeMap::from([(0, 7)]));
        let loads: Vec<(i32, bool, Option<u64>)> =
            map.shards.iter().map(|s| (s.index, s.draining, s.players)).collect();
        assert_eq!(loads, [(0, false, Some(7)), (1, true, None)]);
        let json = serde_json::to_value(&map).expect("json");
        assert_eq!(json["shards"][0]["players"], 7);
        assert_eq!(json["shards"][1]["draining"], true);
        assert!(json["shards"][1].get("players").is_none(), "unknown is omitted: {json}");
        let back: MeshMap = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, map);
    }

    #[test]
    fn mesh_map_carries_gate_peers_per_shard() {
        let l = layout(layout_spec());
        let r = LayoutRef::new(&l, "i").expect("ref");
        let own = [ips(0, 10), ips(1, 11)];
        let pyro = PeerLayout {
            system: "pyro".into(),
            layout: "pyro-main".into(),
            gateway_port: 7780,
            shards: vec![ips(0, 20)],
        };
        let nyx = PeerLayout {
            system: "nyx".into(),
            layout: "nyx".into(),
            gateway_port: 7777,
            shards: vec![],
        };
        let map = mesh_map(&r, &own, &[pyro, nyx]);
        for s in &map.shards {
            // Nyx has no shard with addresses yet: no entry rather than an unusable one.
            assert_eq!(s.gate_peers.len(), 1, "{s:?}");
            let p = &s.gate_peers[0];
            assert_eq!((p.system.as_str(), p.layout.as_str(), p.shard), ("pyro", "pyro-main", 0));
            assert_eq!(p.replicant.cluster_ip, "10.1.20.1");
            assert_eq!(p.replicant.service, "pyro-main-shard-0-replicant");
            assert_eq!(p.replicant.ports["grpc"], REPLICANT_GRPC_PORT);
            assert_eq!(p.gateway.cluster_ip, "10.1.20.2");
            assert_eq!(p.gateway.service, "pyro-main-shard-0-gateway");
            assert_eq!(p.gateway.ports["game"], 7780);
        }
        // The JSON the node reads (node/src/mesh_map.rs): camelCase, clusterIP.
        let json = serde_json::to_value(&map).expect("json");
        let p = &json["shards"][1]["gatePeers"][0];
        assert_eq!(p["system"], "pyro");
        assert_eq!(p["shard"], 0);
        assert_eq!(p["replicant"]["clusterIP"], "10.1.20.1");
        assert_eq!(p["gateway"]["ports"]["game"], 7780);
        let back: MeshMap = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, map);
    }

    #[test]
    fn scale_selector_picks_replicants() {
        assert_eq!(
            scale_selector("x"),
            "starmesh.dev/layout=x,app.kubernetes.io/component=replicant"
        );
    }
}
