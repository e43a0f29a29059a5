//! Every message a peer can send, decoded as tonic decodes it (prost) and then run
//! through the validation the receiving service runs before anything touches state.
//! The first byte picks the message type; the rest is the encoded message.
//! Beyond "never panics", what validation accepts must be what the state relies on:
//! finite, bounded numbers and bounded names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use starmesh_node::gateway::auth::TokenKey;
use starmesh_node::gateway::{self, placement};
use starmesh_node::model::Vec3;
use starmesh_node::wire::pb;
use starmesh_node::wire::validate::{self, ServerCommand};

fn bounded(v: Vec3, max: f64) {
    for c in [v.x, v.y, v.z] {
        assert!(c.is_finite() && c.abs() <= max, "accepted out-of-range coordinate {c}");
    }
}

fn name_ok(s: &str) {
    assert!(s.len() <= validate::MAX_NAME_LEN, "accepted a {}-byte name", s.len());
}

/// Signed tokens as the gateway checks them at Join and Play (a fixed key and clock).
fn token(key: &TokenKey, t: &str) {
    const NOW: u64 = 1_800_000_000;
    if let Ok(name) = key.verify(t, NOW) {
        // Only a token this key signed verifies; its name is a valid player name.
        assert!(placement::valid_name(&name));
        assert!(t.len() <= starmesh_node::gateway::auth::MAX_TOKEN_LEN);
    }
    if placement::valid_name(t) {
        let minted = key.mint(t, NOW + 1).expect("valid names mint");
        assert_eq!(key.verify(&minted, NOW).as_deref(), Ok(t));
        assert!(key.verify(&minted, NOW + 1).is_err(), "expired");
    }
}

fuzz_target!(|data: &[u8]| {
    let key = TokenKey::new(vec![0x5a; 32]).expect("a 32-byte key");
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 8 {
        // ServerLink: game server -> replicant.
        0 => {
            let Ok(m) = pb::ServerMessage::decode(body) else { return };
            match validate::server_message(m) {
                Ok(ServerCommand::Hello(n)) => name_ok(&n),
                Ok(ServerCommand::Write(w)) => {
                    assert_ne!(w.id, 0);
                    bounded(w.position, validate::MAX_COORD_KM);
                    bounded(w.velocity, validate::MAX_SPEED_KM_S);
                    name_ok(&w.location);
                    assert!(w.components.len() <= validate::MAX_COMPONENT_BYTES);
                }
                Ok(ServerCommand::Neighbourhood(Some(i))) => {
                    assert!(i.radius > 0.0 && i.radius <= validate::MAX_RADIUS_KM);
                    bounded(i.center, validate::MAX_COORD_KM);
                }
                Ok(ServerCommand::GateEnter(g)) => {
                    assert_ne!(g.id, 0);
                    assert!(!g.gate.is_empty());
                    name_ok(&g.gate);
                }
                Ok(ServerCommand::Neighbourhood(None) | ServerCommand::Heartbeat) | Err(_) => {}
            }
        }
        // GatewayLink: gateway -> replicant.
        1 => {
            let Ok(m) = pb::GatewayMessage::decode(body) else { return };
            if let Ok(validate::GatewayCommand::Attach { player, radius, position, .. }) =
                validate::gateway_message(m)
            {
                assert_ne!(player, 0);
                assert!(radius > 0.0 && radius <= validate::MAX_RADIUS_KM);
                bounded(position, validate::MAX_COORD_KM);
            }
        }
        // GateLink: another system's replicant -> this replicant.
        2 => {
            let Ok(m) = pb::ArriveRequest::decode(body) else { return };
            if let Ok(a) = validate::arrive_request(m) {
                assert_ne!(a.entity.id, 0);
                assert!(a.transfer_id.bytes().all(|b| b.is_ascii_graphic()));
                bounded(a.entity.position, validate::MAX_COORD_KM);
                // What is stored is read back identically (the store re-validates it).
                let back = validate::entity_from_pb(validate::entity_to_pb(&a.entity));
                assert_eq!(back.as_ref(), Ok(&a.entity));
            }
        }
        // PlayerLink Play: player -> gateway (hello, then ship commands).
        3 => {
            let Ok(m) = pb::PlayerMessage::decode(body) else { return };
            match m.msg {
                Some(pb::player_message::Msg::Input(c)) => {
                    if gateway::validate_command(&c).is_ok() {
                        assert!(c.route.len() <= gateway::MAX_ROUTE_LEN);
                        assert!(c.max_speed.is_finite());
                    }
                }
                Some(pb::player_message::Msg::Hello(h)) => {
                    let _ = placement::player_for_token(&h.token);
                    token(&key, &h.token);
                }
                None => {}
            }
        }
        // PlayerLink Join: player -> gateway.
        4 => {
            let Ok(m) = pb::JoinRequest::decode(body) else { return };
            token(&key, &m.token);
            if placement::valid_name(&m.name) {
                name_ok(&m.name);
                let p = placement::player_id(&m.name);
                assert_ne!(p, 0);
                assert!(p < placement::PLAYER_ENTITY_BASE);
                let token = placement::token_for(&m.name);
                assert_eq!(placement::player_for_token(&token).map(|t| t.1), Some(p));
            }
        }
        // Admin requests: operator / tools -> replicant (only Drain and Lookup carry data).
        5 => {
            let _ = pb::DrainRequest::decode(body).map(|d| d.server.len());
            let _ = pb::LookupRequest::decode(body).map(|l| l.id);
            let _ = pb::CountsRequest::decode(body);
            let _ = pb::AssignmentsRequest::decode(body);
        }
        // Entities read back from a store (redb or PostgreSQL) are validated the same way.
        6 => {
            let Ok(m) = pb::EntityState::decode(body) else { return };
            if let Ok(e) = validate::entity_from_pb(m) {
                bounded(e.velocity, validate::MAX_SPEED_KM_S);
                let back = validate::entity_from_pb(validate::entity_to_pb(&e));
                assert_eq!(back.as_ref(), Ok(&e));
            }
        }
        // The replicant's answers, as a game server and a gateway decode them.
        // A gateway merges batches it forwards as bytes: hostile bytes are refused with
        // a typed error and never lose the batch already pending.
        _ => {
            let _ = pb::ReplicantMessage::decode(body);
            let _ = pb::GatewayUpdate::decode(body);
            if let Ok(u) = gateway::forward::GatewayUpdateIn::decode(body) {
                let leave = pb::entity_update::Change::Leave(1);
                let good =
                    pb::UpdateBatch { tick: 1, updates: vec![pb::EntityUpdate { change: Some(leave) }] };
                let mut c = gateway::bubble::Coalescer::default();
                c.push(good).expect("a one-update batch merges");
                let typed = pb::UpdateBatch::decode(u.batch.clone());
                match c.push_encoded(u.batch) {
                    Ok(()) => assert!(typed.is_ok(), "merged bytes that are not a batch"),
                    Err(gateway::bubble::PushError::Undecodable(_)) => assert!(typed.is_err()),
                    Err(gateway::bubble::PushError::Overflow) => {}
                }
            }
        }
    }
});
