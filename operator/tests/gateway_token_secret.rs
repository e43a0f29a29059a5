//! `spec.gateway.playerTokenSecret`: the gateway Deployment mounts that Secret's
//! `player-token-key` read-only and points `STARMESH_PLAYER_TOKEN_KEY` at it; without
//! the field, nothing about a token key is in the pod (development mode). Pure builders.

use std::path::Path;

use starmesh_api::{PLAYER_TOKEN_SECRET_KEY, ServerLayout};
use starmesh_operator::builders::{LayoutRef, gateway_deployment};

fn layout(secret: Option<&str>) -> ServerLayout {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/stanton-layout.yaml");
    let text = std::fs::read_to_string(&p).expect("example layout");
    let mut l = starmesh_api::yaml::load_server_layout(&text).expect("loads");
    l.metadata.namespace = Some("games".into());
    l.metadata.uid = Some("0b7c6c1e-1111-4222-8333-944445555666".into());
    l.spec.gateway.player_token_secret = secret.map(Into::into);
    l
}

#[test]
fn the_gateway_mounts_the_named_secret_and_nothing_without_one() {
    let l = layout(Some("stanton-player-tokens"));
    let r = LayoutRef::new(&l, "starmesh/node:test").expect("layout ref");
    let pod = gateway_deployment(&r, 0).spec.template.spec.expect("pod");
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "player-token")
        .expect("a player-token volume");
    let secret = vol.secret.as_ref().expect("from a Secret");
    assert_eq!(secret.secret_name.as_deref(), Some("stanton-player-tokens"));
    let items = secret.items.as_ref().expect("one item");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, PLAYER_TOKEN_SECRET_KEY);
    let c = &pod.containers[0];
    let mount =
        c.volume_mounts.iter().flatten().find(|m| m.name == "player-token").expect("mounted");
    assert_eq!(mount.read_only, Some(true));
    let env = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "STARMESH_PLAYER_TOKEN_KEY")
        .and_then(|e| e.value.clone())
        .expect("the key path in the environment");
    assert_eq!(env, format!("{}/{PLAYER_TOKEN_SECRET_KEY}", mount.mount_path));

    // The field round-trips through the API's JSON under its documented name.
    let json = serde_json::to_value(&l.spec.gateway).expect("json");
    assert_eq!(json["playerTokenSecret"], "stanton-player-tokens");

    let l = layout(None);
    let r = LayoutRef::new(&l, "starmesh/node:test").expect("layout ref");
    let pod = gateway_deployment(&r, 0).spec.template.spec.expect("pod");
    assert!(!pod.volumes.iter().flatten().any(|v| v.name == "player-token"));
    let c = &pod.containers[0];
    assert!(!c.env.iter().flatten().any(|e| e.name == "STARMESH_PLAYER_TOKEN_KEY"));
    let json = serde_json::to_value(&l.spec.gateway).expect("json");
    assert!(json.get("playerTokenSecret").is_none(), "absent, not null: {json}");
}
