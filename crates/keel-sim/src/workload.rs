//! Simulated clients: each runs one operation at a time on a few keys — reads through
//! ReadIndex, writes, deletes and compare-and-set — and records what it saw.

use crate::linearizability::{Operation, Outcome, RegisterOp};
use keel_kv::Command;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug)]
pub enum OpKind {
    Read,
    Write(Option<u32>),
    Cas { expected: Option<u32>, new: u32 },
}

#[derive(Clone, Debug)]
pub struct PendingOp {
    pub key: String,
    pub invoked_at: u64,
    pub kind: OpKind,
}

pub struct Client {
    /// The node this client believes leads.
    pub target: usize,
    /// Bumped per operation, so late replies to an abandoned one are ignored.
    pub op_seq: u64,
    pub current: Option<PendingOp>,
    /// The last value this client saw per key, to make compare-and-set likely to succeed.
    pub last_seen: Vec<Option<u32>>,
}

impl Client {
    pub fn new(target: usize, keys: usize) -> Client {
        Client { target, op_seq: 0, current: None, last_seen: vec![None; keys] }
    }
}

pub fn key_name(key: usize) -> String {
    format!("key-{key}")
}

pub fn encode_value(value: u32) -> Vec<u8> {
    value.to_string().into_bytes()
}

pub fn decode_value(bytes: &[u8]) -> u32 {
    std::str::from_utf8(bytes).ok().and_then(|text| text.parse().ok()).expect("the simulator only writes decimal numbers")
}

/// Picks the next operation: 35% reads, 35% writes (a tenth of them deletes), 30% CAS.
pub fn next_op(rng: &mut ChaCha8Rng, client: &Client, keys: usize, next_value: &mut u32, now: u64) -> PendingOp {
    let key = rng.gen_range(0..keys);
    let roll = rng.gen_range(0..100);
    let mut fresh = || {
        *next_value += 1;
        *next_value
    };
    let kind = if roll < 35 {
        OpKind::Read
    } else if roll < 70 {
        OpKind::Write(if roll < 39 { None } else { Some(fresh()) })
    } else {
        let expected = if rng.gen_bool(0.8) { client.last_seen[key] } else { None };
        OpKind::Cas { expected, new: fresh() }
    };
    PendingOp { key: key_name(key), invoked_at: now, kind }
}

pub fn command_for(op: &PendingOp) -> Option<Command> {
    let key = op.key.clone();
    match op.kind {
        OpKind::Read => None,
        OpKind::Write(Some(value)) => Some(Command::Set { key, value: encode_value(value) }),
        OpKind::Write(None) => Some(Command::Delete { key }),
        OpKind::Cas { expected, new } => Some(Command::Cas { key, expected: expected.map(encode_value), value: Some(encode_value(new)) }),
    }
}

/// The history record of an operation that ended (`completed_at = None` for unknown).
pub fn record(client: usize, op: &PendingOp, completed_at: Option<u64>, outcome: Outcome, read: Option<u32>) -> Operation {
    let register_op = match op.kind {
        OpKind::Read => RegisterOp::Read(read),
        OpKind::Write(value) => RegisterOp::Write(value, outcome),
        OpKind::Cas { expected, new } => RegisterOp::Cas { expected, new, outcome },
    };
    Operation { client, invoked_at: op.invoked_at, completed_at, op: register_op }
}
