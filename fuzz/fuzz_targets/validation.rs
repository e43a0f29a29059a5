//! StarSystem/ServerLayout validation on structured input: specs built from the fuzzer's
//! bytes with names drawn from a small pool (so duplicates, cycles, orphan parents and
//! unknown territories are common) and numbers from a pool that includes NaN, infinities,
//! zero, negatives and absurd sizes. Validation must never panic, and whatever it accepts
//! the node must be able to serve (territory map, gates), as `starmesh local` does.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use starmesh_api::{
    Resource, ServerLayout, StarSystem, validate_server_layout, validate_star_system,
};
use starmesh_node::resources;

const NAMES: &[&str] =
    &["sun", "rock", "pebble", "moon", "dock", "zone", "gate", "deep-space", "Bad_Name", ""];
const KINDS: &[&str] =
    &["planet", "moon", "station", "landingZone", "asteroidBelt", "lagrangePoint"];

fn name(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 16)? {
        // Occasionally anything at all (long, non-ASCII, control characters).
        return Ok(u.arbitrary::<String>()?);
    }
    Ok((*u.choose(NAMES)?).to_string())
}

fn number(u: &mut Unstructured) -> Result<f64> {
    Ok(match u.int_in_range(0..=9)? {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -1.0,
        3 => 0.0,
        4 => 1.0e300,
        5 => f64::from_bits(u.arbitrary()?),
        _ => f64::from(u.int_in_range(1u32..=200_000_000)?),
    })
}

fn vector(u: &mut Unstructured) -> Result<Value> {
    Ok(json!({"x": number(u)?, "y": number(u)?, "z": number(u)?}))
}

fn system(u: &mut Unstructured) -> Result<Value> {
    let mut locations = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let mut l = json!({
            "name": name(u)?,
            "kind": *u.choose(KINDS)?,
            "radius": number(u)?,
        });
        if u.arbitrary()? {
            l["parent"] = json!(name(u)?);
        }
        if u.arbitrary()? {
            l["position"] = vector(u)?;
        }
        if u.arbitrary()? {
            l["orbit"] = json!({"radius": number(u)?, "angleDegrees": number(u)?});
        }
        locations.push(l);
    }
    let mut gates = Vec::new();
    for _ in 0..u.int_in_range(0..=2)? {
        let mut g = json!({
            "name": name(u)?,
            "position": vector(u)?,
            "target": {"system": name(u)?, "gate": name(u)?},
        });
        if u.arbitrary()? {
            g["parent"] = json!(name(u)?);
        }
        gates.push(g);
    }
    Ok(json!({
        "apiVersion": "starmesh.dev/v1alpha1",
        "kind": "StarSystem",
        "metadata": {"name": "fuzz"},
        "spec": {
            "star": {"name": name(u)?, "radius": number(u)?},
            "locations": locations,
            "jumpGates": gates,
        }
    }))
}

fn layout(u: &mut Unstructured) -> Result<Value> {
    let mut servers = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let mut territories = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            territories.push(name(u)?);
        }
        servers.push(json!({"name": name(u)?, "territories": territories}));
    }
    let mut spec = json!({
        "systemRef": "fuzz",
        "shards": u.int_in_range(-1..=70)?,
        "mode": if u.ratio(3, 4)? { "Static" } else { "Dynamic" },
        "tickRate": u.int_in_range(0u32..=1000)?,
        "servers": servers,
    });
    if u.arbitrary()? {
        let (a, b) = (u.int_in_range(0u32..=10)?, u.int_in_range(0u32..=10)?);
        spec["dynamic"] = json!({
            "minServers": a, "maxServers": b,
            "targetPlayersPerServer": u.arbitrary::<u32>()?,
            "splitAbovePlayers": u.arbitrary::<u32>()?,
            "mergeBelowPlayers": u.arbitrary::<u32>()?,
        });
    }
    if u.arbitrary()? {
        spec["resources"] = json!({"server": {
            "requests": {"cpu": u.arbitrary::<String>()?},
            "limits": {"cpu": u.arbitrary::<String>()?},
        }});
    }
    Ok(json!({
        "apiVersion": "starmesh.dev/v1alpha1",
        "kind": "ServerLayout",
        "metadata": {"name": "fuzz"},
        "spec": spec,
    }))
}

fn check(u: &mut Unstructured) -> Result<()> {
    // Typed through serde like the API server's JSON; shapes serde refuses are the
    // schema's business (the yaml target covers that path).
    let Ok(sys) = serde_json::from_value::<StarSystem>(system(u)?) else { return Ok(()) };
    let Ok(lay) = serde_json::from_value::<ServerLayout>(layout(u)?) else { return Ok(()) };
    let sys_errors = validate_star_system("fuzz", &sys.spec);
    let lay_errors = validate_server_layout("fuzz", &lay.spec, Some(&sys.spec));
    for e in sys_errors.iter().chain(&lay_errors) {
        // Every problem names a field and a machine reason.
        assert!(!e.reason.is_empty());
        assert!(e.field.starts_with("spec") || e.field.starts_with("metadata"), "{e:?}");
    }
    let served = resources::from_resources(
        &[("fuzz".into(), vec![Resource::StarSystem(sys), Resource::ServerLayout(lay)])],
        "0",
    );
    if sys_errors.is_empty() && lay_errors.is_empty() {
        // Valid resources are always servable: no gap between the operator's verdict
        // and what a replicant can load.
        if let Err(e) = served {
            panic!("valid resources the node cannot serve: {e}");
        }
    } else {
        assert!(served.is_err(), "the node served resources validation refused");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});
