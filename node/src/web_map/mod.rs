//! The live web map of `starmesh local`, and `/metrics`, on one listener.
//!
//! Routes: `/` and its assets (compiled into the binary: the map works
//! offline, nothing comes from a CDN), `/api/system` (the static geometry),
//! `/api/state` (one snapshot, for tools and tests), `/events` (Server-Sent
//! Events: one snapshot, then deltas), `/metrics` (the replicant's registry),
//! `/api/control` (what the page may offer), and `POST /api/servers/{name}/kill`
//! (simulate a crash; loopback only, else 403 and the page shows it is read-only).

pub mod feed;
pub mod system;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::replicant::Shared;
use feed::Feed;

/// What the map may ask of the group it shows (implemented by `local`'s supervisor).
pub trait Control: Send + Sync {
    /// Whether the map may kill servers: only when it is not reachable from
    /// other machines (served on loopback). Otherwise the map is read-only,
    /// and the page says so.
    fn kill_allowed(&self) -> bool;
    /// Kills a game server as a crash would (no goodbye); false if unknown
    /// or not allowed.
    fn kill_server(&self, name: &str) -> bool;
}

#[derive(Clone)]
pub struct WebState {
    pub shared: Arc<Shared>,
    pub feed: Arc<Feed>,
    /// `system::system_json`, encoded once.
    pub system: Arc<str>,
    pub control: Arc<dyn Control>,
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const MAP_JS: &str = include_str!("assets/map.js");
const MAP_CSS: &str = include_str!("assets/map.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/map.js", get(|| async { asset("text/javascript; charset=utf-8", MAP_JS) }))
        .route("/map.css", get(|| async { asset("text/css; charset=utf-8", MAP_CSS) }))
        .route("/favicon.svg", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        // Browsers ask for /favicon.ico regardless; answering keeps the console free of 404s.
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", FAVICON_SVG) }))
        .route(
            "/api/system",
            get(|s: State<WebState>| async move { json_response(s.system.to_string()) }),
        )
        .route(
            "/api/state",
            get(|s: State<WebState>| async move { json_response(s.feed.snapshot()) }),
        )
        .route("/events", get(events))
        .route(
            "/metrics",
            get(|s: State<WebState>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    s.shared.metrics.render(),
                )
            }),
        )
        // What the page may offer: it hides the kill button and shows a
        // read-only banner when this says no.
        .route(
            "/api/control",
            get(|s: State<WebState>| async move {
                json_response(serde_json::json!({ "kill": s.control.kill_allowed() }).to_string())
            }),
        )
        .route("/api/servers/{name}/kill", post(kill))
        .with_state(state)
}

/// The map's HTTP server, stoppable: `stop` waits for open event streams to
/// end (close the feed first), then gives up after a deadline.
pub struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn start(listener: tokio::net::TcpListener, state: WebState) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let r = axum::serve(listener, router(state))
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "web map server ended");
            }
        });
        Server { stop, task }
    }

    pub async fn stop(self, limit: std::time::Duration) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(limit, self.task).await.is_err() {
            tracing::warn!("web map did not stop in time; closing it");
            abort.abort();
        }
    }
}

async fn kill(State(s): State<WebState>, Path(name): Path<String>) -> (StatusCode, String) {
    if !s.control.kill_allowed() {
        return (
            StatusCode::FORBIDDEN,
            "the map is read-only: it is served on a non-loopback address; \
             killing servers is only offered with --listen on loopback (e.g. 127.0.0.1:8080)\n"
                .to_string(),
        );
    }
    if s.control.kill_server(&name) {
        (StatusCode::OK, format!("killed {name}\n"))
    } else {
        (StatusCode::NOT_FOUND, format!("no running server {name:?}\n"))
    }
}

/// One snapshot, then every delta. A browser that falls behind the
/// broadcast buffer gets a fresh snapshot rather than a gap.
async fn events(State(s): State<WebState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before the snapshot so no delta falls between them; the page
    // ignores deltas whose `seq` the snapshot already covers.
    let rx = s.feed.subscribe();
    let first = Some(s.feed.snapshot());
    let stream = futures::stream::unfold((rx, first, s.feed), |(rx, first, feed)| async move {
        if let Some(snap) = first {
            return Some((Ok(Event::default().event("snapshot").data(snap)), (rx, None, feed)));
        }
        let mut rx = rx?;
        let ev = match rx.recv().await {
            Ok(delta) => Event::default().event("delta").data(&*delta),
            Err(RecvError::Lagged(_)) => Event::default().event("snapshot").data(feed.snapshot()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(ev), (Some(rx), None, feed)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
