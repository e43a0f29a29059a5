//! The operator's mesh map (`mesh-map.json` of the `<layout>-mesh-map` ConfigMap, mounted
//! at `/etc/starmesh`): how a pod in the cluster finds its shard's replicant, for a
//! game server of a static layout which server of the layout it is, and where the shard's
//! jump gates lead (`gatePeers`: the target system's replicant and gateway).
//!
//! The gate peers change while pods run (the target layout may be applied later, and the
//! kubelet refreshes a mounted ConfigMap only on its sync, up to about a minute later), so
//! [`follow`] re-reads the file and hands changed peers to the running role.
//!
//! Only the fields the node needs are read; unknown fields are ignored so the operator can
//! add to the map. Everything read is validated: an address the node would dial is a
//! parsed IP and a port in range, never a string passed on unchecked.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Largest mesh map read (a layout with thousands of shards stays far below this).
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;
/// The format version this node understands.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshMap {
    pub version: u32,
    #[serde(default)]
    pub layout: String,
    #[serde(default)]
    pub mode: String,
    /// Static layouts: server names in pod-ordinal order (pod k runs `servers[k]`).
    #[serde(default)]
    pub servers: Vec<String>,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardEntry {
    pub index: i32,
    pub replicant: Endpoint,
    pub gateway: Endpoint,
    /// Where this shard's jump gates lead, one entry per target StarSystem.
    #[serde(default)]
    pub gate_peers: Vec<GatePeerEntry>,
    /// The shard is being drained away (`status.drainingShard`): no new player goes
    /// there. Absent in maps of older operators: not draining.
    #[serde(default)]
    pub draining: bool,
    /// Players in the shard as the operator last counted them; absent when unknown
    /// (a new shard, or an older operator).
    #[serde(default)]
    pub players: Option<u64>,
}

/// One shard as the gateway's placement sees it (see `gateway::shards`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLoad {
    pub index: i32,
    /// The shard's gateway (game port) and replicant (gRPC port).
    pub gateway: SocketAddr,
    pub replicant: SocketAddr,
    pub draining: bool,
    pub players: Option<u64>,
}

impl ShardLoad {
    /// A shard on loopback for unit tests: gateway `127.0.0.1:7000+index`,
    /// replicant `127.0.0.2:` the same port.
    #[cfg(test)]
    pub(crate) fn fixture(index: i32, players: Option<u64>, draining: bool) -> Self {
        let port = 7000 + u16::try_from(index).unwrap_or(0);
        Self {
            index,
            gateway: SocketAddr::from(([127, 0, 0, 1], port)),
            replicant: SocketAddr::from(([127, 0, 0, 2], port)),
            draining,
            players,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatePeerEntry {
    pub system: String,
    #[serde(default)]
    pub layout: String,
    #[serde(default)]
    pub shard: i32,
    pub replicant: Endpoint,
    pub gateway: Endpoint,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Endpoint {
    #[serde(default)]
    pub service: String,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    #[serde(default)]
    pub ports: BTreeMap<String, i64>,
}

/// Why a mesh map could not be used; every message names the file's field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mesh map {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("mesh map {path}: larger than {MAX_BYTES} bytes")]
    TooLarge { path: String },
    #[error("mesh map: not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("mesh map: version {0} is not supported (this node reads version {VERSION})")]
    Version(u32),
    #[error("mesh map: no shard {0} in shards[] (the operator may not have written it yet)")]
    NoShard(i32),
    #[error("mesh map: shards[index={shard}].{field}: {problem}")]
    Field { shard: i32, field: String, problem: String },
    #[error(
        "mesh map: cannot tell which server this pod runs: pod name {pod:?} has no ordinal \
         `-<k>` with k < servers[] length {len}"
    )]
    NoServer { pod: String, len: usize },
}

impl MeshMap {
    /// Parses and checks the version; addresses are checked when asked for.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let m: MeshMap = serde_json::from_str(text)?;
        if m.version != VERSION {
            return Err(Error::Version(m.version));
        }
        Ok(m)
    }

    /// Reads `path` (bounded in size) and parses it.
    pub fn load(path: &Path) -> Result<Self, Error> {
        use std::io::Read;
        let p = || path.display().to_string();
        let f = std::fs::File::open(path).map_err(|source| Error::Read { path: p(), source })?;
        let mut text = String::new();
        f.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|source| Error::Read { path: p(), source })?;
        if text.len() as u64 > MAX_BYTES {
            return Err(Error::TooLarge { path: p() });
        }
        Self::parse(&text)
    }

    fn shard(&self, shard: i32) -> Result<&ShardEntry, Error> {
        self.shards.iter().find(|s| s.index == shard).ok_or(Error::NoShard(shard))
    }

    /// `host:port` of shard `shard`'s replicant gRPC endpoint (port named `grpc`).
    pub fn replicant_addr(&self, shard: i32) -> Result<SocketAddr, Error> {
        endpoint_addr(shard, "replicant", &self.shard(shard)?.replicant, "grpc")
    }

    /// `host:port` of shard `shard`'s gateway game endpoint (port named `game`).
    pub fn gateway_addr(&self, shard: i32) -> Result<SocketAddr, Error> {
        endpoint_addr(shard, "gateway", &self.shard(shard)?.gateway, "game")
    }

    /// Shard `shard`'s jump-gate peers as `(system, replicant gRPC address)`, sorted by
    /// system: the replicant's `--gate-peer`s.
    pub fn gate_peers(&self, shard: i32) -> Result<Vec<(String, SocketAddr)>, Error> {
        self.peers(shard, |p| ("replicant", &p.replicant, "grpc"))
    }

    /// Shard `shard`'s jump-gate peers as `(system, gateway game address)`, sorted by
    /// system: the gateway's `--gateway-peer`s.
    pub fn gateway_peers(&self, shard: i32) -> Result<Vec<(String, SocketAddr)>, Error> {
        self.peers(shard, |p| ("gateway", &p.gateway, "game"))
    }

    /// Every shard a player could be placed on, sorted by index. A shard whose
    /// addresses are not usable yet (no cluster IP) is left out, never guessed.
    pub fn shard_loads(&self) -> Vec<ShardLoad> {
        let mut out: Vec<ShardLoad> = self
            .shards
            .iter()
            .filter_map(|s| {
                Some(ShardLoad {
                    index: s.index,
                    gateway: self.gateway_addr(s.index).ok()?,
                    replicant: self.replicant_addr(s.index).ok()?,
                    draining: s.draining,
                    players: s.players,
                })
            })
            .collect();
        out.sort_by_key(|s| s.index);
        out.dedup_by_key(|s| s.index);
        out
    }

    fn peers(
        &self,
        shard: i32,
        pick: impl Fn(&GatePeerEntry) -> (&'static str, &Endpoint, &'static str),
    ) -> Result<Vec<(String, SocketAddr)>, Error> {
        let mut out = Vec::new();
        for (k, p) in self.shard(shard)?.gate_peers.iter().enumerate() {
            if p.system.is_empty() || p.system.len() > 63 {
                return Err(Error::Field {
                    shard,
                    field: format!("gatePeers[{k}].system"),
                    problem: format!("{:?} is not a StarSystem name", p.system),
                });
            }
            let (role, e, port) = pick(p);
            let role = format!("gatePeers[{k}].{role}");
            out.push((p.system.clone(), endpoint_addr(shard, &role, e, port)?));
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    /// The server a pod runs. Static layout: `servers[k]`, `k` the ordinal after the last
    /// `-` of the StatefulSet pod's name. Dynamic layout: servers are interchangeable (the
    /// replicant deals territories to whoever is live), so the pod's own name, stable
    /// across restarts of that StatefulSet pod.
    pub fn server_name_for_pod(&self, pod_name: &str) -> Result<String, Error> {
        let no_server = || Error::NoServer { pod: pod_name.to_string(), len: self.servers.len() };
        if self.mode == "Dynamic" {
            let ok = pod_ordinal(pod_name).is_some() && pod_name.len() <= 63;
            return if ok { Ok(pod_name.to_string()) } else { Err(no_server()) };
        }
        let k: usize = pod_ordinal(pod_name).ok_or_else(no_server)?;
        self.servers.get(k).cloned().ok_or_else(no_server)
    }
}

/// The ordinal `k` of a StatefulSet pod `<name>-<k>`.
pub fn pod_ordinal(pod_name: &str) -> Option<usize> {
    let (_, k) = pod_name.rsplit_once('-')?;
    if k.is_empty() || k.len() > 9 || !k.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    k.parse().ok()
}

fn endpoint_addr(shard: i32, role: &str, e: &Endpoint, port: &str) -> Result<SocketAddr, Error> {
    let bad = |field: &str, problem: String| Error::Field {
        shard,
        field: format!("{role}.{field}"),
        problem,
    };
    let ip: IpAddr = e
        .cluster_ip
        .parse()
        .map_err(|_| bad("clusterIP", format!("{:?} is not an IP address", e.cluster_ip)))?;
    if ip.is_unspecified() {
        return Err(bad("clusterIP", format!("{ip} (a headless or unallocated Service)")));
    }
    let p = *e.ports.get(port).ok_or_else(|| bad("ports", format!("no port named {port:?}")))?;
    let p = u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(&format!("ports.{port}"), format!("{p} is not a port")))?;
    Ok(SocketAddr::new(ip, p))
}

/// The replicant a server or gateway dials: `explicit` (`--replicant`) when given, else
/// the mesh map's entry for `shard`. An error when neither is usable.
pub fn resolve_replicant(
    explicit: Option<&str>,
    mesh_map: Option<&Path>,
    shard: i32,
) -> anyhow::Result<String> {
    match (explicit, mesh_map) {
        (Some(r), _) if !r.is_empty() => Ok(r.to_string()),
        (_, Some(path)) => Ok(MeshMap::load(path)?.replicant_addr(shard)?.to_string()),
        _ => anyhow::bail!("give --replicant HOST:PORT or --mesh-map FILE (STARMESH_MESH_MAP)"),
    }
}

/// The static server name: `explicit` (`--name`) when given, else `servers[k]` of the mesh
/// map for the pod `pod_name` (`POD_NAME`, falling back to the host name).
pub fn resolve_server_name(
    explicit: Option<&str>,
    mesh_map: Option<&Path>,
    pod_name: Option<&str>,
) -> anyhow::Result<String> {
    match (explicit, mesh_map) {
        (Some(n), _) if !n.is_empty() => Ok(n.to_string()),
        (_, Some(path)) => {
            let pod = match pod_name.filter(|p| !p.is_empty()) {
                Some(p) => p.to_string(),
                None => hostname()
                    .ok_or_else(|| anyhow::anyhow!("POD_NAME is unset and no host name"))?,
            };
            Ok(MeshMap::load(path)?.server_name_for_pod(&pod)?)
        }
        _ => anyhow::bail!("give --name NAME or --mesh-map FILE (STARMESH_MESH_MAP) with POD_NAME"),
    }
}

/// How often a running pod re-reads the mesh map for changed gate peers: well inside the
/// kubelet's own ConfigMap refresh (about a minute), and one small file read.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);

/// The peers a role uses: the explicit flags (`--gate-peer`, `--gateway-peer`) win for
/// their system; the mesh map's fill in the rest. Sorted by system.
pub fn merge_peers(
    explicit: &[(String, String)],
    from_map: &[(String, SocketAddr)],
) -> Vec<(String, String)> {
    let mut m: BTreeMap<String, String> =
        from_map.iter().map(|(s, a)| (s.clone(), a.to_string())).collect();
    m.extend(explicit.iter().cloned());
    m.into_iter().collect()
}

/// Re-reads the mesh map at `path` every `every` and calls `apply` with what `pick` takes
/// from it each time that differs from the last value applied (`initial` is the value the
/// role started with). A map that cannot be read or used is logged (once per distinct
/// error) and the last good value is kept: a half-written or broken file never takes
/// peers away. Must run inside a tokio runtime; stops when the runtime does.
pub fn follow<T, P, A>(
    path: PathBuf,
    every: Duration,
    initial: T,
    pick: P,
    apply: A,
) -> tokio::task::JoinHandle<()>
where
    T: PartialEq + Send + 'static,
    P: Fn(&MeshMap) -> Result<T, Error> + Send + 'static,
    A: Fn(&T) + Send + 'static,
{
    tokio::spawn(async move {
        let mut last = initial;
        let mut last_error = String::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the caller has just read it
        loop {
            tick.tick().await;
            let p = path.clone();
            // A blocking read off the runtime's workers (a slow volume must not stall them).
            let read = tokio::task::spawn_blocking(move || MeshMap::load(&p)).await;
            match read
                .map_err(|e| e.to_string())
                .and_then(|m| m.and_then(|m| pick(&m)).map_err(|e| e.to_string()))
            {
                Ok(v) => {
                    last_error.clear();
                    if v != last {
                        apply(&v);
                        last = v;
                    }
                }
                Err(e) if e != last_error => {
                    tracing::warn!(path = %path.display(), error = %e, "mesh map: keeping the last good peers");
                    last_error = e;
                }
                Err(_) => {}
            }
        }
    })
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty() && h.len() <= 253).then(|| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"{"version":1,"namespace":"ns","layout":"stanton","system":"stanton",
      "mode":"Static","tickRate":30,"servers":["a","b","c"],"territories":{"x":"a"},
      "shards":[{"index":0,
        "replicant":{"service":"stanton-shard-0-replicant","clusterIP":"198.18.130.7",
                     "ports":{"grpc":7100,"metrics":9100}},
        "gateway":{"service":"stanton-shard-0-gateway","clusterIP":"198.18.130.8",
                   "ports":{"game":7777,"metrics":9100}},
        "serversStatefulSet":"stanton-shard-0-servers","servers":3,
        "gatePeers":[
          {"system":"pyro","layout":"pyro","shard":0,
           "replicant":{"service":"pyro-shard-0-replicant","clusterIP":"198.18.131.1",
                        "ports":{"grpc":7100,"metrics":9100}},
           "gateway":{"service":"pyro-shard-0-gateway","clusterIP":"198.18.131.2",
                      "ports":{"game":7780,"metrics":9100}}},
          {"system":"nyx","layout":"nyx","shard":0,
           "replicant":{"service":"nyx-shard-0-replicant","clusterIP":"198.18.132.1",
                        "ports":{"grpc":7100}},
           "gateway":{"service":"nyx-shard-0-gateway","clusterIP":"198.18.132.2",
                      "ports":{"game":7777}}}]},
        {"index":1,
        "replicant":{"service":"r1","clusterIP":"None","ports":{"grpc":7100}},
        "gateway":{"service":"g1","clusterIP":"","ports":{"game":70000}},
        "serversStatefulSet":"stanton-shard-1-servers","servers":3}]}"#;

    #[test]
    fn reads_the_operators_map() {
        let m = MeshMap::parse(MAP).expect("parses");
        assert_eq!(m.replicant_addr(0).expect("addr").to_string(), "198.18.130.7:7100");
        assert_eq!(m.gateway_addr(0).expect("addr").to_string(), "198.18.130.8:7777");
        assert_eq!(m.server_name_for_pod("stanton-shard-0-servers-2").expect("name"), "c");
        assert_eq!(m.server_name_for_pod("stanton-shard-0-servers-0").expect("name"), "a");
    }

    #[test]
    fn rejects_what_it_cannot_use_with_the_field() {
        let m = MeshMap::parse(MAP).expect("parses");
        let e = m.replicant_addr(1).expect_err("None is no IP").to_string();
        assert!(e.contains("shards[index=1].replicant.clusterIP"), "{e}");
        let e = m.replicant_addr(2).expect_err("no shard 2").to_string();
        assert!(e.contains("no shard 2"), "{e}");
        let e = m.gateway_addr(1).expect_err("empty ip").to_string();
        assert!(e.contains("gateway.clusterIP"), "{e}");
        for pod in ["stanton-shard-0-servers-3", "nodash", "x-", "x-+1", "x-99999999999"] {
            assert!(m.server_name_for_pod(pod).is_err(), "{pod}");
        }
        assert!(MeshMap::parse("{").is_err());
        assert!(MeshMap::parse(r#"{"version":2,"shards":[]}"#).is_err());
        let bad_port = MAP.replace("\"grpc\":7100,\"metrics\"", "\"grpc\":0,\"metrics\"");
        let e = MeshMap::parse(&bad_port).expect("parses").replicant_addr(0).expect_err("0");
        assert!(e.to_string().contains("ports.grpc"), "{e}");
    }

    #[test]
    fn a_dynamic_layouts_server_is_its_pod() {
        let m = MeshMap::parse(
            &MAP.replace("\"Static\"", "\"Dynamic\"")
                .replace("\"servers\":[\"a\",\"b\",\"c\"]", "\"servers\":[]"),
        )
        .expect("parses");
        assert_eq!(
            m.server_name_for_pod("pyro-shard-0-servers-7").expect("name"),
            "pyro-shard-0-servers-7"
        );
        assert!(m.server_name_for_pod("no-ordinal").is_err());
        assert!(m.server_name_for_pod(&format!("{}-1", "x".repeat(70))).is_err(), "too long");
    }

    #[test]
    fn shard_loads_read_draining_and_players_and_default_for_old_maps() {
        // An old map (no draining, no players): shard 0 usable, shard 1 has no IPs.
        let old = MeshMap::parse(MAP).expect("parses").shard_loads();
        assert_eq!(old.len(), 1, "{old:?}");
        assert_eq!((old[0].index, old[0].draining, old[0].players), (0, false, None));
        assert_eq!(old[0].gateway.to_string(), "198.18.130.8:7777");
        assert_eq!(old[0].replicant.to_string(), "198.18.130.7:7100");
        let new = MAP.replace(
            "\"serversStatefulSet\":\"stanton-shard-0-servers\"",
            "\"draining\":true,\"players\":42,\"serversStatefulSet\":\"stanton-shard-0-servers\"",
        );
        let loads = MeshMap::parse(&new).expect("parses").shard_loads();
        assert_eq!((loads[0].draining, loads[0].players), (true, Some(42)));
        let bad = MAP.replace(
            "\"serversStatefulSet\":\"stanton-shard-0-servers\"",
            "\"players\":-1,\"serversStatefulSet\":\"stanton-shard-0-servers\"",
        );
        assert!(MeshMap::parse(&bad).is_err(), "a negative count is refused");
    }

    #[test]
    fn reads_gate_peers_of_the_shard() {
        let m = MeshMap::parse(MAP).expect("parses");
        let s = |v: &[(String, SocketAddr)]| {
            v.iter().map(|(s, a)| format!("{s}={a}")).collect::<Vec<_>>()
        };
        assert_eq!(
            s(&m.gate_peers(0).expect("peers")),
            ["nyx=198.18.132.1:7100", "pyro=198.18.131.1:7100"]
        );
        assert_eq!(
            s(&m.gateway_peers(0).expect("peers")),
            ["nyx=198.18.132.2:7777", "pyro=198.18.131.2:7780"]
        );
        // A map from before gate peers (no field) has none.
        assert!(m.gate_peers(1).expect("no peers").is_empty());
        assert!(m.gate_peers(7).is_err(), "no shard 7");
    }

    #[test]
    fn a_bad_gate_peer_is_an_error_naming_it() {
        let bad_ip = MAP.replace("198.18.131.1", "pyro.example");
        let e = MeshMap::parse(&bad_ip).expect("parses").gate_peers(0).expect_err("not an IP");
        assert!(e.to_string().contains("gatePeers[0].replicant.clusterIP"), "{e}");
        // The gateway side does not read the replicant's address.
        assert!(MeshMap::parse(&bad_ip).expect("parses").gateway_peers(0).is_ok());
        let bad_port = MAP.replace("\"game\":7780", "\"game\":-1");
        let e = MeshMap::parse(&bad_port).expect("parses").gateway_peers(0).expect_err("port");
        assert!(e.to_string().contains("gatePeers[0].gateway.ports.game"), "{e}");
        let no_system = MAP.replace("\"system\":\"nyx\"", "\"system\":\"\"");
        let e = MeshMap::parse(&no_system).expect("parses").gate_peers(0).expect_err("system");
        assert!(e.to_string().contains("gatePeers[1].system"), "{e}");
    }

    #[test]
    fn explicit_peers_win_over_the_map() {
        let map: Vec<(String, SocketAddr)> = vec![
            ("nyx".into(), "10.0.0.1:7100".parse().expect("addr")),
            ("pyro".into(), "10.0.0.2:7100".parse().expect("addr")),
        ];
        let explicit = [("pyro".to_string(), "127.0.0.1:9".to_string())];
        assert_eq!(
            merge_peers(&explicit, &map),
            [
                ("nyx".to_string(), "10.0.0.1:7100".to_string()),
                ("pyro".to_string(), "127.0.0.1:9".to_string())
            ]
        );
        assert!(merge_peers(&[], &[]).is_empty());
    }

    /// A real file rewritten under a running follower, as the kubelet does (a new file
    /// swapped in by rename): the new peers arrive, a broken map keeps them.
    #[tokio::test]
    async fn follow_picks_up_changed_peers_and_keeps_them_through_a_bad_map() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("mesh-map.json");
        let write = |text: &str| {
            let tmp = dir.path().join("next.json");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &path).expect("swap");
        };
        let without = MAP.replace("\"gatePeers\"", "\"notPeers\"");
        write(&without);
        let initial = MeshMap::load(&path).expect("load").gate_peers(0).expect("peers");
        assert!(initial.is_empty());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = follow(
            path.clone(),
            Duration::from_millis(20),
            initial,
            |m| m.gate_peers(0),
            move |v: &Vec<(String, SocketAddr)>| {
                let _ = tx.send(v.clone());
            },
        );
        write(MAP);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the change is seen")
            .expect("a value");
        assert_eq!(got.len(), 2, "{got:?}");
        write("{ not json");
        tokio::time::sleep(Duration::from_millis(200)).await;
        write(MAP);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "a broken map and the same peers again apply nothing");
        write(&without);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the removal is seen")
            .expect("a value");
        assert!(got.is_empty(), "{got:?}");
        task.abort();
    }

    #[test]
    fn explicit_flags_win_and_missing_both_is_an_error() {
        assert_eq!(resolve_replicant(Some("h:1"), None, 0).expect("explicit"), "h:1");
        assert!(resolve_replicant(None, None, 0).is_err());
        assert!(resolve_replicant(Some(""), None, 0).is_err());
        assert_eq!(resolve_server_name(Some("n"), None, None).expect("explicit"), "n");
        assert!(resolve_server_name(None, None, Some("p-0")).is_err());
        let e = resolve_replicant(None, Some(Path::new("/nonexistent/mesh-map.json")), 0)
            .expect_err("no file");
        assert!(e.to_string().contains("/nonexistent/mesh-map.json"), "{e}");
    }
}
