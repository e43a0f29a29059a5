//! The checks the structural schema cannot express (names that refer to other names,
//! cycles, ownership of territories, quantities, lengths of derived object names), plus the
//! numeric ranges of the schema again, because `starmesh local` reads YAML without an API
//! server in front of it.
//!
//! Every check is pure and returns *all* problems, each naming the JSON path of the
//! offending field, so the operator's `Valid=False` condition and `starmesh local` report
//! the same thing.
//!
//! Rules, in short (each is a [`reason`] constant):
//!
//! StarSystem
//! - names of the resource, star, locations and gates are DNS-1123 labels (`InvalidName`);
//! - star, location and gate names share one namespace and are unique (`DuplicateName`);
//! - a parent is empty (the star), the star's name or an existing location (`UnknownParent`);
//! - parent chains end at the star (`ParentCycle`, reported once per cycle);
//! - kind/parent: planet, asteroidBelt, lagrangePoint under the star (a Lagrange point may
//!   also belong to a planet); moon under a planet; landingZone on a planet or moon (it is on
//!   a surface); station under the star, a planet, a moon, a Lagrange point or an asteroid
//!   belt, never under a station or landing zone (`InvalidParentKind`);
//! - exactly one of `position` and `orbit` (`PositionAndOrbit`, `MissingPlacement`);
//! - every number finite (`NotFinite`) and within sane bounds (`OutOfRange`);
//! - a location's centre lies inside its parent's sphere of influence, and its radius is
//!   smaller than its parent's (`OutsideParent`, `LargerThanParent`): the innermost sphere
//!   wins, so a child larger than its parent would swallow it. Children of the star must
//!   not sit inside the star's body (`InsideStar`): the star's radius is its body, not a
//!   sphere of influence;
//! - spheres that intersect must be nested in the tree (`OverlappingTerritories`): two
//!   siblings sharing space would leave a point's owner to tie-breaking;
//! - a gate's parent exists (`UnknownParent`), its target names a system and gate with
//!   DNS-1123 labels (`InvalidName`) and is not this system (`GateToSelf`).
//!
//! ServerLayout
//! - the name is a DNS-1035 label short enough for every derived object name
//!   (`InvalidName`, `NameTooLong`); `systemRef` is a DNS-1123 label (`InvalidName`);
//! - numeric fields within the schema's ranges (`OutOfRange`);
//! - Static: at least one server (`NoServers`), unique DNS-1123 server names
//!   (`InvalidName`, `DuplicateName`), no `dynamic` (`UnexpectedField`), every territory
//!   known to the system (`UnknownTerritory`), owned at most once (`TerritoryOwnedTwice`),
//!   and `deep-space` owned (`TerritoryNotOwned`). Locations no server names belong to
//!   their nearest named ancestor, and finally to deep space, so deep space being owned
//!   is what makes every point of the system owned;
//! - Dynamic: `dynamic` present (`MissingField`), no `servers` (`UnexpectedField`),
//!   `minServers <= maxServers` (`MinAboveMax`), `mergeBelowPlayers < splitAbovePlayers`
//!   (`MergeNotBelowSplit`);
//! - `shardAutoscaling`: ranges (`OutOfRange`), `minShards <= maxShards` (`MinAboveMax`);
//! - `playerCounts`: `Prometheus` needs `prometheus.url` (`MissingField`), an http(s)
//!   URL (`InvalidUrl`, plain http) and a non-blank query if one is given (`OutOfRange`);
//!   `prometheus` with the `Replicant` source is `UnexpectedField`;
//! - `postgres` backend needs `postgres.secretRef` (`MissingField`), a valid Secret name
//!   and key (`InvalidName`);
//! - every resource quantity and the volume size parse as Kubernetes quantities
//!   (`InvalidQuantity`), resource names are known (`UnknownResource`), requests do not
//!   exceed limits (`RequestAboveLimit`);
//! - image repository and tag are plausible references (`InvalidImage`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::{
    DEEP_SPACE, LayoutMode, LocationKind, PersistenceBackend, PlayerCountSource, ResourceSpec,
    ServerLayoutSpec, StarSystemSpec, Vector3,
};

/// One problem with a resource: where it is, a machine reason, and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `spec.locations[3].parent`.
    pub field: String,
    /// CamelCase machine reason (one of [`reason`]), used as the condition reason.
    pub reason: &'static str,
    /// A sentence naming the field and the offending value.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: &'static str, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason, message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.reason)
    }
}

impl std::error::Error for FieldError {}

/// Machine reasons of [`FieldError`], so callers can match without string literals.
pub mod reason {
    pub const INVALID_NAME: &str = "InvalidName";
    pub const NAME_TOO_LONG: &str = "NameTooLong";
    pub const DUPLICATE_NAME: &str = "DuplicateName";
    pub const UNKNOWN_PARENT: &str = "UnknownParent";
    pub const PARENT_CYCLE: &str = "ParentCycle";
    pub const INVALID_PARENT_KIND: &str = "InvalidParentKind";
    pub const POSITION_AND_ORBIT: &str = "PositionAndOrbit";
    pub const MISSING_PLACEMENT: &str = "MissingPlacement";
    pub const NOT_FINITE: &str = "NotFinite";
    pub const OUT_OF_RANGE: &str = "OutOfRange";
    pub const OUTSIDE_PARENT: &str = "OutsideParent";
    pub const LARGER_THAN_PARENT: &str = "LargerThanParent";
    pub const OVERLAPPING_TERRITORIES: &str = "OverlappingTerritories";
    pub const INSIDE_STAR: &str = "InsideStar";
    pub const GATE_TO_SELF: &str = "GateToSelf";
    pub const NO_SERVERS: &str = "NoServers";
    pub const UNKNOWN_TERRITORY: &str = "UnknownTerritory";
    pub const TERRITORY_OWNED_TWICE: &str = "TerritoryOwnedTwice";
    pub const TERRITORY_NOT_OWNED: &str = "TerritoryNotOwned";
    pub const MISSING_FIELD: &str = "MissingField";
    pub const UNEXPECTED_FIELD: &str = "UnexpectedField";
    pub const MIN_ABOVE_MAX: &str = "MinAboveMax";
    pub const MERGE_NOT_BELOW_SPLIT: &str = "MergeNotBelowSplit";
    pub const INVALID_QUANTITY: &str = "InvalidQuantity";
    pub const UNKNOWN_RESOURCE: &str = "UnknownResource";
    pub const REQUEST_ABOVE_LIMIT: &str = "RequestAboveLimit";
    pub const INVALID_IMAGE: &str = "InvalidImage";
    pub const INVALID_URL: &str = "InvalidUrl";
    /// The layout's `systemRef` names no StarSystem; reported by the caller, who looks it up.
    pub const SYSTEM_NOT_FOUND: &str = "SystemNotFound";
}

/// The error a caller reports when a layout's `systemRef` names no StarSystem, so the
/// operator and `starmesh local` word it the same way.
pub fn system_not_found(system_ref: &str) -> FieldError {
    FieldError::new(
        "spec.systemRef",
        reason::SYSTEM_NOT_FOUND,
        format!("spec.systemRef {system_ref:?} names no StarSystem in this namespace"),
    )
}

/// Largest distance from a parent's centre, in km (about 670 AU): bigger is a typo.
pub const MAX_DISTANCE_KM: f64 = 1.0e11;
/// Largest sphere of influence, in km (the schema's bound).
pub const MAX_RADIUS_KM: f64 = 1.0e10;
/// Smallest sphere of influence, in km (one metre).
pub const MIN_RADIUS_KM: f64 = 0.001;
/// Star radius bounds, in km (the schema's bounds).
pub const STAR_RADIUS_KM: (f64, f64) = (1.0, 1.0e8);
/// Most shards of one layout (the schema's bound); shard indices are `0..MAX_SHARDS`.
pub const MAX_SHARDS: i32 = 64;
/// The longest suffix the operator appends to a layout name: `-shard-63-replicant`.
pub const LONGEST_DERIVED_SUFFIX: &str = "-shard-63-replicant";
/// A StatefulSet's pods carry `controller-revision-hash: <name>-<hash>`, a label value of
/// at most 63 characters with a hash of up to 10, so a StatefulSet name is at most 52.
pub const MAX_STATEFULSET_NAME_LEN: usize = 52;
/// Longest layout name whose derived object names all fit Kubernetes limits (33).
pub const MAX_LAYOUT_NAME_LEN: usize = MAX_STATEFULSET_NAME_LEN - LONGEST_DERIVED_SUFFIX.len();
/// Longest static server name (the schema's bound).
pub const MAX_SERVER_NAME_LEN: usize = 40;

/// Whether `s` is a DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS-1035 label (a DNS-1123 label starting with a letter): what Service
/// names must be.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Whether `s` is a DNS-1123 subdomain (Secret and StorageClass names): dot-separated labels,
/// at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn name_error(field: String, what: &str, value: &str) -> FieldError {
    FieldError::new(
        field,
        reason::INVALID_NAME,
        format!(
            "{what} {value:?} is not a DNS-1123 label (1-63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ),
    )
}

// ---------------------------------------------------------------- StarSystem

/// A node of the location tree, for the parent rules.
#[derive(Clone, Copy, PartialEq)]
enum Node {
    Star,
    Location(usize),
}

/// Checks a StarSystem named `name`; returns every problem found (empty when valid).
pub fn validate_star_system(name: &str, spec: &StarSystemSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !is_dns1123_label(name) {
        errors.push(name_error("metadata.name".into(), "system name", name));
    }
    if let Some(d) = &spec.display_name
        && d.chars().count() > 63
    {
        errors.push(FieldError::new(
            "spec.displayName",
            reason::OUT_OF_RANGE,
            format!("spec.displayName is {} characters long; at most 63", d.chars().count()),
        ));
    }

    for (field, len, max) in [
        ("spec.locations", spec.locations.len(), 1024),
        ("spec.jumpGates", spec.jump_gates.len(), 64),
    ] {
        if len > max {
            errors.push(FieldError::new(
                field,
                reason::OUT_OF_RANGE,
                format!("{field} has {len} items; at most {max}"),
            ));
        }
    }

    // Names: valid and unique across star, locations and gates.
    let mut seen: HashMap<&str, String> = HashMap::new();
    let star_name = spec.star.name.as_str();
    if !is_dns1123_label(star_name) {
        errors.push(name_error("spec.star.name".into(), "star name", star_name));
    }
    seen.insert(star_name, "spec.star.name".into());
    let named =
        spec.locations
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("spec.locations[{i}].name"), "location name", l.name.as_str()))
            .chain(
                spec.jump_gates.iter().enumerate().map(|(i, g)| {
                    (format!("spec.jumpGates[{i}].name"), "gate name", g.name.as_str())
                }),
            );
    for (field, what, n) in named {
        if !is_dns1123_label(n) {
            errors.push(name_error(field.clone(), what, n));
        }
        if let Some(first) = seen.get(n) {
            errors.push(FieldError::new(
                field,
                reason::DUPLICATE_NAME,
                format!("{what} {n:?} is already used by {first}; star, location and gate names must be unique"),
            ));
        } else {
            seen.insert(n, field);
        }
    }

    // Star.
    check_number(
        &mut errors,
        "spec.star.radius",
        spec.star.radius,
        STAR_RADIUS_KM.0,
        STAR_RADIUS_KM.1,
    );

    // Parents: resolve each to a node (first location of a name wins).
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, l) in spec.locations.iter().enumerate() {
        index.entry(l.name.as_str()).or_insert(i);
    }
    let resolve = |parent: Option<&str>| -> Option<Node> {
        match parent {
            None | Some("") => Some(Node::Star),
            Some(p) if p == star_name => Some(Node::Star),
            Some(p) => index.get(p).map(|&i| Node::Location(i)),
        }
    };
    let parents: Vec<Option<Node>> =
        spec.locations.iter().map(|l| resolve(l.parent.as_deref())).collect();
    for (i, l) in spec.locations.iter().enumerate() {
        if parents[i].is_none() {
            errors.push(FieldError::new(
                format!("spec.locations[{i}].parent"),
                reason::UNKNOWN_PARENT,
                format!(
                    "spec.locations[{i}].parent {:?} of location {:?} names neither the star nor a location",
                    l.parent.as_deref().unwrap_or_default(),
                    l.name
                ),
            ));
        }
    }

    // Cycles: walk each chain; a chain that revisits a node is a cycle. Report each cycle
    // once, on its member that comes first in the spec.
    let in_cycle = cycle_members(&parents);
    let mut reported: HashSet<usize> = HashSet::new();
    for (i, &cyclic) in in_cycle.iter().enumerate() {
        if !cyclic || reported.contains(&i) {
            continue;
        }
        let mut members = vec![i];
        let mut cur = i;
        while let Some(Node::Location(p)) = parents[cur] {
            if p == i {
                break;
            }
            members.push(p);
            cur = p;
        }
        let names: Vec<&str> = members.iter().map(|&m| spec.locations[m].name.as_str()).collect();
        reported.extend(members.iter().copied());
        errors.push(FieldError::new(
            format!("spec.locations[{i}].parent"),
            reason::PARENT_CYCLE,
            format!(
                "spec.locations[{i}].parent {:?} makes a cycle ({} -> {}); every chain of parents must end at the star",
                spec.locations[i].parent.as_deref().unwrap_or_default(),
                names.join(" -> "),
                names[0]
            ),
        ));
    }

    // Kind/parent rules, placement, numbers.
    for (i, l) in spec.locations.iter().enumerate() {
        let base = format!("spec.locations[{i}]");
        if let Some(parent) = parents[i]
            && !in_cycle[i]
        {
            let parent_kind = match parent {
                Node::Star => None,
                Node::Location(p) => Some(spec.locations[p].kind),
            };
            if !parent_allowed(l.kind, parent_kind) {
                errors.push(FieldError::new(
                    format!("{base}.parent"),
                    reason::INVALID_PARENT_KIND,
                    format!(
                        "{base}.parent: a {} ({:?}) cannot belong to {}; {}",
                        l.kind.as_str(),
                        l.name,
                        match parent_kind {
                            None => "the star".to_string(),
                            Some(k) => format!("a {}", k.as_str()),
                        },
                        allowed_parents(l.kind)
                    ),
                ));
            }
        }
        match (&l.position, &l.orbit) {
            (Some(_), Some(_)) => errors.push(FieldError::new(
                format!("{base}.orbit"),
                reason::POSITION_AND_ORBIT,
                format!(
                    "location {:?} has both {base}.position and {base}.orbit; give exactly one",
                    l.name
                ),
            )),
            (None, None) => errors.push(FieldError::new(
                format!("{base}.position"),
                reason::MISSING_PLACEMENT,
                format!(
                    "location {:?} has neither {base}.position nor {base}.orbit; give exactly one",
                    l.name
                ),
            )),
            (Some(p), None) => check_vector(&mut errors, &format!("{base}.position"), *p),
            (None, Some(o)) => {
                check_number(
                    &mut errors,
                    &format!("{base}.orbit.radius"),
                    o.radius,
                    0.0,
                    MAX_DISTANCE_KM,
                );
                check_number(
                    &mut errors,
                    &format!("{base}.orbit.angleDegrees"),
                    o.angle_degrees,
                    -360.0,
                    360.0,
                );
            }
        }
        check_number(
            &mut errors,
            &format!("{base}.radius"),
            l.radius,
            MIN_RADIUS_KM,
            MAX_RADIUS_KM,
        );
    }

    // Spheres: a child's centre inside its parent's sphere, its radius smaller; nothing
    // orbiting the star inside the star's body.
    let offsets: Vec<Option<Vector3>> = spec.locations.iter().map(offset).collect();
    for (i, l) in spec.locations.iter().enumerate() {
        let (Some(parent), Some(off)) = (parents[i], offsets[i]) else { continue };
        if in_cycle[i] || !l.radius.is_finite() {
            continue;
        }
        let base = format!("spec.locations[{i}]");
        let distance = off.distance(Vector3::ZERO);
        let placement = if l.orbit.is_some() { "orbit.radius" } else { "position" };
        match parent {
            Node::Star => {
                if distance < spec.star.radius {
                    errors.push(FieldError::new(
                        format!("{base}.{placement}"),
                        reason::INSIDE_STAR,
                        format!(
                            "location {:?} is {distance} km from the star's centre, inside the star (radius {} km)",
                            l.name, spec.star.radius
                        ),
                    ));
                }
            }
            Node::Location(p) => {
                let pl = &spec.locations[p];
                if !pl.radius.is_finite() {
                    continue;
                }
                if distance > pl.radius {
                    errors.push(FieldError::new(
                        format!("{base}.{placement}"),
                        reason::OUTSIDE_PARENT,
                        format!(
                            "location {:?} is {distance} km from the centre of its parent {:?}, outside the parent's radius of {} km",
                            l.name, pl.name, pl.radius
                        ),
                    ));
                }
                if l.radius >= pl.radius {
                    errors.push(FieldError::new(
                        format!("{base}.radius"),
                        reason::LARGER_THAN_PARENT,
                        format!(
                            "{base}.radius {} km of {:?} is not smaller than its parent {:?}'s radius of {} km",
                            l.radius, l.name, pl.name, pl.radius
                        ),
                    ));
                }
            }
        }
    }

    // Gates.
    for (i, g) in spec.jump_gates.iter().enumerate() {
        let base = format!("spec.jumpGates[{i}]");
        if resolve(g.parent.as_deref()).is_none() {
            errors.push(FieldError::new(
                format!("{base}.parent"),
                reason::UNKNOWN_PARENT,
                format!(
                    "{base}.parent {:?} of gate {:?} names neither the star nor a location",
                    g.parent.as_deref().unwrap_or_default(),
                    g.name
                ),
            ));
        }
        check_vector(&mut errors, &format!("{base}.position"), g.position);
        if !is_dns1123_label(&g.target.system) {
            errors.push(name_error(
                format!("{base}.target.system"),
                "target system",
                &g.target.system,
            ));
        } else if g.target.system == name {
            errors.push(FieldError::new(
                format!("{base}.target.system"),
                reason::GATE_TO_SELF,
                format!("{base}.target.system of gate {:?} is {name:?}, this system itself; a jump gate leads to another system", g.name),
            ));
        }
        if !is_dns1123_label(&g.target.gate) {
            errors.push(name_error(format!("{base}.target.gate"), "target gate", &g.target.gate));
        }
    }
    // Only on an otherwise sound system: overlaps of broken spheres would be noise.
    if errors.is_empty() {
        check_overlaps(&mut errors, spec);
    }
    errors
}

/// Two locations whose spheres intersect while neither contains the other in the tree
/// (siblings, cousins) would make a point's territory depend on tie-breaking: reported
/// on the later one. Nesting (a moon in its planet) is how territories are meant to overlap.
fn check_overlaps(errors: &mut Vec<FieldError>, spec: &StarSystemSpec) {
    let placed = crate::geometry::place_locations(spec);
    let parent: HashMap<&str, &str> = spec
        .locations
        .iter()
        .filter_map(|l| Some((l.name.as_str(), l.parent.as_deref()?)))
        .collect();
    let ancestor = |a: &str, of: &str| {
        let mut cur = parent.get(of).copied();
        // Bounded walk: validation already refused cycles, but never loop on one.
        for _ in 0..=spec.locations.len() {
            match cur {
                Some(p) if p == a => return true,
                Some(p) => cur = parent.get(p).copied(),
                None => return false,
            }
        }
        false
    };
    for (j, lj) in placed.iter().enumerate() {
        let Some(lj) = lj else { continue };
        let hit = placed[..j].iter().flatten().find(|li| {
            li.centre.distance(lj.centre) < li.radius + lj.radius
                && !ancestor(&li.name, &lj.name)
                && !ancestor(&lj.name, &li.name)
        });
        if let Some(li) = hit {
            errors.push(FieldError::new(
                format!("spec.locations[{j}]"),
                reason::OVERLAPPING_TERRITORIES,
                format!(
                    "location {:?} overlaps {:?} though neither lies inside the other; sibling territories must not intersect",
                    lj.name, li.name
                ),
            ));
        }
    }
}

/// For each location, whether it lies on a cycle of parents.
fn cycle_members(parents: &[Option<Node>]) -> Vec<bool> {
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; parents.len()];
    let mut in_cycle = vec![false; parents.len()];
    for start in 0..parents.len() {
        let mut path = Vec::new();
        let mut cur = start;
        loop {
            match state[cur] {
                2 => break,
                1 => {
                    // `cur` is on the path: everything from it onwards is the cycle.
                    if let Some(pos) = path.iter().position(|&n| n == cur) {
                        for &n in &path[pos..] {
                            in_cycle[n] = true;
                        }
                    }
                    break;
                }
                _ => {
                    state[cur] = 1;
                    path.push(cur);
                    match parents[cur] {
                        Some(Node::Location(p)) => cur = p,
                        _ => break,
                    }
                }
            }
        }
        for n in path {
            state[n] = 2;
        }
    }
    in_cycle
}

/// The kind/parent rule (`None` is the star).
fn parent_allowed(kind: LocationKind, parent: Option<LocationKind>) -> bool {
    use LocationKind::*;
    match kind {
        Planet | AsteroidBelt => parent.is_none(),
        Moon => parent == Some(Planet),
        LandingZone => matches!(parent, Some(Planet | Moon)),
        LagrangePoint => matches!(parent, None | Some(Planet)),
        Station => matches!(parent, None | Some(Planet | Moon | LagrangePoint | AsteroidBelt)),
    }
}

fn allowed_parents(kind: LocationKind) -> &'static str {
    use LocationKind::*;
    match kind {
        Planet => "a planet orbits the star",
        AsteroidBelt => "an asteroid belt orbits the star",
        Moon => "a moon orbits a planet",
        LandingZone => "a landing zone is on a planet or a moon",
        LagrangePoint => "a Lagrange point belongs to the star or a planet",
        Station => {
            "a station belongs to the star, a planet, a moon, a Lagrange point or an asteroid belt"
        }
    }
}

fn offset(l: &crate::Location) -> Option<Vector3> {
    match (l.position, l.orbit) {
        (Some(p), None) if p.x.is_finite() && p.y.is_finite() && p.z.is_finite() => Some(p),
        (None, Some(o)) if o.radius.is_finite() => Some(Vector3 { x: o.radius, y: 0.0, z: 0.0 }),
        _ => None,
    }
}

fn check_number(errors: &mut Vec<FieldError>, field: &str, v: f64, min: f64, max: f64) {
    if !v.is_finite() {
        errors.push(FieldError::new(
            field,
            reason::NOT_FINITE,
            format!("{field} is {v}; it must be a finite number"),
        ));
    } else if v < min || v > max {
        errors.push(FieldError::new(
            field,
            reason::OUT_OF_RANGE,
            format!("{field} is {v}; it must be between {min} and {max}"),
        ));
    }
}

fn check_vector(errors: &mut Vec<FieldError>, field: &str, v: Vector3) {
    for (axis, c) in [("x", v.x), ("y", v.y), ("z", v.z)] {
        check_number(errors, &format!("{field}.{axis}"), c, -MAX_DISTANCE_KM, MAX_DISTANCE_KM);
    }
}

// ---------------------------------------------------------------- ServerLayout

/// Checks a ServerLayout named `name`. With `system`, territories are checked against its
/// locations; without (not found yet), only what the layout says alone is checked — the
/// caller reports the missing system.
pub fn validate_server_layout(
    name: &str,
    spec: &ServerLayoutSpec,
    system: Option<&StarSystemSpec>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !is_dns1035_label(name) {
        errors.push(FieldError::new(
            "metadata.name",
            reason::INVALID_NAME,
            format!(
                "layout name {name:?} is not a DNS-1035 label (lowercase letters, digits and '-', \
                 starting with a letter): it names Services"
            ),
        ));
    } else if name.len() > MAX_LAYOUT_NAME_LEN {
        errors.push(FieldError::new(
            "metadata.name",
            reason::NAME_TOO_LONG,
            format!(
                "layout name {name:?} is {} characters; at most {MAX_LAYOUT_NAME_LEN}, so that \
                 \"{name}{LONGEST_DERIVED_SUFFIX}\" and its pods' labels fit Kubernetes limits",
                name.len()
            ),
        ));
    }
    if !is_dns1123_label(&spec.system_ref) {
        errors.push(name_error("spec.systemRef".into(), "systemRef", &spec.system_ref));
    }
    check_int(&mut errors, "spec.shards", spec.shards.into(), 0, MAX_SHARDS.into());
    check_int(&mut errors, "spec.tickRate", spec.tick_rate.into(), 1, 240);
    check_int(&mut errors, "spec.gateway.replicas", spec.gateway.replicas.into(), 1, 64);
    check_int(&mut errors, "spec.gateway.port", spec.gateway.port.into(), 1, 65535);

    match spec.mode {
        LayoutMode::Static => validate_static(&mut errors, spec, system),
        LayoutMode::Dynamic => validate_dynamic(&mut errors, spec),
    }
    validate_autoscaling(&mut errors, spec);

    // Persistence.
    let p = &spec.persistence;
    if p.backend == PersistenceBackend::Postgres {
        match &p.postgres {
            None => errors.push(FieldError::new(
                "spec.persistence.postgres.secretRef",
                reason::MISSING_FIELD,
                "spec.persistence.backend is postgres but spec.persistence.postgres.secretRef is missing; \
                 name the Secret holding the connection string",
            )),
            Some(pg) => {
                let r = &pg.secret_ref;
                if !is_dns1123_subdomain(&r.name) {
                    errors.push(FieldError::new(
                        "spec.persistence.postgres.secretRef.name",
                        reason::INVALID_NAME,
                        format!("spec.persistence.postgres.secretRef.name {:?} is not a valid Secret name", r.name),
                    ));
                }
                let key_ok = !r.key.is_empty()
                    && r.key.len() <= 253
                    && r.key.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
                if !key_ok {
                    errors.push(FieldError::new(
                        "spec.persistence.postgres.secretRef.key",
                        reason::INVALID_NAME,
                        format!("spec.persistence.postgres.secretRef.key {:?} is not a valid Secret key", r.key),
                    ));
                }
            }
        }
    }
    if let Some(e) = &p.embedded {
        let field = "spec.persistence.embedded.volumeSize";
        match parse_quantity(&e.volume_size) {
            Ok(v) if v > 0.0 => {}
            Ok(_) => errors.push(FieldError::new(
                field,
                reason::INVALID_QUANTITY,
                format!("{field} {:?} must be greater than zero", e.volume_size),
            )),
            Err(why) => errors.push(quantity_error(field, &e.volume_size, why)),
        }
        if let Some(sc) = &e.storage_class_name
            && !is_dns1123_subdomain(sc)
        {
            errors.push(FieldError::new(
                "spec.persistence.embedded.storageClassName",
                reason::INVALID_NAME,
                format!("spec.persistence.embedded.storageClassName {sc:?} is not a valid StorageClass name"),
            ));
        }
    }

    // Image.
    let img = &spec.image;
    let repo_ok = !img.repository.is_empty()
        && img.repository.len() <= 255
        && img.repository.bytes().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'.' | b'_' | b'-' | b'/' | b':')
        });
    if !repo_ok {
        errors.push(FieldError::new(
            "spec.image.repository",
            reason::INVALID_IMAGE,
            format!(
                "spec.image.repository {:?} is not an image repository (lowercase, no spaces)",
                img.repository
            ),
        ));
    }
    let tag_ok = !img.tag.is_empty()
        && img.tag.len() <= 128
        && img.tag.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !img.tag.starts_with(['.', '-']);
    if !tag_ok {
        errors.push(FieldError::new(
            "spec.image.tag",
            reason::INVALID_IMAGE,
            format!("spec.image.tag {:?} is not an image tag", img.tag),
        ));
    }

    // The gateway's player token Secret: a Secret name, or the pods could never start.
    if let Some(secret) = &spec.gateway.player_token_secret
        && !is_dns1123_subdomain(secret)
    {
        errors.push(name_error("spec.gateway.playerTokenSecret".into(), "Secret name", secret));
    }

    // Resources.
    for (role, r) in [
        ("replicant", &spec.resources.replicant),
        ("server", &spec.resources.server),
        ("gateway", &spec.resources.gateway),
    ] {
        check_resources(&mut errors, &format!("spec.resources.{role}"), r);
    }
    errors
}

fn validate_static(
    errors: &mut Vec<FieldError>,
    spec: &ServerLayoutSpec,
    system: Option<&StarSystemSpec>,
) {
    if spec.dynamic.is_some() {
        errors.push(FieldError::new(
            "spec.dynamic",
            reason::UNEXPECTED_FIELD,
            "spec.dynamic is set but spec.mode is Static; remove it or set mode: Dynamic",
        ));
    }
    if spec.servers.is_empty() {
        errors.push(FieldError::new(
            "spec.servers",
            reason::NO_SERVERS,
            "spec.mode is Static but spec.servers is empty; list the game servers and the territories each owns",
        ));
        return;
    }
    if spec.servers.len() > 256 {
        errors.push(FieldError::new(
            "spec.servers",
            reason::OUT_OF_RANGE,
            format!("spec.servers has {} items; at most 256", spec.servers.len()),
        ));
    }
    let known: Option<HashSet<&str>> =
        system.map(|s| s.locations.iter().map(|l| l.name.as_str()).chain([DEEP_SPACE]).collect());
    let mut server_names: HashMap<&str, usize> = HashMap::new();
    let mut owners: BTreeMap<&str, String> = BTreeMap::new();
    for (i, s) in spec.servers.iter().enumerate() {
        let field = format!("spec.servers[{i}].name");
        if !is_dns1123_label(&s.name) {
            errors.push(name_error(field.clone(), "server name", &s.name));
        } else if s.name.len() > MAX_SERVER_NAME_LEN {
            errors.push(FieldError::new(
                field.clone(),
                reason::NAME_TOO_LONG,
                format!(
                    "server name {:?} is {} characters; at most {MAX_SERVER_NAME_LEN}",
                    s.name,
                    s.name.len()
                ),
            ));
        }
        if let Some(first) = server_names.get(s.name.as_str()) {
            errors.push(FieldError::new(
                field,
                reason::DUPLICATE_NAME,
                format!("server name {:?} is already used by spec.servers[{first}]", s.name),
            ));
        } else {
            server_names.insert(&s.name, i);
        }
        if s.territories.is_empty() {
            errors.push(FieldError::new(
                format!("spec.servers[{i}].territories"),
                reason::MISSING_FIELD,
                format!("server {:?} owns no territory; list at least one", s.name),
            ));
        }
        for (j, t) in s.territories.iter().enumerate() {
            let field = format!("spec.servers[{i}].territories[{j}]");
            if let Some(known) = &known
                && !known.contains(t.as_str())
            {
                errors.push(FieldError::new(
                    field.clone(),
                    reason::UNKNOWN_TERRITORY,
                    format!(
                        "{field} {t:?} is neither a location of star system {:?} nor {DEEP_SPACE:?}",
                        spec.system_ref
                    ),
                ));
                continue;
            }
            if let Some(first) = owners.get(t.as_str()) {
                errors.push(FieldError::new(
                    field,
                    reason::TERRITORY_OWNED_TWICE,
                    format!("territory {t:?} is owned by server {:?} and already by {first}; each territory has one owner", s.name),
                ));
            } else {
                owners.insert(t, format!("server {:?} (spec.servers[{i}])", s.name));
            }
        }
    }
    if !owners.contains_key(DEEP_SPACE) {
        errors.push(FieldError::new(
            "spec.servers",
            reason::TERRITORY_NOT_OWNED,
            format!(
                "no server in spec.servers owns {DEEP_SPACE:?}; it holds every location no server names, \
                 so without an owner entities there would have no authority"
            ),
        ));
    }
}

fn validate_dynamic(errors: &mut Vec<FieldError>, spec: &ServerLayoutSpec) {
    if !spec.servers.is_empty() {
        errors.push(FieldError::new(
            "spec.servers",
            reason::UNEXPECTED_FIELD,
            "spec.servers is set but spec.mode is Dynamic: territories are assigned by load; remove it or set mode: Static",
        ));
    }
    let Some(d) = &spec.dynamic else {
        errors.push(FieldError::new(
            "spec.dynamic",
            reason::MISSING_FIELD,
            "spec.mode is Dynamic but spec.dynamic is missing; give at least `dynamic: {}` for the defaults",
        ));
        return;
    };
    let b = "spec.dynamic";
    check_int(errors, &format!("{b}.minServers"), d.min_servers.into(), 1, 256);
    check_int(errors, &format!("{b}.maxServers"), d.max_servers.into(), 1, 256);
    check_int(
        errors,
        &format!("{b}.targetPlayersPerServer"),
        d.target_players_per_server.into(),
        1,
        100_000,
    );
    check_int(errors, &format!("{b}.splitAbovePlayers"), d.split_above_players.into(), 1, 100_000);
    check_int(errors, &format!("{b}.mergeBelowPlayers"), d.merge_below_players.into(), 0, 100_000);
    check_int(errors, &format!("{b}.cooldownSeconds"), d.cooldown_seconds.into(), 0, 86_400);
    if d.min_servers > d.max_servers {
        errors.push(FieldError::new(
            format!("{b}.minServers"),
            reason::MIN_ABOVE_MAX,
            format!("{b}.minServers {} is above {b}.maxServers {}", d.min_servers, d.max_servers),
        ));
    }
    if d.merge_below_players >= d.split_above_players {
        errors.push(FieldError::new(
            format!("{b}.mergeBelowPlayers"),
            reason::MERGE_NOT_BELOW_SPLIT,
            format!(
                "{b}.mergeBelowPlayers {} is not below {b}.splitAbovePlayers {}; territories would split and merge back forever",
                d.merge_below_players, d.split_above_players
            ),
        ));
    }
}

fn validate_autoscaling(errors: &mut Vec<FieldError>, spec: &ServerLayoutSpec) {
    if let Some(a) = &spec.shard_autoscaling {
        let b = "spec.shardAutoscaling";
        check_int(errors, &format!("{b}.minShards"), a.min_shards.into(), 1, MAX_SHARDS.into());
        check_int(errors, &format!("{b}.maxShards"), a.max_shards.into(), 1, MAX_SHARDS.into());
        check_int(
            errors,
            &format!("{b}.targetPlayersPerShard"),
            a.target_players_per_shard.into(),
            1,
            1_000_000,
        );
        check_int(errors, &format!("{b}.cooldownSeconds"), a.cooldown_seconds.into(), 0, 86_400);
        if a.min_shards > a.max_shards {
            errors.push(FieldError::new(
                format!("{b}.minShards"),
                reason::MIN_ABOVE_MAX,
                format!("{b}.minShards {} is above {b}.maxShards {}", a.min_shards, a.max_shards),
            ));
        }
    }
    let pc = &spec.player_counts;
    match (pc.source, &pc.prometheus) {
        (PlayerCountSource::Replicant, None) => {}
        (PlayerCountSource::Replicant, Some(_)) => errors.push(FieldError::new(
            "spec.playerCounts.prometheus",
            reason::UNEXPECTED_FIELD,
            "spec.playerCounts.prometheus is set but spec.playerCounts.source is Replicant; remove it or set source: Prometheus",
        )),
        (PlayerCountSource::Prometheus, None) => errors.push(FieldError::new(
            "spec.playerCounts.prometheus.url",
            reason::MISSING_FIELD,
            "spec.playerCounts.source is Prometheus but spec.playerCounts.prometheus.url is missing",
        )),
        (PlayerCountSource::Prometheus, Some(p)) => {
            let field = "spec.playerCounts.prometheus.url";
            // Plain http only: the operator's client has no TLS (a Prometheus in the
            // cluster is reached over the pod network).
            let rest = p.url.strip_prefix("http://");
            let ok = p.url.len() <= 2048
                && rest.is_some_and(|r| {
                    !r.is_empty()
                        && !r.starts_with('/')
                        && r.bytes().all(|c| c.is_ascii_graphic())
                });
            if !ok {
                errors.push(FieldError::new(
                    field,
                    reason::INVALID_URL,
                    format!("{field} {:?} is not an http:// URL with a host (https is not supported)", p.url),
                ));
            }
            if let Some(q) = &p.query
                && (q.trim().is_empty() || q.len() > 4096)
            {
                errors.push(FieldError::new(
                    "spec.playerCounts.prometheus.query",
                    reason::OUT_OF_RANGE,
                    "spec.playerCounts.prometheus.query must be a non-blank PromQL query of at most 4096 characters; omit it for the default",
                ));
            }
        }
    }
}

fn check_int(errors: &mut Vec<FieldError>, field: &str, v: i64, min: i64, max: i64) {
    if v < min || v > max {
        errors.push(FieldError::new(
            field,
            reason::OUT_OF_RANGE,
            format!("{field} is {v}; it must be between {min} and {max}"),
        ));
    }
}

fn check_resources(errors: &mut Vec<FieldError>, base: &str, r: &ResourceSpec) {
    let mut parsed: [BTreeMap<&str, f64>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (slot, (kind, map)) in
        [("requests", &r.requests), ("limits", &r.limits)].into_iter().enumerate()
    {
        for (resource, q) in map {
            let field = format!("{base}.{kind}.{resource}");
            if !known_resource(resource) {
                errors.push(FieldError::new(
                    field.clone(),
                    reason::UNKNOWN_RESOURCE,
                    format!(
                        "{field}: {resource:?} is not a resource (cpu, memory, ephemeral-storage, hugepages-<size> or a domain-qualified name)"
                    ),
                ));
            }
            match parse_quantity(q) {
                Ok(v) => {
                    parsed[slot].insert(resource, v);
                }
                Err(why) => errors.push(quantity_error(&field, q, why)),
            }
        }
    }
    for (resource, request) in &parsed[0] {
        if let Some(limit) = parsed[1].get(resource)
            && request > limit
        {
            errors.push(FieldError::new(
                format!("{base}.requests.{resource}"),
                reason::REQUEST_ABOVE_LIMIT,
                format!(
                    "{base}.requests.{resource} {:?} is above {base}.limits.{resource} {:?}",
                    r.requests.get(*resource).map(String::as_str).unwrap_or_default(),
                    r.limits.get(*resource).map(String::as_str).unwrap_or_default()
                ),
            ));
        }
    }
}

fn known_resource(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage")
        || name.strip_prefix("hugepages-").is_some_and(|size| parse_quantity(size).is_ok())
        || name.split_once('/').is_some_and(|(domain, n)| {
            is_dns1123_subdomain(domain) && !n.is_empty() && n.len() <= 63
        })
}

fn quantity_error(field: &str, value: &str, why: &str) -> FieldError {
    FieldError::new(
        field,
        reason::INVALID_QUANTITY,
        format!(
            "{field} {value:?} is not a Kubernetes quantity ({why}); write e.g. 250m, 1.5, 512Mi, 1Gi, 2e3"
        ),
    )
}

// ---------------------------------------------------------------- quantities

/// Parses a non-negative Kubernetes quantity (`250m`, `1.5`, `512Mi`, `1G`, `2e3`) into its
/// value, following `k8s.io/apimachinery/pkg/api/resource` syntax: an optional `+`, digits
/// with at most one `.`, then one suffix (binary `Ki`..`Ei`, decimal `n u m k M G T P E`, or
/// an exponent `e<int>`/`E<int>`). Negative quantities are refused: no starmesh field means
/// anything by them. Returns a short reason on failure.
pub fn parse_quantity(s: &str) -> Result<f64, &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > 64 {
        return Err("too long");
    }
    let body = match s.as_bytes()[0] {
        b'-' => return Err("negative"),
        b'+' => &s[1..],
        _ => s,
    };
    let number_len = body.bytes().take_while(|c| c.is_ascii_digit() || *c == b'.').count();
    let (number, suffix) = body.split_at(number_len);
    if number.is_empty() || number == "." || number.bytes().filter(|c| *c == b'.').count() > 1 {
        return Err("no number");
    }
    let value: f64 = number.parse().map_err(|_| "no number")?;
    let scale = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or("unknown suffix")?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit())
            {
                return Err("bad exponent");
            }
            let e: i32 = exp.parse().map_err(|_| "bad exponent")?;
            10f64.powi(e)
        }
    };
    let v = value * scale;
    if v.is_finite() { Ok(v) } else { Err("too large") }
}

/// Checks a single quantity string, for callers outside a spec (the CLI's flags).
pub fn validate_quantity(field: &str, value: &str) -> Result<f64, FieldError> {
    parse_quantity(value).map_err(|why| quantity_error(field, value, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        DynamicLayout, GateTarget, JumpGate, Location, Orbit, PostgresStore, SecretKeyRef, Star,
        StaticServer,
    };

    fn loc(
        name: &str,
        kind: LocationKind,
        parent: Option<&str>,
        orbit: f64,
        radius: f64,
    ) -> Location {
        Location {
            name: name.into(),
            kind,
            parent: parent.map(Into::into),
            position: None,
            orbit: Some(Orbit { radius: orbit, angle_degrees: 0.0 }),
            radius,
        }
    }

    fn system() -> StarSystemSpec {
        use LocationKind::*;
        StarSystemSpec {
            display_name: None,
            star: Star { name: "sun".into(), radius: 1000.0 },
            locations: vec![
                loc("rock", Planet, None, 100_000.0, 5_000.0),
                loc("pebble", Moon, Some("rock"), 2_000.0, 500.0),
                loc("camp", LandingZone, Some("pebble"), 100.0, 10.0),
                loc("dock", Station, Some("sun"), 50_000.0, 100.0),
            ],
            jump_gates: vec![JumpGate {
                name: "sun-far".into(),
                parent: None,
                position: Vector3 { x: 0.0, y: 200_000.0, z: 0.0 },
                target: GateTarget { system: "far".into(), gate: "far-sun".into() },
            }],
        }
    }

    fn layout() -> ServerLayoutSpec {
        let server = |n: &str, t: &[&str]| StaticServer {
            name: n.into(),
            territories: t.iter().map(|s| s.to_string()).collect(),
        };
        ServerLayoutSpec {
            system_ref: "home".into(),
            shards: 1,
            mode: LayoutMode::Static,
            servers: vec![server("a", &["rock", "camp"]), server("b", &["dock", DEEP_SPACE])],
            dynamic: None,
            tick_rate: 30,
            persistence: Default::default(),
            image: Default::default(),
            game_server_image: None,
            resources: Default::default(),
            gateway: Default::default(),
            shard_autoscaling: None,
            player_counts: Default::default(),
        }
    }

    /// The (field, reason) pairs of the errors.
    fn found(errors: &[FieldError]) -> Vec<(String, &'static str)> {
        errors.iter().map(|e| (e.field.clone(), e.reason)).collect()
    }

    #[track_caller]
    fn system_has(spec: &StarSystemSpec, field: &str, reason: &str) {
        let errors = validate_star_system("home", spec);
        assert!(
            errors.iter().any(|e| e.field == field && e.reason == reason),
            "expected {field} {reason}, got {:?}",
            found(&errors)
        );
        for e in &errors {
            assert!(!e.message.is_empty() && !e.to_string().is_empty());
        }
    }

    #[track_caller]
    fn layout_has(spec: &ServerLayoutSpec, field: &str, reason: &str) {
        let errors = validate_server_layout("home", spec, Some(&system()));
        assert!(
            errors.iter().any(|e| e.field == field && e.reason == reason),
            "expected {field} {reason}, got {:?}",
            found(&errors)
        );
    }

    #[test]
    fn the_fixtures_are_valid() {
        assert_eq!(found(&validate_star_system("home", &system())), vec![]);
        assert_eq!(found(&validate_server_layout("home", &layout(), Some(&system()))), vec![]);
        assert_eq!(found(&validate_server_layout("home", &layout(), None)), vec![]);
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "a-b", "0a", "a0", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "a b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(!is_dns1035_label("0a"));
        assert!(is_dns1123_subdomain("db.example-1"));
        assert!(!is_dns1123_subdomain("db..x"));
    }

    #[test]
    fn names_must_be_labels() {
        let mut s = system();
        s.locations[1].name = "Pebble".into();
        s.star.name = "sun_".into();
        system_has(&s, "spec.locations[1].name", reason::INVALID_NAME);
        system_has(&s, "spec.star.name", reason::INVALID_NAME);
        assert!(validate_star_system("Home", &system()).iter().any(|e| e.field == "metadata.name"));
    }

    #[test]
    fn names_are_unique_across_star_locations_and_gates() {
        let mut s = system();
        s.locations[3].name = "rock".into();
        system_has(&s, "spec.locations[3].name", reason::DUPLICATE_NAME);
        let mut s = system();
        s.jump_gates[0].name = "sun".into();
        system_has(&s, "spec.jumpGates[0].name", reason::DUPLICATE_NAME);
    }

    #[test]
    fn parents_must_exist() {
        let mut s = system();
        s.locations[1].parent = Some("nowhere".into());
        system_has(&s, "spec.locations[1].parent", reason::UNKNOWN_PARENT);
        let mut s = system();
        s.jump_gates[0].parent = Some("nowhere".into());
        system_has(&s, "spec.jumpGates[0].parent", reason::UNKNOWN_PARENT);
    }

    #[test]
    fn a_cycle_is_reported_once_on_its_first_member() {
        let mut s = system();
        s.locations[0].parent = Some("camp".into());
        let errors = validate_star_system("home", &s);
        let cycles: Vec<_> = errors.iter().filter(|e| e.reason == reason::PARENT_CYCLE).collect();
        assert_eq!(cycles.len(), 1, "{errors:?}");
        assert_eq!(cycles[0].field, "spec.locations[0].parent");
        assert!(cycles[0].message.contains("rock -> camp"), "{}", cycles[0].message);
        let mut s = system();
        s.locations[3].parent = Some("dock".into());
        system_has(&s, "spec.locations[3].parent", reason::PARENT_CYCLE);
    }

    #[test]
    fn intersecting_spheres_must_be_nested() {
        use LocationKind::*;
        // The fixture nests a moon in its planet and a landing zone in the moon: fine.
        assert!(validate_star_system("home", &system()).is_empty());
        let mut s = system();
        // A second planet reaching into rock's sphere.
        s.locations.push(loc("stone", Planet, None, 108_000.0, 5_000.0));
        system_has(&s, "spec.locations[4]", reason::OVERLAPPING_TERRITORIES);
        // Moons of two planets that do not touch, reaching into each other.
        let mut s = system();
        s.locations.push(loc("stone", Planet, None, 111_000.0, 5_000.0));
        let mut grit = loc("grit", Moon, Some("stone"), 4_000.0, 2_000.0);
        grit.orbit = Some(Orbit { radius: 4_000.0, angle_degrees: 180.0 });
        s.locations.push(grit);
        s.locations[1] = loc("pebble", Moon, Some("rock"), 4_000.0, 2_000.0);
        system_has(&s, "spec.locations[5]", reason::OVERLAPPING_TERRITORIES);
        // Touching is not intersecting.
        let mut s = system();
        s.locations.push(loc("stone", Planet, None, 110_000.0, 5_000.0));
        assert!(validate_star_system("home", &s).is_empty());
    }

    #[test]
    fn kinds_have_parent_rules() {
        use LocationKind::*;
        let cases = [
            (Moon, None, false),
            (Moon, Some(Planet), true),
            (Moon, Some(Moon), false),
            (Planet, Some(Planet), false),
            (Planet, None, true),
            (AsteroidBelt, None, true),
            (AsteroidBelt, Some(Planet), false),
            (LandingZone, Some(Planet), true),
            (LandingZone, Some(Moon), true),
            (LandingZone, Some(Station), false),
            (LandingZone, None, false),
            (Station, None, true),
            (Station, Some(Moon), true),
            (Station, Some(LagrangePoint), true),
            (Station, Some(Station), false),
            (Station, Some(LandingZone), false),
            (LagrangePoint, Some(Planet), true),
            (LagrangePoint, Some(Moon), false),
        ];
        for (kind, parent, ok) in cases {
            assert_eq!(parent_allowed(kind, parent), ok, "{kind:?} under {parent:?}");
        }
        let mut s = system();
        s.locations[1].parent = None;
        s.locations[1].orbit = Some(Orbit { radius: 300_000.0, angle_degrees: 0.0 });
        system_has(&s, "spec.locations[1].parent", reason::INVALID_PARENT_KIND);
    }

    #[test]
    fn exactly_one_of_position_and_orbit() {
        let mut s = system();
        s.locations[0].position = Some(Vector3 { x: 100_000.0, y: 0.0, z: 0.0 });
        system_has(&s, "spec.locations[0].orbit", reason::POSITION_AND_ORBIT);
        let mut s = system();
        s.locations[0].orbit = None;
        system_has(&s, "spec.locations[0].position", reason::MISSING_PLACEMENT);
    }

    #[test]
    fn numbers_are_finite_and_sane() {
        let mut s = system();
        s.locations[3].orbit = None;
        s.locations[3].position = Some(Vector3 { x: f64::NAN, y: 0.0, z: 1e12 });
        s.locations[0].radius = f64::INFINITY;
        s.star.radius = 0.5;
        s.locations[1].radius = -1.0;
        s.jump_gates[0].position.x = f64::NEG_INFINITY;
        system_has(&s, "spec.locations[3].position.x", reason::NOT_FINITE);
        system_has(&s, "spec.locations[3].position.z", reason::OUT_OF_RANGE);
        system_has(&s, "spec.locations[0].radius", reason::NOT_FINITE);
        system_has(&s, "spec.locations[1].radius", reason::OUT_OF_RANGE);
        system_has(&s, "spec.star.radius", reason::OUT_OF_RANGE);
        system_has(&s, "spec.jumpGates[0].position.x", reason::NOT_FINITE);
        let mut s = system();
        s.locations[0].orbit = Some(Orbit { radius: 100_000.0, angle_degrees: 720.0 });
        system_has(&s, "spec.locations[0].orbit.angleDegrees", reason::OUT_OF_RANGE);
    }

    #[test]
    fn children_sit_inside_their_parent_and_are_smaller() {
        let mut s = system();
        s.locations[1].orbit = Some(Orbit { radius: 6_000.0, angle_degrees: 0.0 });
        system_has(&s, "spec.locations[1].orbit.radius", reason::OUTSIDE_PARENT);
        let mut s = system();
        s.locations[1].radius = 5_000.0;
        system_has(&s, "spec.locations[1].radius", reason::LARGER_THAN_PARENT);
        let mut s = system();
        s.locations[0].orbit = Some(Orbit { radius: 10.0, angle_degrees: 0.0 });
        system_has(&s, "spec.locations[0].orbit.radius", reason::INSIDE_STAR);
    }

    #[test]
    fn gates_lead_elsewhere_with_valid_names() {
        let mut s = system();
        s.jump_gates[0].target.system = "home".into();
        system_has(&s, "spec.jumpGates[0].target.system", reason::GATE_TO_SELF);
        let mut s = system();
        s.jump_gates[0].target = GateTarget { system: "Far".into(), gate: "".into() };
        system_has(&s, "spec.jumpGates[0].target.system", reason::INVALID_NAME);
        system_has(&s, "spec.jumpGates[0].target.gate", reason::INVALID_NAME);
    }

    #[test]
    fn layout_names_fit_derived_objects() {
        assert_eq!(MAX_LAYOUT_NAME_LEN, 33);
        let longest = "a".repeat(MAX_LAYOUT_NAME_LEN);
        assert!(validate_server_layout(&longest, &layout(), None).is_empty());
        let statefulset = format!("{longest}{LONGEST_DERIVED_SUFFIX}");
        assert!(statefulset.len() + 1 + 10 <= 63);
        let e = validate_server_layout(&format!("{longest}a"), &layout(), None);
        assert_eq!(found(&e), vec![("metadata.name".to_string(), reason::NAME_TOO_LONG)]);
        let e = validate_server_layout("1abc", &layout(), None);
        assert_eq!(found(&e), vec![("metadata.name".to_string(), reason::INVALID_NAME)]);
        let mut l = layout();
        l.system_ref = "Home".into();
        layout_has(&l, "spec.systemRef", reason::INVALID_NAME);
    }

    #[test]
    fn static_needs_servers_with_unique_names() {
        let mut l = layout();
        l.servers.clear();
        layout_has(&l, "spec.servers", reason::NO_SERVERS);
        let mut l = layout();
        l.servers[1].name = "a".into();
        layout_has(&l, "spec.servers[1].name", reason::DUPLICATE_NAME);
        l.servers[0].name = "A".into();
        layout_has(&l, "spec.servers[0].name", reason::INVALID_NAME);
        let mut l = layout();
        l.servers[0].name = "a".repeat(41);
        layout_has(&l, "spec.servers[0].name", reason::NAME_TOO_LONG);
        let mut l = layout();
        l.servers[0].territories.clear();
        layout_has(&l, "spec.servers[0].territories", reason::MISSING_FIELD);
        let mut l = layout();
        l.dynamic = Some(DynamicLayout::default());
        layout_has(&l, "spec.dynamic", reason::UNEXPECTED_FIELD);
    }

    #[test]
    fn territories_exist_and_are_owned_exactly_once() {
        let mut l = layout();
        l.servers[0].territories.push("mars".into());
        layout_has(&l, "spec.servers[0].territories[2]", reason::UNKNOWN_TERRITORY);
        // Without the system, names cannot be checked (the caller reports the system missing).
        assert!(validate_server_layout("home", &l, None).is_empty());
        // The star is not a territory: deep space is.
        let mut l = layout();
        l.servers[0].territories.push("sun".into());
        layout_has(&l, "spec.servers[0].territories[2]", reason::UNKNOWN_TERRITORY);
        let mut l = layout();
        l.servers[1].territories.push("rock".into());
        layout_has(&l, "spec.servers[1].territories[2]", reason::TERRITORY_OWNED_TWICE);
        let mut l = layout();
        l.servers[0].territories.push("camp".into());
        layout_has(&l, "spec.servers[0].territories[2]", reason::TERRITORY_OWNED_TWICE);
        let mut l = layout();
        l.servers[1].territories.retain(|t| t != DEEP_SPACE);
        layout_has(&l, "spec.servers", reason::TERRITORY_NOT_OWNED);
    }

    #[test]
    fn dynamic_rules() {
        let mut l = layout();
        l.mode = LayoutMode::Dynamic;
        layout_has(&l, "spec.servers", reason::UNEXPECTED_FIELD);
        layout_has(&l, "spec.dynamic", reason::MISSING_FIELD);
        l.servers.clear();
        l.dynamic = Some(DynamicLayout::default());
        assert!(validate_server_layout("home", &l, Some(&system())).is_empty());
        l.dynamic = Some(DynamicLayout {
            min_servers: 9,
            max_servers: 8,
            merge_below_players: 120,
            split_above_players: 120,
            cooldown_seconds: 100_000,
            ..DynamicLayout::default()
        });
        layout_has(&l, "spec.dynamic.minServers", reason::MIN_ABOVE_MAX);
        layout_has(&l, "spec.dynamic.mergeBelowPlayers", reason::MERGE_NOT_BELOW_SPLIT);
        layout_has(&l, "spec.dynamic.cooldownSeconds", reason::OUT_OF_RANGE);
    }

    #[test]
    fn autoscaling_rules() {
        use crate::{PlayerCounts, PrometheusSource, ShardAutoscaling};
        let mut l = layout();
        l.shard_autoscaling = Some(ShardAutoscaling::default());
        l.player_counts = PlayerCounts {
            source: PlayerCountSource::Prometheus,
            prometheus: Some(PrometheusSource { url: "http://10.0.0.1:9090".into(), query: None }),
        };
        assert!(validate_server_layout("home", &l, Some(&system())).is_empty());
        l.shard_autoscaling = Some(ShardAutoscaling {
            min_shards: 5,
            max_shards: 4,
            target_players_per_shard: 0,
            cooldown_seconds: 90_000,
        });
        layout_has(&l, "spec.shardAutoscaling.minShards", reason::MIN_ABOVE_MAX);
        layout_has(&l, "spec.shardAutoscaling.targetPlayersPerShard", reason::OUT_OF_RANGE);
        layout_has(&l, "spec.shardAutoscaling.cooldownSeconds", reason::OUT_OF_RANGE);
        l.shard_autoscaling = Some(ShardAutoscaling { max_shards: 65, ..Default::default() });
        layout_has(&l, "spec.shardAutoscaling.maxShards", reason::OUT_OF_RANGE);
        let bad_urls = ["ftp://x", "https://p", "http://", "http:///x", "prom:9090", "http://a b"];
        for bad in bad_urls {
            l.player_counts.prometheus = Some(PrometheusSource { url: bad.into(), query: None });
            layout_has(&l, "spec.playerCounts.prometheus.url", reason::INVALID_URL);
        }
        l.player_counts.prometheus =
            Some(PrometheusSource { url: "http://p".into(), query: Some("  ".into()) });
        layout_has(&l, "spec.playerCounts.prometheus.query", reason::OUT_OF_RANGE);
        l.player_counts.prometheus = None;
        layout_has(&l, "spec.playerCounts.prometheus.url", reason::MISSING_FIELD);
        l.player_counts = PlayerCounts {
            source: PlayerCountSource::Replicant,
            prometheus: Some(PrometheusSource { url: "http://p".into(), query: None }),
        };
        layout_has(&l, "spec.playerCounts.prometheus", reason::UNEXPECTED_FIELD);
    }

    #[test]
    fn ranges_of_the_schema_hold_without_it() {
        let mut l = layout();
        l.tick_rate = 0;
        l.shards = 65;
        l.gateway.port = 70_000;
        l.gateway.replicas = 0;
        layout_has(&l, "spec.tickRate", reason::OUT_OF_RANGE);
        layout_has(&l, "spec.shards", reason::OUT_OF_RANGE);
        layout_has(&l, "spec.gateway.port", reason::OUT_OF_RANGE);
        layout_has(&l, "spec.gateway.replicas", reason::OUT_OF_RANGE);
    }

    #[test]
    fn postgres_needs_a_secret() {
        let mut l = layout();
        l.persistence.backend = PersistenceBackend::Postgres;
        layout_has(&l, "spec.persistence.postgres.secretRef", reason::MISSING_FIELD);
        l.persistence.postgres = Some(PostgresStore {
            secret_ref: SecretKeyRef { name: "Bad Name".into(), key: "a/b".into() },
        });
        layout_has(&l, "spec.persistence.postgres.secretRef.name", reason::INVALID_NAME);
        layout_has(&l, "spec.persistence.postgres.secretRef.key", reason::INVALID_NAME);
        l.persistence.postgres = Some(PostgresStore {
            secret_ref: SecretKeyRef { name: "db".into(), key: "url".into() },
        });
        assert!(validate_server_layout("home", &l, None).is_empty());
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        let ok = [
            ("1", 1.0),
            ("250m", 0.25),
            ("1.5", 1.5),
            ("512Mi", 512.0 * 1024.0 * 1024.0),
            ("1Gi", 1024f64.powi(3)),
            ("2k", 2000.0),
            ("1E", 1e18),
            ("2e3", 2000.0),
            ("2E-3", 0.002),
            ("+3", 3.0),
            (".5", 0.5),
            ("0", 0.0),
        ];
        for (s, v) in ok {
            let got = parse_quantity(s).unwrap_or(f64::NAN);
            assert!((got - v).abs() <= v.abs() * 1e-12, "{s}: {got} != {v}");
        }
        for bad in
            ["", "-1", "abc", "1.2.3", "1 Gi", "1gi", "1KiB", "Gi", "1e", "1e99999", ".", "1m5"]
        {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
        assert!(validate_quantity("x", "1Gi").is_ok());
        assert_eq!(
            validate_quantity("x", "lots").map_err(|e| e.reason),
            Err(reason::INVALID_QUANTITY)
        );
    }

    #[test]
    fn resources_and_volume_are_checked() {
        let mut l = layout();
        l.resources.server.requests.insert("memory".into(), "lots".into());
        l.resources.gateway.limits.insert("cpus".into(), "1".into());
        l.resources.replicant.requests.insert("cpu".into(), "2".into());
        l.persistence.embedded = Some(crate::EmbeddedStore {
            volume_size: "0".into(),
            storage_class_name: Some("Fast SSD".into()),
        });
        layout_has(&l, "spec.resources.server.requests.memory", reason::INVALID_QUANTITY);
        layout_has(&l, "spec.resources.gateway.limits.cpus", reason::UNKNOWN_RESOURCE);
        layout_has(&l, "spec.resources.replicant.requests.cpu", reason::REQUEST_ABOVE_LIMIT);
        layout_has(&l, "spec.persistence.embedded.volumeSize", reason::INVALID_QUANTITY);
        layout_has(&l, "spec.persistence.embedded.storageClassName", reason::INVALID_NAME);
        assert!(known_resource("nvidia.com/gpu") && known_resource("hugepages-2Mi"));
    }

    #[test]
    fn images_are_plausible() {
        let mut l = layout();
        l.image.repository = "Starmesh Node".into();
        l.image.tag = "".into();
        layout_has(&l, "spec.image.repository", reason::INVALID_IMAGE);
        layout_has(&l, "spec.image.tag", reason::INVALID_IMAGE);
        let mut l = layout();
        l.image.repository = "registry.local:5000/starmesh/node".into();
        l.image.tag = "v0.1.0-rc.1".into();
        assert!(validate_server_layout("home", &l, None).is_empty());
    }
}
