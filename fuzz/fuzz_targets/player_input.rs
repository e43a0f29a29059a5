//! A player's ship command end to end through pure code: the gateway's validation, then
//! the example game applying it to a ship and flying a few ticks. A command the gateway
//! lets through must never make the game produce a write the replicant refuses (the
//! ship would be stuck: every write rejected).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use starmesh_node::gateway;
use starmesh_node::model::{Entity, Vec3};
use starmesh_node::server::game::{ExampleGame, Game, SHIP_KIND};
use starmesh_node::wire::pb;
use starmesh_node::wire::validate::{self, entity_to_pb, vec3_to_pb};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = pb::PlayerMessage::decode(data) else { return };
    let Some(pb::player_message::Msg::Input(cmd)) = msg.msg else { return };
    if gateway::validate_command(&cmd).is_err() {
        return;
    }
    let input = pb::GameInput { cmd: Some(pb::game_input::Cmd::Command(cmd)) }.encode_to_vec();
    let mut ship = Entity {
        id: 1 << 62 | 7,
        kind: SHIP_KIND,
        position: Vec3::new(1.0e6, -2.0e6, 0.0),
        velocity: Vec3::default(),
        location: "".into(),
        version: 1,
        components: Bytes::new(),
        components_version: 1,
        territory: "deep-space".into(),
    };
    let mut game = ExampleGame;
    game.input(&mut ship, 7, &input);
    for _ in 0..20 {
        game.step(&mut ship, 1.0 / 30.0);
        let w = pb::EntityWrite {
            seq: 1,
            epoch: 1,
            id: ship.id,
            kind: ship.kind,
            position: Some(vec3_to_pb(ship.position)),
            velocity: Some(vec3_to_pb(ship.velocity)),
            location: ship.location.to_string(),
            components: ship.components.clone(),
            // Fields the example game does not write keep their defaults.
            ..Default::default()
        };
        if let Err(e) = validate::entity_write(w) {
            panic!(
                "the game made a write the replicant refuses: {e}; ship {:?}",
                entity_to_pb(&ship)
            );
        }
    }
});
