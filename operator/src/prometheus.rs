//! Player counts from a Prometheus server (`spec.playerCounts.source: Prometheus`): one
//! instant query per reconcile, the answer grouped by the `shard` and `territory` labels
//! the replicant puts on `starmesh_players`. The parser and the URL handling are pure; the
//! fetch is a bounded HTTP/1.1 GET like the `/metrics` scrape in `players.rs`.

use std::collections::BTreeMap;

use serde_json::Value;
use starmesh_api::autoscale::CellLoad;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::players::{MAX_RESPONSE_BYTES, SCRAPE_TIMEOUT, http_body};

/// The default query. `system` is the only label that tells layouts apart that the
/// replicant itself attaches (its labels are `system`, `shard`, `territory`); a
/// Prometheus that adds `namespace` (Kubernetes service discovery) can narrow it with a
/// `query` of its own.
pub fn default_query(system: &str) -> String {
    format!("sum by (shard, territory) (starmesh_players{{system=\"{}\"}})", escape(system))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `host:port` and path prefix of an `http://` URL (validation refuses other schemes).
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("{url:?}: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let authority =
        if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    Ok((authority, path.to_string()))
}

/// Percent-encodes a query string value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Players per shard and cell from an instant-query answer. Samples without a numeric
/// `shard` or a `territory`, or with a value that is not a finite count, are ignored.
pub fn parse_vector(body: &str) -> Result<BTreeMap<i32, Vec<CellLoad>>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("query failed: {}", v["error"].as_str().unwrap_or("no error given")));
    }
    if v["data"]["resultType"] != "vector" {
        return Err(format!("expected a vector result, got {}", v["data"]["resultType"]));
    }
    let mut out: BTreeMap<i32, BTreeMap<String, u32>> = BTreeMap::new();
    for sample in v["data"]["result"].as_array().into_iter().flatten() {
        let m = &sample["metric"];
        let Some(shard) = m["shard"].as_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Some(cell) = m["territory"].as_str() else { continue };
        let Some(n) = sample["value"][1].as_str().and_then(|s| s.parse::<f64>().ok()) else {
            continue;
        };
        if !n.is_finite() || !(0.0..=1e9).contains(&n) {
            continue;
        }
        *out.entry(shard).or_default().entry(cell.to_string()).or_default() += n.round() as u32;
    }
    Ok(out
        .into_iter()
        .map(|(s, cells)| {
            (s, cells.into_iter().map(|(cell, players)| CellLoad { cell, players }).collect())
        })
        .collect())
}

/// Runs `query` against the Prometheus at `url`; bounded in time and size.
pub async fn query(url: &str, query: &str) -> Result<BTreeMap<i32, Vec<CellLoad>>, String> {
    let (authority, prefix) = split_url(url)?;
    let path = format!("{prefix}/api/v1/query?query={}", encode(query));
    let work = async {
        let mut s = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if buf.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(format!("response larger than {MAX_RESPONSE_BYTES} bytes"));
        }
        http_body(&buf)
    };
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, work)
        .await
        .map_err(|_| format!("Prometheus {url}: no answer within {SCRAPE_TIMEOUT:?}"))??;
    parse_vector(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_query_selects_the_system_and_groups_by_shard_and_cell() {
        assert_eq!(
            default_query("pyro"),
            "sum by (shard, territory) (starmesh_players{system=\"pyro\"})"
        );
        assert_eq!(
            default_query("a\"b"),
            "sum by (shard, territory) (starmesh_players{system=\"a\\\"b\"})"
        );
    }

    #[test]
    fn urls_split_into_authority_and_prefix() {
        assert_eq!(
            split_url("http://10.0.0.1:9090").expect("ok"),
            ("10.0.0.1:9090".into(), "".into())
        );
        assert_eq!(
            split_url("http://prom.mon/prefix/").expect("ok"),
            ("prom.mon:80".into(), "/prefix".into())
        );
        assert!(split_url("https://p:443").is_err());
        assert!(split_url("http:///x").is_err());
        assert_eq!(encode("a b{\"}"), "a%20b%7B%22%7D");
    }

    #[test]
    fn vectors_parse_by_shard_and_cell() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"shard":"0","territory":"hurston/0"},"value":[1,"12"]},
            {"metric":{"shard":"0","territory":"hurston/1"},"value":[1,"3.4"]},
            {"metric":{"shard":"1","territory":"deep-space"},"value":[1,"2"]},
            {"metric":{"territory":"x"},"value":[1,"9"]},
            {"metric":{"shard":"0","territory":"y"},"value":[1,"NaN"]},
            {"metric":{"shard":"0"},"value":[1,"5"]}]}}"#;
        let v = parse_vector(body).expect("parses");
        let cell = |s: i32, c: &str| {
            v.get(&s).and_then(|l| l.iter().find(|l| l.cell == c)).map(|l| l.players)
        };
        assert_eq!(cell(0, "hurston/0"), Some(12));
        assert_eq!(cell(0, "hurston/1"), Some(3));
        assert_eq!(cell(1, "deep-space"), Some(2));
        assert_eq!(v.get(&0).map(Vec::len), Some(2));
        assert!(parse_vector(r#"{"status":"error","error":"bad query"}"#).is_err());
        assert!(
            parse_vector(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#)
                .is_err()
        );
        assert!(parse_vector("nope").is_err());
    }
}
