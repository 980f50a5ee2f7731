//! The v1 membership API (thesis ch. 4) and leadership transfer (§3.10). Every route is
//! served by the leader (others forward, as for writes). A change answers once it is
//! complete: committed and, for a change of voters, out of the joint configuration.
//! Reference: docs/API.md, "Members".

use crate::api_error::ApiError;
use crate::api_v1::serve_at_leader;
use crate::server::{Admitted, AppState, BodyLimit, Failure, Incoming};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_core::{MembershipChange, MembershipError, NodeId, Role, TransferError};
use keel_node::{ChangeError, NodeError, Outcome};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Bodies of the membership routes: an id and an address, in JSON.
pub(crate) enum MemberLimit {}

impl BodyLimit for MemberLimit {
    fn bytes_max(_: &AppState) -> usize {
        4096
    }
}

/// `GET /v1/members`: the configuration in force, with each member's progress.
pub(crate) async fn list(State(state): State<Arc<AppState>>, incoming: Incoming) -> Response {
    let local = async {
        let members = state.handle.members().await.map_err(Failure::Node)?;
        if members.role != Role::Leader {
            return Err(Failure::Node(NodeError::NotLeader { leader_hint: state.handle.status().raft.leader_id }));
        }
        Ok(Json(members_json(&state, &members)).into_response())
    };
    serve_at_leader(&state, &incoming, false, local).await
}

fn members_json(state: &AppState, members: &keel_node::Members) -> Value {
    let membership = &members.membership;
    let addresses = state.member_addresses();
    let rows: Vec<Value> = addresses
        .iter()
        .map(|(id, address)| {
            let role = crate::api_v1::member_role(membership, *id);
            let (match_index, active) = if *id == state.id { (members.last_log_index, true) } else { members.progress.get(id).copied().unwrap_or_default() };
            json!({
                "id": id.0,
                "address": address,
                "role": role,
                "is_leader": *id == state.id,
                "match_index": match_index.0,
                "lag": members.last_log_index.0.saturating_sub(match_index.0),
                "active": active,
            })
        })
        .collect();
    let status = state.handle.status();
    json!({
        "leader_id": state.id.0,
        "term": status.raft.term.0,
        "last_log_index": members.last_log_index.0,
        "configuration_index": status.membership_index.0,
        "joint": membership.is_joint(),
        "members": rows,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: u64,
    address: String,
}

/// `POST /v1/members` with `{"id": N, "address": "HOST:PORT"}`: add a learner.
pub(crate) async fn add(state: Admitted, incoming: Incoming<MemberLimit>) -> Response {
    let body: AddMember = match serde_json::from_slice(&incoming.body) {
        Ok(body) => body,
        Err(error) => return ApiError::bad_request(format!("body must be {{\"id\": N, \"address\": \"HOST:PORT\"}}: {error}")).into_response(),
    };
    if body.id == 0 {
        return ApiError::bad_request("node id 0 is reserved; ids start at 1").into_response();
    }
    if let Err(problem) = crate::config::check_address("member", &body.address) {
        return ApiError::bad_request(problem).into_response();
    }
    change(&state, &incoming, MembershipChange::AddLearner { id: NodeId(body.id), address: body.address }).await
}

/// `POST /v1/members/{id}/promote`: a caught-up learner becomes a voter.
pub(crate) async fn promote(state: Admitted, id: Result<Path<u64>, PathRejection>, incoming: Incoming) -> Response {
    match id {
        Ok(Path(id)) => change(&state, &incoming, MembershipChange::Promote(NodeId(id))).await,
        Err(rejection) => ApiError::bad_request(format!("bad member id: {}", rejection.body_text())).into_response(),
    }
}

/// `DELETE /v1/members/{id}`: a voter or learner leaves (the leader too: it steps down
/// once the new configuration commits, thesis §4.2.2).
pub(crate) async fn remove(state: Admitted, id: Result<Path<u64>, PathRejection>, incoming: Incoming) -> Response {
    match id {
        Ok(Path(id)) => change(&state, &incoming, MembershipChange::Remove(NodeId(id))).await,
        Err(rejection) => ApiError::bad_request(format!("bad member id: {}", rejection.body_text())).into_response(),
    }
}

async fn change<L>(state: &AppState, incoming: &Incoming<L>, change: MembershipChange) -> Response {
    let local = async {
        let result = tokio::time::timeout(state.request_timeout, state.handle.change_membership(change)).await;
        match result {
            Err(_) => Ok(ApiError::timeout(true).into_response()),
            Ok(Ok(index)) => {
                let members = state.handle.members().await.map_err(Failure::Node)?;
                let mut answer = members_json(state, &members);
                answer["index"] = json!(index.0);
                Ok(Json(answer).into_response())
            }
            Ok(Err(ChangeError::Refused(MembershipError::NotLeader { leader_hint }))) => Err(Failure::Node(NodeError::NotLeader { leader_hint })),
            Ok(Err(error)) => Ok(change_error(error).into_response()),
        }
    };
    serve_at_leader(state, incoming, true, local).await
}

/// What each refusal is over HTTP: 409 for a conflict with the cluster's state, 404 for an
/// id that is not a member.
pub(crate) fn change_error(error: ChangeError) -> ApiError {
    let message = error.to_string();
    let conflict = |code| ApiError::new(StatusCode::CONFLICT, code, message.clone());
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_member", message.clone());
    match error {
        ChangeError::Refused(refusal) => match refusal {
            MembershipError::NotLeader { .. } => ApiError::no_leader(),
            MembershipError::ChangeInProgress => conflict("change_in_progress"),
            MembershipError::TransferInProgress => conflict("transfer_in_progress"),
            MembershipError::AlreadyMember(_) => conflict("already_member"),
            MembershipError::AddressInUse { .. } => conflict("address_in_use"),
            MembershipError::LastVoter(_) => conflict("last_voter"),
            MembershipError::LearnerBehind { .. } => conflict("learner_behind"),
            MembershipError::TooManyMembers => conflict("too_many_members"),
            MembershipError::NotMember(_) | MembershipError::NotLearner(_) | MembershipError::NotVoter(_) => unknown(),
            MembershipError::BadAddress(_) => ApiError::bad_request(message),
            MembershipError::NoCommitInTerm => ApiError::unavailable("no_commit_in_term", message),
        },
        ChangeError::TransferRefused(refusal) => match refusal {
            TransferError::NotLeader { .. } => ApiError::no_leader(),
            TransferError::AlreadyLeader => conflict("already_leader"),
            TransferError::NotVoter(_) => conflict("not_voter"),
            TransferError::InProgress { .. } => conflict("transfer_in_progress"),
            TransferError::NoTarget => conflict("no_target"),
        },
        ChangeError::Dropped => ApiError::unavailable("dropped", message),
        ChangeError::OutcomeUnknown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", message).with_outcome(Outcome::Unknown),
        ChangeError::Node(error) => ApiError::from_node(error, true, |_| None),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Transfer {
    to: Option<u64>,
}

/// `POST /v1/leader/transfer` with an optional `{"to": N}`: hand leadership over (thesis
/// §3.10) and answer once the target leads.
pub(crate) async fn transfer(state: Admitted, incoming: Incoming<MemberLimit>) -> Response {
    let body: Transfer = if incoming.body.iter().all(u8::is_ascii_whitespace) {
        Transfer::default()
    } else {
        match serde_json::from_slice(&incoming.body) {
            Ok(body) => body,
            Err(error) => return ApiError::bad_request(format!("body must be empty or {{\"to\": N}}: {error}")).into_response(),
        }
    };
    let target = body.to.map(NodeId);
    if let Some(id) = target.filter(|id| !state.handle.status().membership.is_member(*id)) {
        return ApiError::new(StatusCode::NOT_FOUND, "unknown_member", format!("node {id} is not a member")).into_response();
    }
    let local = async {
        let target = match state.handle.transfer_leadership(target).await {
            Ok(target) => target,
            Err(ChangeError::TransferRefused(TransferError::NotLeader { leader_hint })) => return Err(Failure::Node(NodeError::NotLeader { leader_hint })),
            Err(error) => return Ok(change_error(error).into_response()),
        };
        Ok(wait_for_leader(&state, target).await)
    };
    serve_at_leader(&state, &incoming, true, local).await
}

/// Answers once `target` leads in this node's view, or, if the transfer is abandoned, when
/// the request times out (leadership then stayed here).
async fn wait_for_leader(state: &AppState, target: NodeId) -> Response {
    let mut status = state.handle.watch_status();
    let taken_over = async { status.wait_for(|status| status.raft.leader_id == Some(target) && status.raft.role != Role::Leader).await.map(|status| status.raft.term) };
    match tokio::time::timeout(state.request_timeout, taken_over).await {
        Ok(Ok(term)) => Json(json!({ "leader_id": target.0, "term": term.0 })).into_response(),
        Ok(Err(_)) => ApiError::from_node(NodeError::Stopped, false, |_| None).into_response(),
        Err(_) => ApiError::unavailable("transfer_abandoned", format!("node {target} did not take over in time; this node still leads")).into_response(),
    }
}
