//! The mesh as real processes on loopback: a replicant serving Stanton, three
//! game servers, a gateway and a few hundred bots whose routes cross territory
//! boundaries. One server is `kill -9`ed mid-run: no ship is lost or
//! duplicated, no bot is disconnected, and its territories are owned again.

mod mesh_support;

use std::time::Duration;

use mesh_support::*;

const BOTS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_server_mid_run_costs_the_players_nothing() {
    let mut mesh = Mesh::start(&["hurston", "cities", "deep-space"]);
    let before = assignments(mesh.grpc).await;
    // Static owners: each of the three has its own territories from the layout.
    for (t, s) in [("hurston", "hurston"), ("lorville", "cities"), ("deep-space", "deep-space")] {
        assert!(
            before.assignments.iter().any(|a| a.territory == t && a.server == s),
            "{t} should be owned by {s}: {before:?}"
        );
    }
    let mut bots = mesh.bots(BOTS, "20s", "takeover");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        bots.child.try_wait().ok().flatten().is_none(),
        "bots ended early: {}",
        bots.log_tail()
    );

    mesh.kill_server("hurston");
    let took = wait_reassigned(mesh.grpc, "hurston", Duration::from_secs(5)).await;
    eprintln!("hurston's territories owned again {took:?} after kill -9");

    let (code, r) = tokio::task::spawn_blocking(move || {
        let r = bots_report(&mut bots, Duration::from_secs(60));
        drop(bots);
        r
    })
    .await
    .expect("join");
    eprintln!("bots report: {r:#}");
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("players"), BOTS as u64);
    assert_eq!(n("connected"), BOTS as u64, "every bot connected\n{}", mesh.logs());
    assert_eq!(n("reconnects"), 0, "no bot was disconnected\n{}", mesh.logs());
    assert_eq!(n("entities_lost"), 0, "no ship lost\n{}", mesh.logs());
    assert_eq!(n("entities_duplicated"), 0, "no entity duplicated\n{}", mesh.logs());
    assert!(n("handoffs_seen") > BOTS as u64, "routes cross territory boundaries: {r}");
    assert!(n("update_latency_samples") > 0, "inputs reached the ships: {r}");
    assert_eq!(code, Some(0), "bots exit 0 when every invariant holds");

    let after = assignments(mesh.grpc).await;
    assert!(!after.live_servers.iter().any(|s| s == "hurston"), "{after:?}");
    for a in &after.assignments {
        assert!(
            !a.server.is_empty() && a.server != "hurston",
            "{} not owned again: {after:?}",
            a.territory
        );
        let old =
            before.assignments.iter().find(|b| b.territory == a.territory).map_or(0, |b| b.epoch);
        if before.assignments.iter().any(|b| b.territory == a.territory && b.server == "hurston") {
            assert!(a.epoch > old, "a new owner gets a new epoch");
        }
    }
    // The survivors kept ticking without falling behind.
    for sv in mesh.servers.iter().filter(|s| s.name != "hurston") {
        let (_, text) = http_get(sv.metrics, "/metrics");
        assert!(text.contains("starmesh_tick_duration_seconds_count"), "{}", sv.name);
    }
}
