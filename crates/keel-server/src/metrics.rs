//! `/metrics`: what a node is doing, in the Prometheus (OpenMetrics) text format.
//!
//! Two kinds of metric, kept apart on purpose:
//! - read at each scrape from the node's status (`NodeCollector`): term, role, leader,
//!   commit and applied index, the log's ends, and the event counters the executor keeps
//!   (elections, votes, snapshots: keel-node's `events.rs`); on the leader, each follower's
//!   match index and lag. A scrape asks the driver for the followers' progress once.
//! - counted here as requests go by: proposals and reads by outcome, and the latency of
//!   every HTTP request by route, method and status.
//!
//! Plus the log's fsync latency, which `FileStorage` measures itself.
//!
//! Names follow Prometheus conventions: `keel_` first, `_total` on counters, base units
//! (`_seconds`) last. docs/OPERATIONS.md, "Metrics", lists them.

use crate::server::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_core::{NodeId, Role};
use keel_kv::KvStore;
use keel_node::{Members, RaftHandle};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The content type of the OpenMetrics text format, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    pub consistency: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: RouteLabel,
    pub method: &'static str,
    pub status: u16,
}

/// A route as axum matched it, shared rather than copied per request. Written with `:key`
/// for `{key}`: braces in a label value trip simple parsers of the text format.
#[derive(Clone, Debug)]
pub struct RouteLabel(Option<MatchedPath>);

impl RouteLabel {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl PartialEq for RouteLabel {
    fn eq(&self, other: &RouteLabel) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl std::hash::Hash for RouteLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl prometheus_client::encoding::EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for (index, part) in self.as_str().split(['{', '}']).enumerate() {
            // Odd parts were inside braces.
            if index % 2 == 1 {
                encoder.write_char(':')?;
            }
            encoder.write_str(part)?;
        }
        Ok(())
    }
}

fn method_label(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::POST => "POST",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One node's metrics.
pub struct Metrics {
    registry: Registry,
    pub proposals: Family<OutcomeLabels, Counter>,
    pub reads: Family<ReadLabels, Counter>,
    http: Family<HttpLabels, Histogram>,
    /// Filled by the `/metrics` handler just before it encodes (the collector cannot wait).
    progress: Arc<Mutex<Option<Members>>>,
}

impl Metrics {
    pub fn new(handle: RaftHandle<KvStore>, fsync_seconds: Histogram) -> Metrics {
        let mut registry = Registry::default();
        let proposals = Family::<OutcomeLabels, Counter>::default();
        registry.register("keel_proposals", "Client writes proposed on this node, by outcome", proposals.clone());
        let reads = Family::<ReadLabels, Counter>::default();
        registry.register("keel_reads", "Client reads served on this node, by consistency and outcome", reads.clone());
        let http = Family::<HttpLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 17)));
        registry.register("keel_http_request_duration_seconds", "HTTP requests, by route, method and status", http.clone());
        registry.register("keel_wal_fsync_seconds", "fdatasync of the write-ahead log", fsync_seconds);
        let progress = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(NodeCollector { handle, progress: progress.clone() }));
        Metrics { registry, proposals, reads, http, progress }
    }

    pub fn count_proposal(&self, outcome: &'static str) {
        self.proposals.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn count_read(&self, consistency: &'static str, outcome: &'static str) {
        self.reads.get_or_create(&ReadLabels { consistency, outcome }).inc();
    }

    /// The text a scrape returns; `members` is the leader's view of its followers, if any.
    pub fn render(&self, members: Option<Members>) -> String {
        *self.progress.lock().expect("progress lock") = members;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// `GET /metrics`.
pub(crate) async fn serve(State(state): State<Arc<AppState>>) -> Response {
    let members = match state.handle.status().raft.role {
        Role::Leader => state.handle.members().await.ok(),
        _ => None,
    };
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], state.metrics.render(members)).into_response()
}

/// Times every request into `keel_http_request_duration_seconds`.
pub(crate) async fn time_requests(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = RouteLabel(request.extensions().get::<MatchedPath>().cloned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels { route, method, status: response.status().as_u16() };
    state.metrics.http.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}

/// Reads the node's status at each scrape.
struct NodeCollector {
    handle: RaftHandle<KvStore>,
    progress: Arc<Mutex<Option<Members>>>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").field("node", &self.handle.id()).finish()
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.handle.status();
        let raft = status.raft;
        gauge(&mut encoder, "keel_term", "The current term (§5.1)", raft.term.0 as i64)?;
        gauge(&mut encoder, "keel_leader_id", "The leader this node knows of; 0 for none", raft.leader_id.map_or(0, |id| id.0 as i64))?;
        gauge(&mut encoder, "keel_is_leader", "1 on the leader", i64::from(raft.role == Role::Leader))?;
        let roles = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];
        let role_encoder = encoder.encode_descriptor("keel_role", "1 for this node's role, 0 for the others", None, ConstGauge::new(0i64).metric_type())?;
        encode_family(role_encoder, roles.iter().map(|role| ([("role", keel_node::events::role_name(*role))], i64::from(*role == raft.role))))?;
        gauge(&mut encoder, "keel_commit_index", "The highest log index known committed (§5.3)", raft.commit_index.0 as i64)?;
        gauge(&mut encoder, "keel_applied_index", "The highest log index applied to the state machine", raft.applied_index.0 as i64)?;
        gauge(&mut encoder, "keel_last_log_index", "The index of the last entry in this node's log", raft.last_log_index.0 as i64)?;
        gauge(&mut encoder, "keel_snapshot_index", "The last index the latest snapshot covers (§7)", raft.snapshot_index.0 as i64)?;
        let counters = status.counters;
        let events = [
            ("keel_elections_started", "Elections this node started as candidate (§5.2)", counters.elections_started),
            ("keel_pre_votes_started", "Pre-vote rounds this node started (thesis §9.6)", counters.pre_votes_started),
            ("keel_elections_won", "Elections this node won", counters.elections_won),
            ("keel_votes_granted", "Votes and pre-votes this node granted", counters.votes_granted),
            ("keel_votes_refused", "Votes and pre-votes this node refused or ignored", counters.votes_refused),
            ("keel_leader_step_downs", "Times this node stopped leading", counters.leader_step_downs),
            ("keel_snapshots_taken", "Snapshots this node took of its own state (§7)", counters.snapshots_taken),
            ("keel_snapshots_sent", "Snapshots this node finished sending to a follower", counters.snapshots_sent),
            ("keel_snapshots_installed", "Snapshots from the leader this node installed", counters.snapshots_installed),
            ("keel_peer_messages_refused", "Peer messages refused as invalid", status.peer_messages_refused),
        ];
        for (name, help, value) in events {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }
        let progress = self.progress.lock().expect("progress lock").clone();
        if let Some(members) = progress.filter(|members| members.role == Role::Leader) {
            let followers: Vec<(NodeId, u64)> = members.progress.iter().map(|(id, (match_index, _))| (*id, match_index.0)).collect();
            let matched = encoder.encode_descriptor("keel_follower_match_index", "On the leader: the highest index known replicated on each follower (Figure 2 matchIndex)", None, ConstGauge::new(0i64).metric_type())?;
            encode_family(matched, followers.iter().map(|(id, index)| ([("follower", id.0.to_string())], *index as i64)))?;
            let lag = encoder.encode_descriptor("keel_follower_lag_entries", "On the leader: entries each follower is behind the leader's log", None, ConstGauge::new(0i64).metric_type())?;
            encode_family(lag, followers.iter().map(|(id, index)| ([("follower", id.0.to_string())], members.last_log_index.0.saturating_sub(*index) as i64)))?;
        }
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn encode_family<L: EncodeLabelSet>(mut metric: prometheus_client::encoding::MetricEncoder, samples: impl Iterator<Item = (L, i64)>) -> Result<(), std::fmt::Error> {
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `GET /health`: the process serves HTTP.
pub(crate) async fn health() -> Response {
    (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok" }))).into_response()
}

/// `GET /ready`: 200 when this node knows a leader and has applied everything it knows is
/// committed, so a read here is up to date with what it has heard; 503 otherwise (an
/// election is on, the node is catching up, it stopped, or it was removed).
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let status = state.handle.status();
    let raft = status.raft;
    let reason = if status.stopped.is_some() {
        Some("stopped")
    } else if status.removed {
        Some("removed")
    } else if raft.leader_id.is_none() {
        Some("no_leader")
    } else if raft.applied_index < raft.commit_index {
        Some("applying")
    } else {
        None
    };
    let body = serde_json::json!({
        "ready": reason.is_none(),
        "reason": reason,
        "leader_id": raft.leader_id.map(|id| id.0),
        "commit_index": raft.commit_index.0,
        "applied_index": raft.applied_index.0,
    });
    let code = if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body)).into_response()
}
