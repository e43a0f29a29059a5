//! `StarSystem`: a place players can be. A star, a tree of locations, and jump gates to
//! other systems.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A star system: the star, every location orbiting it (planets, moons, stations, landing
/// zones, asteroid belts, Lagrange points) and the jump gates that lead to other systems.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "starmesh.dev",
    version = "v1alpha1",
    kind = "StarSystem",
    plural = "starsystems",
    shortname = "sys",
    category = "starmesh",
    namespaced,
    status = "StarSystemStatus",
    derive = "PartialEq",
    printcolumn(name = "Locations", type_ = "integer", json_path = ".status.locations"),
    printcolumn(name = "Gates", type_ = "integer", json_path = ".status.gates"),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct StarSystemSpec {
    /// Name shown to players and on the map; defaults to the resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub display_name: Option<String>,
    /// The star at the centre (position 0,0,0).
    pub star: Star,
    /// Every location of the system. A location without a parent orbits the star.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub locations: Vec<Location>,
    /// Jump gates leading to gates in other star systems.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub jump_gates: Vec<JumpGate>,
}

/// The star at the origin of the system.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Star {
    /// Unique within the system (shares a namespace with locations and gates).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Radius of the star in km.
    #[schemars(range(min = 1.0, max = 1.0e8))]
    pub radius: f64,
}

/// The kinds of location a star system can contain.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LocationKind {
    Planet,
    Moon,
    Station,
    LandingZone,
    AsteroidBelt,
    LagrangePoint,
}

impl LocationKind {
    /// The name used in YAML (`landingZone`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            LocationKind::Planet => "planet",
            LocationKind::Moon => "moon",
            LocationKind::Station => "station",
            LocationKind::LandingZone => "landingZone",
            LocationKind::AsteroidBelt => "asteroidBelt",
            LocationKind::LagrangePoint => "lagrangePoint",
        }
    }
}

/// A place in the system. Placed either by `position` (offset from its parent's centre)
/// or by `orbit` (around its parent in the system's plane): exactly one of the two.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// Unique within the system; a DNS-1123 label, since it names territories and labels.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    pub kind: LocationKind,
    /// The location this one belongs to; empty means the star.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Offset from the parent's centre, in km.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Vector3>,
    /// Circular orbit around the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orbit: Option<Orbit>,
    /// Radius of the location's sphere of influence in km: whatever is inside belongs here.
    #[schemars(range(min = 0.001, max = 1.0e10))]
    pub radius: f64,
}

/// A point or offset in km, written `[x, y, z]` in YAML. Not a map with `x`/`y`/`z` keys:
/// kubectl reads YAML 1.1, where a bare `y:` key is the boolean `true`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default, JsonSchema)]
#[serde(from = "[f64; 3]", into = "[f64; 3]")]
#[schemars(with = "[f64; 3]")]
pub struct Vector3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

impl From<[f64; 3]> for Vector3 {
    fn from([x, y, z]: [f64; 3]) -> Self {
        Vector3 { x, y, z }
    }
}

impl From<Vector3> for [f64; 3] {
    fn from(v: Vector3) -> Self {
        [v.x, v.y, v.z]
    }
}

/// A circular orbit in the system's plane (z = 0 relative to the parent).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Orbit {
    /// Distance from the parent's centre in km.
    #[schemars(range(min = 0.0, max = 1.0e11))]
    pub radius: f64,
    /// Angle along the orbit in degrees, counter-clockwise from +x.
    #[serde(default)]
    #[schemars(range(min = -360.0, max = 360.0))]
    pub angle_degrees: f64,
}

/// A gate that moves a ship to a gate in another star system.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JumpGate {
    /// Unique within the system.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Location the gate belongs to (its position is relative to it); empty means the star.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Offset from the parent's centre, in km.
    pub position: Vector3,
    /// Where the gate leads.
    pub target: GateTarget,
}

/// The other end of a jump gate.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateTarget {
    /// Name of the StarSystem resource (same namespace).
    #[schemars(length(min = 1, max = 63))]
    pub system: String,
    /// Name of the gate in that system.
    #[schemars(length(min = 1, max = 63))]
    pub gate: String,
}

/// What the operator found when it checked the system.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StarSystemStatus {
    /// The generation these fields describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid` (and `Ready`), with a reason and a message naming the offending field.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Number of locations, the star excluded.
    #[serde(default)]
    pub locations: u32,
    /// Number of jump gates.
    #[serde(default)]
    pub gates: u32,
}
