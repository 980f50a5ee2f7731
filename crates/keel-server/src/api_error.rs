//! Every error the HTTP API returns, as one JSON shape:
//! `{"error": code, "message": text, "leader_hint": id|null, "leader_addr": "host:port"|null,
//!   "outcome": "not_applied"|"unknown"}`.
//!
//! `outcome` tells a client whether retrying is safe: `not_applied` means the request
//! certainly changed nothing (it was refused before it was proposed, or it was a read);
//! `unknown` means a write may or may not have been applied (it timed out, the node stopped
//! while it was in flight, or the forwarding connection broke mid-request).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_core::NodeId;
use keel_node::{NodeError, Outcome};
use serde::Serialize;

/// Seconds a client should wait before retrying a 503 that says `Retry-After`.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub leader_hint: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub outcome: Outcome,
    pub retry_after: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    leader_hint: Option<u64>,
    leader_addr: Option<&'a str>,
    outcome: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), leader_hint: None, leader_addr: None, outcome: Outcome::NotApplied, retry_after: false }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    pub fn not_found(key: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("key {key:?} not found"))
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { retry_after: true, ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }

    pub fn no_leader() -> ApiError {
        ApiError::unavailable("no_leader", "no leader is known (an election may be in progress); retry shortly")
    }

    pub fn not_leader(leader: NodeId, leader_addr: Option<String>) -> ApiError {
        let message = format!("this node is not the leader; node {leader} is");
        ApiError { leader_hint: Some(leader), leader_addr, ..ApiError::new(StatusCode::MISDIRECTED_REQUEST, "not_leader", message) }
    }

    /// A request that waited `request_timeout` without an answer.
    pub fn timeout(is_write: bool) -> ApiError {
        let (message, outcome) = if is_write {
            ("the write was not confirmed in time; it may or may not have been applied", Outcome::Unknown)
        } else {
            ("the read was not confirmed in time (no majority reachable?)", Outcome::NotApplied)
        };
        ApiError { outcome, retry_after: false, ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", message) }
    }

    pub fn with_outcome(mut self, outcome: Outcome) -> ApiError {
        self.outcome = outcome;
        self
    }

    pub fn with_leader(mut self, leader: Option<NodeId>, leader_addr: Option<String>) -> ApiError {
        self.leader_hint = leader;
        self.leader_addr = leader_addr;
        self
    }

    /// Maps the node's refusal. Reads never change anything, so their outcome is always
    /// `not_applied`. `leader_addr` looks up a node's address.
    pub fn from_node(error: NodeError, is_write: bool, leader_addr: impl Fn(NodeId) -> Option<String>) -> ApiError {
        let api_error = match &error {
            NodeError::NotLeader { leader_hint: Some(leader) } => return ApiError::not_leader(*leader, leader_addr(*leader)),
            NodeError::NotLeader { leader_hint: None } => ApiError::no_leader(),
            NodeError::Overloaded => ApiError::unavailable("overloaded", error.to_string()),
            NodeError::TransferInProgress => ApiError::unavailable("transfer_in_progress", error.to_string()),
            NodeError::Dropped => ApiError::unavailable("dropped", error.to_string()),
            NodeError::LeadershipLost => ApiError::unavailable("leadership_lost", error.to_string()),
            NodeError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", error.to_string()),
            NodeError::OutcomeUnknown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", error.to_string()),
        };
        let outcome = if is_write { error.outcome() } else { Outcome::NotApplied };
        api_error.with_outcome(outcome)
    }
}

pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::NotApplied => "not_applied",
        Outcome::Unknown => "unknown",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            leader_hint: self.leader_hint.map(|id| id.0),
            leader_addr: self.leader_addr.as_deref(),
            outcome: outcome_name(self.outcome),
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_map_to_documented_codes() {
        let address = |id: NodeId| Some(format!("127.0.0.1:700{id}"));
        let not_leader = ApiError::from_node(NodeError::NotLeader { leader_hint: Some(NodeId(2)) }, true, address);
        assert_eq!((not_leader.status.as_u16(), not_leader.code), (421, "not_leader"));
        assert_eq!(not_leader.leader_addr.as_deref(), Some("127.0.0.1:7002"));
        let no_leader = ApiError::from_node(NodeError::NotLeader { leader_hint: None }, true, address);
        assert_eq!((no_leader.status.as_u16(), no_leader.code, no_leader.retry_after), (503, "no_leader", true));
        let stopped = ApiError::from_node(NodeError::Stopped, true, address);
        assert_eq!(stopped.outcome, Outcome::Unknown);
        let stopped_read = ApiError::from_node(NodeError::Stopped, false, address);
        assert_eq!(stopped_read.outcome, Outcome::NotApplied, "a read never applies anything");
        assert_eq!(ApiError::timeout(true).outcome, Outcome::Unknown);
    }
}
