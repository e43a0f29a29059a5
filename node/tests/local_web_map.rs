//! The web map in a real headless Chromium: the page loads with no console
//! error, draws every location of the system, shows entities moving, and
//! recolours a server's territories after that server is killed. Leaves a
//! screenshot in target/tmp/ as the artifact.

mod local_support;

use std::collections::BTreeMap;
use std::time::Duration;

use local_support::cdp::Browser;
use local_support::mesh::{LocalMesh, leading_number, summary_rows};
use serde_json::Value;

/// The server whose kill the test watches, and a location of its territory.
const VICTIM: &str = "hurston";
const VICTIM_LOCATION: &str = "hurston";

#[test]
fn web_map_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mesh =
        LocalMesh::spawn(&dir.path().join("data"), &["--bots", "20", "--duration", "120s"]);
    mesh.wait_line("running", Duration::from_secs(60));
    let url = format!("http://{}/", mesh.addr);
    let (_, system) = mesh.get("/api/system");
    let system: Value = serde_json::from_str(&system).expect("system JSON");
    let mut locations: Vec<String> = system["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .map(|l| l["name"].as_str().expect("name").to_string())
        .collect();
    locations.sort();

    let mut b = Browser::launch();
    let page = b.new_page();
    b.navigate(&page, &url);
    b.wait_for(&page, "!!(window.starmesh && window.starmesh.ready())", Duration::from_secs(20));
    // On loopback the controls are on: no read-only banner.
    assert_eq!(
        b.eval(&page, "document.getElementById('readonly-banner').hidden"),
        Value::Bool(true)
    );

    // Every location is drawn: a circle with a finite position and a size.
    let drawn = b.eval(
        &page,
        r#"[...document.querySelectorAll('#layer-locations circle[data-location]')]
            .filter(c => isFinite(+c.getAttribute('cx')) && isFinite(+c.getAttribute('cy')) && +c.getAttribute('r') > 0)
            .map(c => c.dataset.location)"#,
    );
    let mut drawn: Vec<String> = drawn
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    drawn.sort();
    for l in &locations {
        assert!(drawn.contains(l), "{l} drawn; drawn: {drawn:?}");
    }
    // ...each at its own place: the log scales keep even a landing zone 1000 km
    // from its planet's centre apart from the station 1500 km out.
    let distinct = b.eval(
        &page,
        r#"new Set([...document.querySelectorAll('#layer-locations circle[data-location]')]
            .map(c => (+c.getAttribute('cx')).toFixed(3) + ',' + (+c.getAttribute('cy')).toFixed(3))).size"#,
    );
    // (A rest stop at the very centre of its Lagrange point shares its centre.)
    let real_centres: std::collections::BTreeSet<String> = system["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .map(|l| format!("{},{},{}", l["x"], l["y"], l["z"]))
        .chain(std::iter::once("0.0,0.0,0.0".to_string()))
        .collect();
    assert_eq!(distinct.as_u64(), Some(real_centres.len() as u64), "distinct places drawn apart");
    let gates = b.eval(&page, "document.querySelectorAll('[data-gate]').length");
    assert_eq!(gates.as_u64(), system["gates"].as_array().map(|g| g.len() as u64));

    // Entities move: the same ids at different places a moment later.
    b.wait_for(
        &page,
        "Object.keys(starmesh.entityPositions()).length > 0",
        Duration::from_secs(30),
    );
    let before = positions(&mut b, &page);
    std::thread::sleep(Duration::from_millis(1500));
    let after = positions(&mut b, &page);
    let moved = before.iter().filter(|(id, p)| after.get(*id).is_some_and(|q| q != *p)).count();
    assert!(moved > 0, "some entity moved between two moments: {before:?} vs {after:?}");

    // Kill a server from the page, as a user would; its territories change colour.
    let owner = |b: &mut Browser| {
        b.eval(
            &page,
            &format!(
                "document.querySelector('[data-location=\"{VICTIM_LOCATION}\"]').dataset.owner"
            ),
        )
    };
    b.wait_for(
        &page,
        &format!("document.querySelector('[data-location=\"{VICTIM_LOCATION}\"]').dataset.owner === '{VICTIM}'"),
        Duration::from_secs(20),
    );
    let colour_before = b.eval(&page, &format!("starmesh.ownerColour('{VICTIM_LOCATION}')"));
    let screenshot_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    b.screenshot(&page, &screenshot_dir.join("local-web-map-before-kill.png"));
    b.eval(&page, &format!("starmesh.select({{type: 'server', name: '{VICTIM}'}}); true"));
    b.eval(&page, "document.querySelector('#details button').click(); true");
    b.wait_for(
        &page,
        &format!(
            "(o => o !== '' && o !== '{VICTIM}')(document.querySelector('[data-location=\"{VICTIM_LOCATION}\"]').dataset.owner)"
        ),
        Duration::from_secs(20),
    );
    let new_owner = owner(&mut b);
    let colour_after = b.eval(&page, &format!("starmesh.ownerColour('{VICTIM_LOCATION}')"));
    assert_ne!(colour_before, colour_after, "{VICTIM_LOCATION} recoloured for {new_owner}");
    b.wait_for(
        &page,
        "[...document.querySelectorAll('#events li.takeover')].length > 0",
        Duration::from_secs(10),
    );
    // Select the location so the screenshot shows its details panel too.
    b.eval(
        &page,
        &format!("starmesh.select({{type: 'location', name: '{VICTIM_LOCATION}'}}); true"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let shot = screenshot_dir.join("local-web-map.png");
    b.screenshot(&page, &shot);
    eprintln!("screenshot: {}", shot.display());
    // And Hurston framed, with its moons, station and landing zone legible.
    assert_eq!(b.eval(&page, &format!("starmesh.zoomTo('{VICTIM_LOCATION}')")), Value::Bool(true));
    std::thread::sleep(Duration::from_millis(300));
    b.screenshot(&page, &screenshot_dir.join("local-web-map-hurston.png"));

    let errors = b.errors();
    b.close();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // Ctrl-C: the run stops cleanly and the summary counts the takeover.
    mesh.interrupt();
    let st = mesh.wait_exit(Duration::from_secs(60));
    let out = mesh.stdout();
    assert!(st.success(), "exit {st}:\n{}", out.join("\n"));
    let rows: BTreeMap<String, String> = summary_rows(&out).into_iter().collect();
    assert!(leading_number(&rows["takeovers"]) >= 1, "{rows:?}");
    assert_eq!(leading_number(&rows["lost"]), 0, "{rows:?}");
}

fn positions(b: &mut Browser, page: &str) -> BTreeMap<String, Value> {
    match b.eval(page, "starmesh.entityPositions()") {
        Value::Object(m) => m.into_iter().collect(),
        v => panic!("positions: {v}"),
    }
}

/// The map as served on an address other machines can reach: read-only. The
/// page must say so plainly (a banner) and offer no kill button, and the kill
/// endpoint must refuse. Served in process on loopback with the supervisor's
/// non-loopback verdict, so the test opens no port beyond loopback.
#[test]
fn a_read_only_map_says_so_in_a_real_browser() {
    use starmesh_node::replicant::{self, Config};
    use starmesh_node::store::embedded::EmbeddedStore;
    use starmesh_node::web_map::{self, Control, WebState, feed::Feed};
    use std::sync::Arc;

    struct ReadOnly;
    impl Control for ReadOnly {
        fn kill_allowed(&self) -> bool {
            false
        }
        fn kill_server(&self, _: &str) -> bool {
            false
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sol.yaml");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (addr, running) = rt.block_on(async {
        let mesh = starmesh_node::resources::load(std::slice::from_ref(&fixture), "0")
            .expect("valid fixture");
        let (mut system, mut layout) = (None, None);
        for r in starmesh_api::yaml::load_path(&fixture).expect("fixture") {
            match r {
                starmesh_api::Resource::StarSystem(s) => system = Some(s),
                starmesh_api::Resource::ServerLayout(l) => layout = Some(l),
            }
        }
        let (system, layout) = (system.expect("system"), layout.expect("layout"));
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let running = replicant::start(&mesh, Config::default(), store, loopback, loopback)
            .await
            .expect("replicant");
        running.loaded().await;
        let feed = Arc::new(Feed::new());
        tokio::spawn(feed.clone().run(running.shared.clone()));
        let territories: Vec<String> = mesh.map.names().iter().map(|t| t.to_string()).collect();
        let json =
            web_map::system::system_json(&mesh.system, &system.spec, &layout.spec, &territories);
        let web = WebState {
            shared: running.shared.clone(),
            feed,
            system: json.to_string().into(),
            control: Arc::new(ReadOnly),
        };
        let listener = tokio::net::TcpListener::bind(loopback).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Runs as long as the runtime: the test ends with it.
        std::mem::forget(web_map::Server::start(listener, web));
        (addr, running)
    });

    let (status, body) = local_support::mesh::http(addr, "POST", "/api/servers/s-earth/kill");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");

    let mut b = Browser::launch();
    let page = b.new_page();
    b.navigate(&page, &format!("http://{addr}/"));
    b.wait_for(&page, "!!(window.starmesh && window.starmesh.ready())", Duration::from_secs(20));
    assert_eq!(b.eval(&page, "starmesh.readOnly()"), Value::Bool(true));
    let banner = b.eval(
        &page,
        "(e => !e.hidden && e.offsetHeight > 0 && e.textContent)(document.getElementById('readonly-banner'))",
    );
    assert!(
        banner.as_str().is_some_and(|t| t.contains("Read-only map")),
        "the banner is shown: {banner:?}"
    );
    b.eval(&page, "starmesh.select({type: 'server', name: 's-earth'}); true");
    assert_eq!(
        b.eval(&page, "document.querySelectorAll('#details button').length"),
        Value::from(0),
        "no kill button on a read-only map"
    );
    b.screenshot(
        &page,
        &std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("local-web-map-read-only.png"),
    );
    let errors = b.errors();
    b.close();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    rt.block_on(running.shutdown());
}

/// A dynamic layout on the map: the crowd fixture splits its territories
/// while the bots fly; the page lists the cells with their owners (and drops
/// the territory they replaced), colours each location by the owner of the
/// cell its centre lies in, and lists the autoscaler's decisions.
#[test]
fn cells_and_autoscaler_decisions_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crowd.yaml");
    let system = fixture.display().to_string();
    let mut mesh = LocalMesh::spawn(
        &dir.path().join("data"),
        &["--system", &system, "--bots", "30", "--duration", "120s"],
    );
    mesh.wait_line("running", Duration::from_secs(60));
    let mut b = Browser::launch();
    let page = b.new_page();
    b.navigate(&page, &format!("http://{}/", mesh.addr));
    b.wait_for(&page, "!!(window.starmesh && window.starmesh.ready())", Duration::from_secs(20));
    // Splits arrive within a few autoscaler rounds (every 2 s, cooldown 2 s).
    b.wait_for(
        &page,
        "starmesh.cells().splits.length > 0 && starmesh.cellsListed().some(c => c.includes('/'))",
        Duration::from_secs(40),
    );
    let listed = b.eval(&page, "starmesh.cellsListed()");
    let split: Vec<String> = b
        .eval(&page, "starmesh.cells().splits.map(s => s.cell)")
        .as_array()
        .expect("splits")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let listed: Vec<String> = listed
        .as_array()
        .expect("cells listed")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for c in &split {
        assert!(!listed.contains(c), "split cell {c} is not listed any more: {listed:?}");
    }
    // Every listed cell has an owner, shown in its row.
    let unowned = b.eval(
        &page,
        "[...document.querySelectorAll('#territories tbody tr')].filter(r => r.cells[1].textContent.includes('unowned')).length",
    );
    assert_eq!(unowned, Value::from(0), "every cell owned: {listed:?}");
    let title = b.eval(&page, "document.getElementById('territories-title').textContent");
    assert!(title.as_str().is_some_and(|t| t.starts_with("Cells (partition v")), "{title}");
    // A location of a split territory is coloured by its cell's owner.
    let haven = b.eval(
        &page,
        "(l => starmesh.cellOf(l.territory, l.x, l.y, l.z))(starmesh.layout.byName.get('haven'))",
    );
    let owner = b.eval(&page, "document.querySelector('[data-location=\"haven\"]').dataset.owner");
    let expected = b.eval(&page, &format!("(starmesh.state.assignments[{haven}] || {{}}).server"));
    assert_eq!(owner, expected, "haven coloured by the owner of {haven}");
    // The autoscaler's decisions, with their reasons.
    b.wait_for(
        &page,
        "starmesh.decisionsShown().some(t => t.includes('above splitAbovePlayers'))",
        Duration::from_secs(10),
    );
    let shot =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("local-web-map-cells.png");
    b.screenshot(&page, &shot);
    eprintln!("screenshot: {}", shot.display());
    let errors = b.errors();
    b.close();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    mesh.interrupt();
    let st = mesh.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "exit {st}:\n{}", mesh.stdout().join("\n"));
}
