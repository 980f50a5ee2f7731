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

/// Checks one key. Operations whose outcome is unknown stay pending to the end of the
/// history, so each may be placed anywhere after its call: a few dozen of them make the
/// search explode. The first check therefore leaves out the unknown writes (and compare-and-
/// sets) whose value no other operation observed: a linearization of what is left is one
/// of the whole history too, with the operations left out placed last of all — which an
/// unknown operation may always be (it is concurrent with everything after its call, and
/// it changes nothing anyone saw). Only when that check fails is the whole history checked,
/// so leaving operations out never turns a pass into a failure or a failure into a pass.
fn check_key(operations: Vec<Operation>, time_bound: Duration) -> Result<(), String> {
    if operations.is_empty() {
        return Ok(());
    }
    let observed = observed_values(&operations);
    let seen = |op: &Operation| match op.op {
        RegisterOp::Write(Some(value), Outcome::Unknown) | RegisterOp::Cas { new: value, outcome: Outcome::Unknown, .. } => observed.contains(&value),
        _ => true,
    };
    let reduced: Vec<Operation> = operations.iter().filter(|op| seen(op)).cloned().collect();
    if reduced.len() < operations.len() && run_checker(reduced, time_bound) == Ok(true) {
        return Ok(());
    }
    let count = operations.len();
    match run_checker(operations, time_bound) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("history of {count} operations is not linearizable")),
        Err(()) => Err(format!("linearizability check of {count} operations exceeded {time_bound:?}")),
    }
}

/// Every value some operation saw: a read's result or a compare-and-set's expected value.
fn observed_values(operations: &[Operation]) -> std::collections::HashSet<u32> {
    let seen = operations.iter().filter_map(|op| match op.op {
        RegisterOp::Read(value) => value,
        RegisterOp::Cas { expected, .. } => expected,
        RegisterOp::Write(..) => None,
    });
    seen.collect()
}

/// `Err(())`: the bound passed first.
fn run_checker(operations: Vec<Operation>, time_bound: Duration) -> Result<bool, ()> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let history = History::from_actions(to_actions(&operations));
        let _ = sender.send(WGLChecker::<KeyRegister>::is_linearizable(history));
    });
    receiver.recv_timeout(time_bound).map_err(|_| ())
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

    /// Parses `testdata/`'s format: `client invoked_at completed_at op`, `-` for unknown
    /// or absent; `R value`, `W value outcome`, `C expected new outcome`.
    fn parse_history(text: &str) -> Vec<Operation> {
        let value = |field: &str| (field != "-").then(|| field.parse::<u32>().unwrap());
        let outcome = |field: &str| match field {
            "Ok" => Outcome::Ok,
            "Failed" => Outcome::Failed,
            "Unknown" => Outcome::Unknown,
            other => panic!("outcome {other:?}"),
        };
        let lines = text.lines().filter(|line| !line.starts_with('#') && !line.is_empty());
        let parse = |line: &str| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let op = match fields[3] {
                "R" => RegisterOp::Read(value(fields[4])),
                "W" => RegisterOp::Write(value(fields[4]), outcome(fields[5])),
                "C" => RegisterOp::Cas { expected: value(fields[4]), new: fields[5].parse().unwrap(), outcome: outcome(fields[6]) },
                other => panic!("operation {other:?}"),
            };
            Operation { client: fields[0].parse().unwrap(), invoked_at: fields[1].parse().unwrap(), completed_at: fields[2].parse().ok(), op }
        };
        lines.map(parse).collect()
    }

    /// Regression: seed 4001421 on five nodes. 19 operations on one key ended with an
    /// unknown outcome, and the check of its 113 operations ran past the 20 s bound. 18
    /// of them are writes nobody observed, left out of the first check now.
    #[test]
    fn unknown_writes_nobody_observed_do_not_explode_the_search() {
        let history = parse_history(include_str!("testdata/seed-4001421-key-2.txt"));
        assert_eq!(history.len(), 113);
        assert_eq!(check_key(history, BOUND), Ok(()));
    }

    /// Leaving unknown operations out never hides a violation: the stale read still fails.
    #[test]
    fn a_violation_is_found_with_unknown_writes_around() {
        let mut history = vec![op(0, Some(1), RegisterOp::Write(Some(1), Outcome::Ok))];
        history.extend((0..5).map(|n| op(2 + n, None, RegisterOp::Write(Some(100 + n as u32), Outcome::Unknown))));
        history.push(op(10, Some(11), RegisterOp::Read(None)));
        assert_eq!(check_key(history, BOUND), Err("history of 7 operations is not linearizable".to_string()));
    }

    /// A failed compare-and-set that only an unknown write nobody read can explain: the
    /// first check (without that write) fails, the check of everything passes.
    #[test]
    fn the_whole_history_is_checked_when_the_reduced_one_fails() {
        let history = vec![
            op(0, Some(1), RegisterOp::Write(Some(1), Outcome::Ok)),
            op(2, None, RegisterOp::Write(Some(5), Outcome::Unknown)),
            op(5, Some(6), RegisterOp::Cas { expected: Some(1), new: 9, outcome: Outcome::Failed }),
        ];
        assert_eq!(check_key(history, BOUND), Ok(()));
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
