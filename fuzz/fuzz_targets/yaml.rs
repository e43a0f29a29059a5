//! The YAML loader `starmesh local` (and every `--system`/`--layout` flag) uses, on raw
//! text: `starmesh_api::yaml`, then the node's `resources::from_resources`, which
//! validates and builds the territory map. Nothing may panic or run away on any input
//! (the loader bounds size, depth, events and aliases).
#![no_main]

use libfuzzer_sys::fuzz_target;
use starmesh_api::yaml::{self, Resource};
use starmesh_node::resources;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(all) = yaml::load_resources(text) else { return };
    for r in &all {
        let _ = r.name();
    }
    // The same text as single-resource loads (kubectl-like: one document each).
    let _ = yaml::load_star_system(text);
    let _ = yaml::load_server_layout(text);
    let systems = all.iter().filter(|r| matches!(r, Resource::StarSystem(_))).count();
    let served = resources::from_resources(&[("fuzz.yaml".into(), all)], "0");
    if systems == 0 {
        assert!(served.is_err(), "served without a StarSystem");
    }
});
