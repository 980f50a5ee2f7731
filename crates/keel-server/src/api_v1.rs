//! The v1 client API: any node serves it; requests that need the leader are forwarded to it
//! (`forward.rs`). Reference: docs/API.md.

use crate::api_error::ApiError;
use crate::forward::{proxy, INDEX_HEADER};
use crate::server::{Admitted, AppState, CasLimit, Failure, Incoming, Key, Route, ValueLimit};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_core::LogIndex;
use keel_kv::{Command, CommandResult};
use keel_node::{Consistency, NodeError};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::future::Future;
use std::sync::Arc;

/// Runs `local` here if this node should serve the request, else proxies it to the leader.
/// `local` is a future not yet polled: when the request is forwarded it never runs.
pub(crate) async fn serve_at_leader<L>(state: &AppState, incoming: &Incoming<L>, is_write: bool, local: impl Future<Output = Result<Response, Failure>>) -> Response {
    let forwarded = incoming.forwarded();
    match state.route(forwarded) {
        Err(error) => return error.into_response(),
        Ok(Route::Forward(leader)) => return proxy(state, leader, incoming, is_write).await,
        Ok(Route::Local) => {}
    }
    match local.await {
        Ok(response) => response,
        // Leadership moved between the check above and the request reaching the driver.
        Err(Failure::Node(NodeError::NotLeader { leader_hint: Some(leader) })) if !forwarded && leader != state.id => proxy(state, leader, incoming, is_write).await,
        Err(failure) => state.failure(failure, is_write).into_response(),
    }
}

/// `PUT /v1/kv/{key}`: the body is the value.
pub(crate) async fn put_value(state: Admitted, Key(key): Key, incoming: Incoming<ValueLimit>) -> Response {
    let command = Command::Set { key, value: incoming.body.to_vec() };
    let local = async {
        let (index, _) = state.propose(&command).await?;
        Ok(index_response(index))
    };
    serve_at_leader(&state, &incoming, true, local).await
}

/// `{"index":N}`, the answer to a write: formatted directly, the hottest answer there is
/// (no JSON map built and serialized per request).
fn index_response(index: LogIndex) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], format!("{{\"index\":{}}}", index.0)).into_response()
}

/// `DELETE /v1/kv/{key}`.
pub(crate) async fn delete_value(state: Admitted, Key(key): Key, incoming: Incoming) -> Response {
    let command = Command::Delete { key };
    let local = async {
        let (index, result) = state.propose(&command).await?;
        let deleted = matches!(result, CommandResult::Deleted { existed: true });
        Ok(Json(json!({ "index": index.0, "deleted": deleted })).into_response())
    };
    serve_at_leader(&state, &incoming, true, local).await
}

#[derive(Deserialize)]
pub(crate) struct ReadParams {
    consistency: Option<String>,
}

pub(crate) fn parse_consistency(query: Result<Query<ReadParams>, QueryRejection>) -> Result<Consistency, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::bad_request(format!("bad query string: {}", rejection.body_text())))?;
    match params.consistency.as_deref() {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!("consistency must be `linearizable` or `stale`, not {other:?}"))),
    }
}

/// `GET /v1/kv/{key}[?consistency=linearizable|stale]`: the raw value, `X-Keel-Index`.
pub(crate) async fn get_value(state: Admitted, Key(key): Key, query: Result<Query<ReadParams>, QueryRejection>, incoming: Incoming) -> Response {
    let consistency = match parse_consistency(query) {
        Ok(consistency) => consistency,
        Err(error) => return error.into_response(),
    };
    let read_key = key.clone();
    let local = async {
        let (index, value) = state.read(consistency, move |kv| kv.get(&read_key).map(<[u8]>::to_vec)).await?;
        Ok(value_response(&key, index, value))
    };
    match consistency {
        // Any node answers from its own applied state.
        Consistency::Stale => local.await.unwrap_or_else(|failure| state.failure(failure, false).into_response()),
        Consistency::Linearizable => serve_at_leader(&state, &incoming, false, local).await,
    }
}

fn value_response(key: &str, index: LogIndex, value: Option<Vec<u8>>) -> Response {
    let mut response = match value {
        Some(value) => ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response(),
        None => ApiError::not_found(key).into_response(),
    };
    response.headers_mut().insert(INDEX_HEADER, HeaderValue::from(index.0));
    response
}

/// `POST /v1/kv/{key}/cas` with `{"expected": "old"|null, "value": "new"|null}`.
pub(crate) async fn compare_and_set(state: Admitted, Key(key): Key, incoming: Incoming<CasLimit>) -> Response {
    let (expected, value) = match parse_cas_body(&incoming.body, state.value_bytes_max) {
        Ok(fields) => fields,
        Err(error) => return error.into_response(),
    };
    let command = Command::Cas { key, expected, value };
    let local = async {
        let (index, result) = state.propose(&command).await?;
        Ok(cas_response(index, result))
    };
    serve_at_leader(&state, &incoming, true, local).await
}

fn cas_response(index: LogIndex, result: CommandResult) -> Response {
    match result {
        CommandResult::Cas { succeeded: true, .. } => Json(json!({ "succeeded": true, "index": index.0 })).into_response(),
        CommandResult::Cas { succeeded: false, current } => {
            let current = current.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            (StatusCode::CONFLICT, Json(json!({ "succeeded": false, "index": index.0, "current": current }))).into_response()
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected result for a compare-and-set: {other:?}")).into_response(),
    }
}

/// The `expected` and `value` of a compare-and-set request.
pub(crate) type CasFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Both fields are required (a forgotten `value` must not mean "delete"); each is a string
/// or null; nothing else is allowed.
pub(crate) fn parse_cas_body(body: &[u8], value_bytes_max: usize) -> Result<CasFields, ApiError> {
    let parsed: Value = serde_json::from_slice(body).map_err(|error| ApiError::bad_request(format!("body is not valid JSON: {error}")))?;
    let Value::Object(mut fields) = parsed else {
        return Err(ApiError::bad_request("body must be a JSON object {\"expected\": ..., \"value\": ...}"));
    };
    let expected = take_string_or_null(&mut fields, "expected", value_bytes_max)?;
    let value = take_string_or_null(&mut fields, "value", value_bytes_max)?;
    if let Some(unknown) = fields.keys().next() {
        return Err(ApiError::bad_request(format!("unknown field {unknown:?}; expected only \"expected\" and \"value\"")));
    }
    Ok((expected, value))
}

fn take_string_or_null(fields: &mut Map<String, Value>, name: &str, value_bytes_max: usize) -> Result<Option<Vec<u8>>, ApiError> {
    match fields.remove(name) {
        None => Err(ApiError::bad_request(format!("missing field {name:?} (use null for an absent key or a delete)"))),
        Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.len() > value_bytes_max => Err(ApiError::too_large(format!("{name:?} is {} bytes; the limit is {value_bytes_max}", text.len()))),
        Some(Value::String(text)) => Ok(Some(text.into_bytes())),
        Some(_) => Err(ApiError::bad_request(format!("field {name:?} must be a string or null"))),
    }
}

/// What `id` is in `membership`: `voter`, `learner`, `leaving` (C_old only, in a joint
/// configuration) or `none` (a node waiting to be added, or removed).
pub(crate) fn member_role(membership: &keel_core::Membership, id: keel_core::NodeId) -> &'static str {
    if membership.voters.contains(&id) {
        "voter"
    } else if membership.is_learner(id) {
        "learner"
    } else if membership.is_voter(id) {
        "leaving"
    } else {
        "none"
    }
}

/// `GET /v1/status`: this node's view.
pub(crate) async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(status_json(&state))
}

/// The body of `GET /v1/status` (also the first event of `/v1/events`).
pub(crate) fn status_json(state: &AppState) -> Value {
    let status = state.handle.status();
    let raft = status.raft;
    json!({
        "id": state.id.0,
        "address": state.address,
        "cluster_id": state.cluster_id,
        "role": keel_node::events::role_name(raft.role),
        "term": raft.term.0,
        "leader_id": raft.leader_id.map(|id| id.0),
        "leader_addr": raft.leader_id.and_then(|id| state.address_of(id)),
        "voted_for": raft.voted_for.map(|id| id.0),
        "commit_index": raft.commit_index.0,
        "applied_index": raft.applied_index.0,
        "last_log_index": raft.last_log_index.0,
        "last_log_term": raft.last_log_term.0,
        "snapshot_index": raft.snapshot_index.0,
        "member": member_role(&status.membership, state.id),
        "configuration": status.membership.to_string(),
        "configuration_index": status.membership_index.0,
        "removed": status.removed,
        "stopped": status.stopped,
    })
}

/// `GET /v1/cluster`: the members and who leads, as this node knows it (no progress: that
/// is the leader's, `GET /v1/members`).
pub(crate) async fn cluster(State(state): State<Arc<AppState>>) -> Json<Value> {
    let status = state.handle.status();
    let raft = status.raft;
    let membership = &status.membership;
    let members: Vec<Value> = state
        .member_addresses()
        .into_iter()
        .map(|(id, address)| {
            json!({ "id": id.0, "address": address, "role": member_role(membership, id), "is_leader": raft.leader_id == Some(id), "is_self": id == state.id })
        })
        .collect();
    Json(json!({
        "cluster_id": state.cluster_id,
        "leader_id": raft.leader_id.map(|id| id.0),
        "leader_addr": raft.leader_id.and_then(|id| state.address_of(id)),
        "term": raft.term.0,
        "joint": membership.is_joint(),
        "removed": status.removed,
        "members": members,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_bodies() {
        assert_eq!(parse_cas_body(br#"{"expected": null, "value": "new"}"#, 100).unwrap(), (None, Some(b"new".to_vec())));
        assert_eq!(parse_cas_body(br#"{"expected": "old", "value": null}"#, 100).unwrap(), (Some(b"old".to_vec()), None));
        for bad in [&br#"{"value": "new"}"#[..], br#"{"expected": 1, "value": "x"}"#, br#"["x"]"#, b"not json", br#"{"expected": null, "value": null, "extra": 1}"#] {
            let error = parse_cas_body(bad, 100).unwrap_err();
            assert_eq!(error.code, "bad_request", "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_cas_body(br#"{"expected": null, "value": "12345"}"#, 4).unwrap_err().code, "too_large");
    }
}
