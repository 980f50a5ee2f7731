//! What the live view (`/ui`, docs/WATCH.md) reads: each node's log tail and its event
//! stream, plus the page itself, compiled into the binary.
//!
//! - `GET /v1/log?tail=N`: this node's last N log entries (at most `LOG_TAIL_MAX`), with its
//!   commit and applied index, to draw its row.
//! - `GET /v1/events`: server-sent events, one per `NodeEvent` of this node (elections,
//!   votes and the rule behind each, role changes, snapshots, configurations), each with
//!   the node's id, a sequence number and the time. A listener that falls behind gets a
//!   `lagged` event saying how many it missed. The stream ends when the node shuts down.
//! - The page fetches every member directly, so that it keeps going when the node that
//!   served it is killed: these read-only routes (and `/v1/status`, `/v1/cluster`,
//!   `/v1/members`) answer cross-origin requests (`Access-Control-Allow-Origin: *`). None of
//!   them carries a key or a value.

use crate::api_error::ApiError;
use crate::server::AppState;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use keel_node::{NodeEvent, LOG_TAIL_MAX};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast::error::RecvError;

/// Entries `GET /v1/log` returns without `tail`.
const LOG_TAIL_DEFAULT: usize = 16;
/// A comment line this often keeps idle event streams open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Paths a page from another node may read (see the module doc).
pub(crate) fn is_cross_origin_readable(path: &str) -> bool {
    matches!(path, "/v1/status" | "/v1/cluster" | "/v1/members" | "/v1/log" | "/v1/events" | "/metrics" | "/health" | "/ready")
}

/// Answers CORS preflights and marks answers of the readable routes.
pub(crate) async fn allow_cross_origin_reads(request: Request, next: Next) -> Response {
    if !is_cross_origin_readable(request.uri().path()) {
        return next.run(request).await;
    }
    if request.method() == Method::OPTIONS {
        let headers = [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ];
        return (StatusCode::NO_CONTENT, headers).into_response();
    }
    let mut response = next.run(request).await;
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

#[derive(Deserialize)]
pub(crate) struct LogParams {
    tail: Option<usize>,
}

/// `GET /v1/log?tail=N`.
pub(crate) async fn log(State(state): State<Arc<AppState>>, params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>) -> Response {
    let tail = match params {
        Ok(Query(params)) => params.tail.unwrap_or(LOG_TAIL_DEFAULT),
        Err(rejection) => return ApiError::bad_request(format!("bad query: {}", rejection.body_text())).into_response(),
    };
    if tail == 0 || tail > LOG_TAIL_MAX {
        return ApiError::bad_request(format!("tail must be 1 to {LOG_TAIL_MAX}")).into_response();
    }
    let entries = match state.handle.log_tail(tail).await {
        Ok(entries) => entries,
        Err(error) => return state.failure(crate::server::Failure::Node(error), false).into_response(),
    };
    let raft = state.handle.status().raft;
    Json(json!({
        "id": state.id.0,
        "entries": entries,
        "commit_index": raft.commit_index.0,
        "applied_index": raft.applied_index.0,
        "snapshot_index": raft.snapshot_index.0,
        "last_log_index": raft.last_log_index.0,
    }))
    .into_response()
}

/// `GET /v1/events`.
pub(crate) async fn events(State(state): State<Arc<AppState>>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.handle.events();
    let closing = state.closing.subscribe();
    let hello = json!({ "kind": "hello", "node": state.id.0, "seq": 0, "at_ms": now_ms(), "status": crate::api_v1::status_json(&state) });
    let first = stream::once(async move { Ok(SseEvent::default().event("keel").data(hello.to_string())) });
    let node = state.id.0;
    let rest = stream::unfold((receiver, closing, 1u64), move |(mut receiver, mut closing, seq)| async move {
        let data = tokio::select! {
            _ = closing.wait_for(|closing| *closing) => return None,
            received = receiver.recv() => match received {
                Ok(event) => event_json(node, seq, &event),
                Err(RecvError::Lagged(missed)) => json!({ "kind": "lagged", "node": node, "seq": seq, "at_ms": now_ms(), "missed": missed }),
                Err(RecvError::Closed) => return None,
            },
        };
        Some((Ok(SseEvent::default().event("keel").data(data.to_string())), (receiver, closing, seq + 1)))
    });
    Sse::new(stream::StreamExt::chain(first, rest)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

fn event_json(node: u64, seq: u64, event: &NodeEvent) -> Value {
    let mut value = event.to_json(keel_core::NodeId(node));
    value["seq"] = seq.into();
    value["at_ms"] = now_ms().into();
    value
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// The live view and the replay, compiled in: no CDN, no build step.
const UI_HTML: &str = include_str!("../ui/index.html");
const UI_SCRIPT: &str = include_str!("../ui/keel-ui.js");
const UI_STYLE: &str = include_str!("../ui/keel-ui.css");
const REPLAY_HTML: &str = include_str!("../ui/replay.html");
const REPLAY_SCRIPT: &str = include_str!("../ui/keel-replay.js");

pub(crate) async fn ui_page() -> Response {
    static_file("text/html; charset=utf-8", UI_HTML)
}

pub(crate) async fn ui_script() -> Response {
    static_file("text/javascript; charset=utf-8", UI_SCRIPT)
}

pub(crate) async fn ui_style() -> Response {
    static_file("text/css; charset=utf-8", UI_STYLE)
}

pub(crate) async fn replay_page() -> Response {
    static_file("text/html; charset=utf-8", REPLAY_HTML)
}

pub(crate) async fn replay_script() -> Response {
    static_file("text/javascript; charset=utf-8", REPLAY_SCRIPT)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
