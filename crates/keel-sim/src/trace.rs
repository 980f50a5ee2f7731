//! `keel-sim --seed S --trace FILE.json`: a run, step by step, for the replay page
//! (`/ui/replay`, docs/WATCH.md).
//!
//! One step per simulator event handled up to `until_ms`: every tick, every message
//! delivered (what it said), every crash, restart, partition and heal, every client request
//! and answer. Each step carries the decisions the nodes took during it (keel-core's
//! `Event`s: a vote and the rule behind it, an election, a new leader...) and the new view of
//! each node whose view changed (role, term, vote, commit and applied index, the end of its
//! log), so the page can show the cluster at any step by replaying the changes before it.
//!
//! ```json
//! {"format": "keel-sim-trace/1", "seed": 42, "nodes": 3, "until_ms": 5000,
//!  "steps": [{"at_ms": 12, "kind": "deliver", "node": 2, "text": "node 1 → node 2: PreVote term 1 (last log 0/0)",
//!             "events": [{"node": 2, "kind": "vote", ..., "rule": "§5.2/§5.4.1 granted: ..."}],
//!             "views": {"2": {"up": true, "role": "follower", "term": 0, ...}}}, ...]}
//! ```

use keel_core::{AppendResult, Message, MessageBody, RaftCore};
use keel_node::NodeEvent;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// Entries of each node's log a view shows.
pub const LOG_TAIL_ENTRIES: usize = 12;
/// A trace stops growing at this many steps (a guard on the file's size).
pub const STEPS_MAX: usize = 200_000;

pub struct Tracer {
    pub until_ms: u64,
    steps: Vec<Value>,
    views: Vec<Value>,
    blocked: BTreeSet<(usize, usize)>,
}

/// What happened in one step, as the runner describes it before handling the event.
pub struct StepKind {
    pub kind: &'static str,
    pub node: Option<usize>,
    pub text: String,
}

impl Tracer {
    pub fn new(until_ms: u64) -> Tracer {
        Tracer { until_ms, steps: Vec::new(), views: Vec::new(), blocked: BTreeSet::new() }
    }

    pub fn is_recording(&self, at_ms: u64) -> bool {
        at_ms <= self.until_ms && self.steps.len() < STEPS_MAX
    }

    /// Records one step: `views` is every node's view after it (`None`: down), `blocked`
    /// the network's blocked links after it.
    pub fn record(&mut self, at_ms: u64, step: StepKind, events: Vec<(usize, NodeEvent)>, views: Vec<Value>, blocked: &BTreeSet<(usize, usize)>) {
        let mut changed = Map::new();
        for (index, view) in views.iter().enumerate() {
            if self.views.get(index) != Some(view) {
                changed.insert((index + 1).to_string(), view.clone());
            }
        }
        self.views = views;
        let mut texts = vec![step.text];
        if *blocked != self.blocked {
            texts.push(describe_network(blocked));
            self.blocked = blocked.clone();
        }
        let quiet = step.kind == "internal" && changed.is_empty() && events.is_empty() && texts.len() == 1;
        if quiet {
            return; // A disk or thread completion that changed nothing anyone could see.
        }
        let events: Vec<Value> = events.into_iter().map(|(index, event)| event.to_json(keel_core::NodeId(index as u64 + 1))).collect();
        let mut value = json!({ "at_ms": at_ms, "kind": step.kind, "text": texts.join("; "), "events": events, "views": changed });
        if let Some(node) = step.node {
            value["node"] = json!(node + 1);
        }
        self.steps.push(value);
    }

    pub fn finish(self, seed: u64, nodes: usize, outcome: &str) -> Value {
        json!({ "format": "keel-sim-trace/1", "seed": seed, "nodes": nodes, "until_ms": self.until_ms, "outcome": outcome, "steps": self.steps })
    }
}

/// A node's view: what the replay draws of it.
pub fn view(core: Option<&RaftCore>) -> Value {
    let Some(core) = core else { return json!({ "up": false }) };
    let status = core.status();
    json!({
        "up": true,
        "role": keel_node::events::role_name(status.role),
        "term": status.term.0,
        "leader": status.leader_id.map(|id| id.0),
        "voted_for": status.voted_for.map(|id| id.0),
        "commit": status.commit_index.0,
        "applied": status.applied_index.0,
        "last_index": status.last_log_index.0,
        "snapshot_index": status.snapshot_index.0,
        "log": keel_node::LogEntrySummary::tail(core, LOG_TAIL_ENTRIES),
    })
}

/// "node 1 → node 2: AppendEntries term 3 (prev 7/2, entries 8..9, commit 7)".
pub fn describe_message(message: &Message) -> String {
    let detail = match &message.body {
        MessageBody::RequestVote { last_log_index, last_log_term, .. } => format!("last log {}/{}", last_log_index.0, last_log_term.0),
        MessageBody::RequestVoteResponse { vote_granted, .. } => (if *vote_granted { "granted" } else { "refused" }).to_string(),
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, .. } => {
            let carried = match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => format!("entries {}..{}", first.index.0, last.index.0),
                _ => "heartbeat".to_string(),
            };
            format!("prev {}/{}, {carried}, commit {}", prev_log_index.0, prev_log_term.0, leader_commit.0)
        }
        MessageBody::AppendEntriesResponse { result: AppendResult::Success { match_index }, .. } => format!("success, match {}", match_index.0),
        MessageBody::AppendEntriesResponse { result: AppendResult::Conflict { rejected_index, .. }, .. } => format!("conflict at {}", rejected_index.0),
        MessageBody::InstallSnapshot { meta, offset, done, .. } => format!("snapshot at {}, offset {offset}{}", meta.last_included_index.0, if *done { ", last chunk" } else { "" }),
        MessageBody::InstallSnapshotResponse { next_offset, done, .. } => format!("next offset {next_offset}{}", if *done { ", installed" } else { "" }),
        MessageBody::TimeoutNow => "take over now (§3.10)".to_string(),
    };
    format!("node {} → node {}: {} term {} ({detail})", message.from.0, message.to.0, message.body.name(), message.term.0)
}

fn describe_network(blocked: &BTreeSet<(usize, usize)>) -> String {
    if blocked.is_empty() {
        return "network healed".to_string();
    }
    let links: Vec<String> = blocked.iter().map(|(from, to)| format!("{}→{}", from + 1, to + 1)).collect();
    format!("network: links cut {}", links.join(" "))
}
