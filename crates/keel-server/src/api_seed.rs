//! The seed's client API, kept as the seed's journal describes it (Day 9 and Day 13):
//! leader-only for commands and reads — a follower answers 421 `not_leader` with the leader
//! hint and never forwards. Reference: docs/API.md.

use crate::api_error::ApiError;
use crate::server::{check_key, Admitted, AppState, Incoming, Key, SubmitLimit};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_core::Role;
use keel_kv::{Command, CommandError, CommandResult};
use keel_node::Consistency;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    command: String,
}

/// The text the seed answered for each command.
fn result_text(result: &CommandResult) -> String {
    match result {
        CommandResult::Set => "OK".to_string(),
        CommandResult::Deleted { existed: true } => "DELETED".to_string(),
        CommandResult::Deleted { existed: false } => "NOT_FOUND".to_string(),
        other => format!("{other:?}"),
    }
}

fn parse_submit(body: &[u8], value_bytes_max: usize) -> Result<Command, ApiError> {
    let SubmitBody { command } = serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("body must be {{\"command\": \"SET key value\" | \"DELETE key\"}}: {error}")))?;
    let command = Command::parse_text(&command).map_err(|error| match error {
        CommandError::KeyTooLong { .. } | CommandError::EmptyKey | CommandError::Unparseable(_) => ApiError::bad_request(error.to_string()),
    })?;
    check_key(command.key())?;
    if let Command::Set { value, .. } = &command {
        if value.len() > value_bytes_max {
            return Err(ApiError::too_large(format!("value is {} bytes; the limit is {value_bytes_max}", value.len())));
        }
    }
    Ok(command)
}

/// `POST /client/submit` with `{"command": "SET key value" | "DELETE key"}`.
pub(crate) async fn submit(state: Admitted, incoming: Incoming<SubmitLimit>) -> Response {
    let command = match parse_submit(&incoming.body, state.value_bytes_max) {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    match state.propose(&command).await {
        Ok((index, result)) => Json(json!({ "result": result_text(&result), "index": index.0 })).into_response(),
        Err(failure) => state.failure(failure, true).into_response(),
    }
}

/// `GET /client/read/{key}`: a linearizable (ReadIndex) read on the leader.
pub(crate) async fn read(state: Admitted, Key(key): Key) -> Response {
    let read_key = key.clone();
    match state.read(Consistency::Linearizable, move |kv| kv.get(&read_key).map(|value| String::from_utf8_lossy(value).into_owned())).await {
        Ok((index, value)) => Json(json!({ "key": key, "value": value, "read_index": index.0 })).into_response(),
        Err(failure) => state.failure(failure, false).into_response(),
    }
}

/// `GET /client/leader`.
pub(crate) async fn leader(State(state): State<Arc<AppState>>) -> Json<Value> {
    let raft = state.handle.status().raft;
    Json(json!({ "leader_id": raft.leader_id.map(|id| id.0), "node_id": state.id.0, "is_leader": raft.role == Role::Leader }))
}

/// The seed's three states; a pre-candidate is campaigning, so it reports as a candidate.
fn seed_state(role: Role) -> &'static str {
    match role {
        Role::Follower => "Follower",
        Role::PreCandidate | Role::Candidate => "Candidate",
        Role::Leader => "Leader",
    }
}

/// `GET /client/status`.
pub(crate) async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let raft = state.handle.status().raft;
    Json(json!({
        "node_id": state.id.0,
        "state": seed_state(raft.role),
        "term": raft.term.0,
        "commit_index": raft.commit_index.0,
        "last_applied": raft.applied_index.0,
        "log_length": raft.last_log_index.0,
        "leader_id": raft.leader_id.map(|id| id.0),
        "voted_for": raft.voted_for.map(|id| id.0),
        "snapshot_index": raft.snapshot_index.0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_bodies() {
        let command = parse_submit(br#"{"command": "SET greeting hello world"}"#, 100).unwrap();
        assert_eq!(command, Command::Set { key: "greeting".into(), value: b"hello world".to_vec() });
        assert_eq!(parse_submit(br#"{"command": "DELETE greeting"}"#, 100).unwrap(), Command::Delete { key: "greeting".into() });
        for bad in [&br#"{"command": "GET x"}"#[..], br#"{"cmd": "SET a b"}"#, b"{", br#"{"command": 5}"#] {
            assert_eq!(parse_submit(bad, 100).unwrap_err().code, "bad_request", "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_submit(br#"{"command": "SET k 12345"}"#, 4).unwrap_err().code, "too_large");
    }
}
