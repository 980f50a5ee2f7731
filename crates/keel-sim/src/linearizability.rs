//! The clients' history, checked for linearizability one key at a time with the
//! Wing–Gong–Lowe checker of `todc-utils` (which agrees with Porcupine on etcd's Jepsen
//! histories). Each key is a register; the check of each key runs under a time bound, and
//! hitting the bound counts as a failure to investigate, never as a pass.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

/// How an operation ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// A compare-and-set whose comparison failed.
    Failed,
    /// Timed out or the node crashed: it may or may not have taken effect, at any later time.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Read(Option<u32>),
    /// `None` deletes the key.
    Write(Option<u32>, Outcome),
    Cas { expected: Option<u32>, new: u32, outcome: Outcome },
}

/// A register per key: its value, `None` when absent.
pub struct KeyRegister;

impl Specification for KeyRegister {
    type State = Option<u32>;
    type Operation = RegisterOp;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &RegisterOp, state: &Option<u32>) -> (bool, Option<u32>) {
        match *op {
            RegisterOp::Read(value) => (value == *state, *state),
            RegisterOp::Write(value, _) => (true, value),
            RegisterOp::Cas { expected, new, outcome } => {
                let matches = *state == expected;
                match outcome {
                    Outcome::Ok => (matches, Some(new)),
                    Outcome::Failed => (!matches, *state),
                    Outcome::Unknown => (true, if matches { Some(new) } else { *state }),
                }
            }
        }
    }
}

/// One completed or abandoned client operation on one key.
#[derive(Clone, Debug)]
pub struct Operation {
    pub client: usize,
    pub invoked_at: u64,
    /// `None`: the outcome is unknown, so it may take effect any time after `invoked_at`.
    pub completed_at: Option<u64>,
    pub op: RegisterOp,
}

#[derive(Default)]
pub struct HistoryLog {
    by_key: BTreeMap<String, Vec<Operation>>,
}

impl HistoryLog {
    pub fn record(&mut self, key: &str, operation: Operation) {
        self.by_key.entry(key.to_string()).or_default().push(operation);
    }

    pub fn operation_count(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    /// Checks every key; returns the first key that is not linearizable (or hit the bound).
    pub fn check(&self, time_bound: Duration) -> Result<(), String> {
        for (key, operations) in &self.by_key {
            check_key(operations.clone(), time_bound).map_err(|problem| format!("key {key:?}: {problem}"))?;
        }
        Ok(())
    }
}

/// Orders calls and responses by time (a response before a call at the same instant: the
/// simulator delivers a response before the next request it causes), unknown outcomes last.
fn to_actions(operations: &[Operation]) -> Vec<(usize, Action<RegisterOp>)> {
    let mut timed: Vec<(u64, u8, usize, Action<RegisterOp>)> = Vec::new();
    let mut unknown = Vec::new();
    for (position, operation) in operations.iter().enumerate() {
        // Each operation is its own process: the history format needs one open call per process.
        timed.push((operation.invoked_at, 1, position, Action::Call(operation.op)));
        match operation.completed_at {
            Some(at) => timed.push((at, 0, position, Action::Response(operation.op))),
            None => unknown.push((position, Action::Response(operation.op))),
        }
    }
    timed.sort_by_key(|(at, order, position, _)| (*at, *order, *position));
    let mut actions: Vec<(usize, Action<RegisterOp>)> = timed.into_iter().map(|(_, _, position, action)| (position, action)).collect();
    actions.extend(unknown);
    actions
}

fn check_key(operations: Vec<Operation>, time_bound: Duration) -> Result<(), String> {
    if operations.is_empty() {
        return Ok(());
    }
    let count = operations.len();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let history = History::from_actions(to_actions(&operations));
        let _ = sender.send(WGLChecker::<KeyRegister>::is_linearizable(history));
    });
    match receiver.recv_timeout(time_bound) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("history of {count} operations is not linearizable")),
        Err(_) => Err(format!("linearizability check of {count} operations exceeded {time_bound:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked_at: u64, completed_at: Option<u64>, op: RegisterOp) -> Operation {
        Operation { client: 0, invoked_at, completed_at, op }
    }

    const BOUND: Duration = Duration::from_secs(10);

    #[test]
    fn sequential_history_passes() {
        let history = vec![op(0, Some(1), RegisterOp::Write(Some(1), Outcome::Ok)), op(2, Some(3), RegisterOp::Read(Some(1)))];
        assert!(check_key(history, BOUND).is_ok());
    }

    #[test]
    fn stale_read_after_acknowledged_write_fails() {
        let history = vec![op(0, Some(1), RegisterOp::Write(Some(1), Outcome::Ok)), op(2, Some(3), RegisterOp::Read(None))];
        assert!(check_key(history, BOUND).is_err());
    }

    #[test]
    fn unknown_write_may_or_may_not_take_effect() {
        let took_effect = vec![op(0, None, RegisterOp::Write(Some(7), Outcome::Unknown)), op(5, Some(6), RegisterOp::Read(Some(7)))];
        assert!(check_key(took_effect, BOUND).is_ok());
        let did_not = vec![op(0, None, RegisterOp::Write(Some(7), Outcome::Unknown)), op(5, Some(6), RegisterOp::Read(None))];
        assert!(check_key(did_not, BOUND).is_ok());
    }

    #[test]
    fn failed_cas_must_see_a_different_value() {
        let history = vec![
            op(0, Some(1), RegisterOp::Write(Some(1), Outcome::Ok)),
            op(2, Some(3), RegisterOp::Cas { expected: Some(1), new: 2, outcome: Outcome::Failed }),
        ];
        assert!(check_key(history, BOUND).is_err());
    }
}
