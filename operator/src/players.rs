//! Live player counts: the operator scrapes each ready replicant's `/metrics` (the
//! `starmesh_players{system,shard,territory}` gauge) through the replicant Service's cluster
//! IP and metrics port, the same address the mesh map gives every pod.
//!
//! Why `/metrics` and not the Admin gRPC `Counts`: the operator would need the node's proto
//! and a gRPC stack (tonic, prost, protox at build time), while the gauge is already what
//! Prometheus and the dashboards read, so the status and the graphs can never disagree.
//! The parser is a pure function over the text exposition; the fetch is a bounded HTTP/1.1
//! GET over a plain TCP stream with a deadline (no HTTP client dependency).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gauge the replicant exports.
pub const PLAYERS_METRIC: &str = "starmesh_players";
/// Largest `/metrics` response read.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Deadline of one scrape (connect, request, response).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Players per territory from a Prometheus text exposition. Samples of other metrics,
/// comments, malformed lines and non-finite or negative values are ignored; samples
/// without a `territory` label count under `""`. Values of the same territory add up.
pub fn parse_players(text: &str) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(PLAYERS_METRIC) else { continue };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((labels, value)) = rest.split_once('}') else { continue };
            (labels, value)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue; // another metric with this prefix (e.g. starmesh_players_total)
        };
        // `value [timestamp]`
        let Some(v) = value.split_whitespace().next() else { continue };
        let Ok(v) = v.parse::<f64>() else { continue };
        if !v.is_finite() || !(0.0..=1e15).contains(&v) {
            continue;
        }
        let territory = label(labels, "territory").unwrap_or_default();
        let e = out.entry(territory).or_default();
        *e = e.saturating_add(v.round() as i64);
    }
    out
}

/// The value of label `name` in `a="x",b="y"` (escapes `\"`, `\\`, `\n` honoured).
fn label(labels: &str, name: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if rest.is_empty() {
            return None;
        }
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        };
        if key.trim() == name {
            return Some(value);
        }
        rest = &after[end + 1..];
    }
}

/// The body of an HTTP/1.x response, if its status is 200 (chunked bodies decoded).
pub fn http_body(response: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no end of the response headers")?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("HTTP status {status:?}"));
    }
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok(body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        rest = after.get(size..).and_then(|r| r.strip_prefix("\r\n")).ok_or("truncated chunk")?;
    }
}

/// `GET /metrics` from `addr`, bounded in time and size.
pub async fn fetch_metrics(addr: SocketAddr) -> Result<String, String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
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
    tokio::time::timeout(SCRAPE_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {SCRAPE_TIMEOUT:?}"))?
}

/// Players per territory of one replicant, `None` (logged) when it cannot be read.
pub async fn scrape(addr: SocketAddr) -> Option<BTreeMap<String, i64>> {
    match fetch_metrics(addr).await {
        Ok(body) => Some(parse_players(&body)),
        Err(e) => {
            tracing::debug!(%addr, error = %e, "player count scrape failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_players_by_territory_and_ignores_the_rest() {
        let text = "# HELP starmesh_players Players attached\n\
            # TYPE starmesh_players gauge\n\
            starmesh_players{shard=\"0\",system=\"stanton\",territory=\"hurston\"} 12\n\
            starmesh_players{shard=\"0\",system=\"stanton\",territory=\"crusader\"} 3\n\
            starmesh_players{territory=\"hurston\",shard=\"1\"} 2 1700000000000\n\
            starmesh_players_total{territory=\"hurston\"} 99\n\
            starmesh_entities{territory=\"hurston\"} 50\n\
            starmesh_players{territory=\"odd \\\"name\\\"\"} 1\n\
            starmesh_players{territory=\"bad\"} NaN\n\
            starmesh_players{territory=\"neg\"} -4\n\
            starmesh_players{territory=\"broken\" 7\n\
            starmesh_players 5\n";
        let p = parse_players(text);
        assert_eq!(p.get("hurston"), Some(&14));
        assert_eq!(p.get("crusader"), Some(&3));
        assert_eq!(p.get("odd \"name\""), Some(&1));
        assert_eq!(p.get(""), Some(&5));
        assert!(!p.contains_key("bad") && !p.contains_key("neg") && !p.contains_key("broken"));
        assert!(parse_players("").is_empty());
    }

    #[test]
    fn reads_plain_and_chunked_bodies_and_rejects_errors() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(http_body(plain).as_deref(), Ok("abc"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).as_deref(), Ok("abcde"));
        assert!(http_body(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready").is_err());
        assert!(http_body(b"garbage").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(
            http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab").is_err()
        );
    }

    #[tokio::test]
    async fn scrapes_a_real_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let body = "starmesh_players{territory=\"a\"} 7\n";
            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let _ = s.write_all(resp.as_bytes()).await;
        });
        assert_eq!(scrape(addr).await, Some(BTreeMap::from([("a".to_string(), 7)])));
    }
}
