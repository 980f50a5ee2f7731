//! The clients' history, checked for linearizability one key at a time with the
//! Wing–Gong–Lowe checker of `todc-utils` (which agrees with Porcupine on etcd's Jepsen
//! histories). Each key is a register.
//!
//! Each key's check runs under a budget of search steps, not a clock, so a history's verdict
//! is the same on every machine and every run: one step is one call of the register's
//! `apply`, which the checker makes once per operation it tries to place. Running out of
//! steps is its own verdict, "inconclusive": a failure to investigate, never a pass.

use std::cell::Cell;
use std::collections::BTreeMap;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

/// Steps a key's check may take by default. The largest histories the simulator and the
/// small Jepsen produce take a few hundred thousand (see `RunStats::check_steps`); the
/// history that once ran past the 20 s clock bound takes about 1.5 million.
pub const STEPS_MAX_DEFAULT: u64 = 50_000_000;

thread_local! {
    /// Steps left for the check running on this thread (the checker's `apply` is a plain
    /// function, so its budget lives beside it).
    static STEPS_LEFT: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// Takes one step from the budget; false once it is spent. The checker then finds no
/// operation it can place, backtracks to the start and answers "not linearizable", which
/// `run_checker` turns into "inconclusive".
fn take_step() -> bool {
    STEPS_LEFT.with(|left| match left.get() {
        0 => false,
        steps => {
            left.set(steps - 1);
            true
        }
    })
}

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
        if !take_step() {
            return (false, *state);
        }
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

    /// Checks every key, each under `steps_max`; the first key that fails is the error.
    pub fn check(&self, steps_max: u64) -> Result<Checked, CheckFailure> {
        let mut checked = Checked::default();
        for (key, operations) in &self.by_key {
            checked.steps += check_key(operations.clone(), steps_max).map_err(|failure| failure.for_key(key))?;
        }
        Ok(checked)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Search steps taken, over all keys.
    pub steps: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckFailure {
    NotLinearizable(String),
    /// The budget ran out before the search ended.
    Inconclusive(String),
}

impl CheckFailure {
    fn for_key(self, key: &str) -> CheckFailure {
        match self {
            CheckFailure::NotLinearizable(problem) => CheckFailure::NotLinearizable(format!("key {key:?}: {problem}")),
            CheckFailure::Inconclusive(problem) => CheckFailure::Inconclusive(format!("key {key:?}: {problem}")),
        }
    }
}

impl std::fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckFailure::NotLinearizable(problem) => write!(f, "not linearizable: {problem}"),
            CheckFailure::Inconclusive(problem) => write!(f, "inconclusive: {problem}"),
        }
    }
}

/// What one search found, and how many steps it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable(u64),
    NotLinearizable(u64),
    Inconclusive,
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

/// Checks one key within `steps_max` steps; returns the steps taken. Operations whose
/// outcome is unknown stay pending to the end of the history, so each may be placed
/// anywhere after its call: a few dozen of them make the search explode. The first check
/// therefore leaves out the unknown writes (and compare-and-sets) whose value no other
/// operation observed: a linearization of what is left is one of the whole history too,
/// with the operations left out placed last of all — which an unknown operation may always
/// be (it is concurrent with everything after its call, and it changes nothing anyone saw).
/// Only when that check fails is the whole history checked, with the steps left, so leaving
/// operations out never turns a pass into a failure or a failure into a pass.
fn check_key(operations: Vec<Operation>, steps_max: u64) -> Result<u64, CheckFailure> {
    if operations.is_empty() {
        return Ok(0);
    }
    let observed = observed_values(&operations);
    let seen = |op: &Operation| match op.op {
        RegisterOp::Write(Some(value), Outcome::Unknown) | RegisterOp::Cas { new: value, outcome: Outcome::Unknown, .. } => observed.contains(&value),
        _ => true,
    };
    let reduced: Vec<Operation> = operations.iter().filter(|op| seen(op)).cloned().collect();
    let mut spent = 0;
    if reduced.len() < operations.len() {
        match run_checker(reduced, steps_max) {
            Verdict::Linearizable(steps) => return Ok(steps),
            Verdict::NotLinearizable(steps) => spent = steps,
            Verdict::Inconclusive => spent = steps_max,
        }
    }
    let count = operations.len();
    match run_checker(operations, steps_max - spent) {
        Verdict::Linearizable(steps) => Ok(spent + steps),
        Verdict::NotLinearizable(_) => Err(CheckFailure::NotLinearizable(format!("history of {count} operations is not linearizable"))),
        Verdict::Inconclusive => Err(CheckFailure::Inconclusive(format!("the check of {count} operations took more than {steps_max} steps"))),
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

/// One search with `steps_max` steps, on this thread.
fn run_checker(operations: Vec<Operation>, steps_max: u64) -> Verdict {
    let history = History::from_actions(to_actions(&operations));
    STEPS_LEFT.with(|left| left.set(steps_max));
    let linearizable = WGLChecker::<KeyRegister>::is_linearizable(history);
    let steps = steps_max - STEPS_LEFT.with(|left| left.replace(u64::MAX));
    match (linearizable, steps < steps_max) {
        (true, _) => Verdict::Linearizable(steps),
        (false, true) => Verdict::NotLinearizable(steps),
        (false, false) => Verdict::Inconclusive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked_at: u64, completed_at: Option<u64>, op: RegisterOp) -> Operation {
        Operation { client: 0, invoked_at, completed_at, op }
    }

    const BOUND: u64 = STEPS_MAX_DEFAULT;

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
    /// unknown outcome, and the check of its 113 operations ran past the 20 s bound of the
    /// time. 18 of them are writes nobody observed, left out of the first check now. (The
    /// seed itself no longer produces this history since the simulator runs the production
    /// driver; the history is pinned here instead.)
    #[test]
    fn unknown_writes_nobody_observed_do_not_explode_the_search() {
        let history = parse_history(include_str!("testdata/seed-4001421-key-2.txt"));
        assert_eq!(history.len(), 113);
        let steps = check_key(history.clone(), BOUND).expect("linearizable");
        assert!(steps > 0 && steps < 1_000_000, "took {steps} steps");
        assert_eq!(check_key(history, BOUND), Ok(steps), "the same history takes the same steps");
    }

    /// Out of steps is "inconclusive", not "not linearizable", and never a pass: the same
    /// history with every operation kept, under a budget far below what it needs.
    #[test]
    fn a_spent_budget_is_inconclusive() {
        let history = parse_history(include_str!("testdata/seed-4001421-key-2.txt"));
        let failure = check_key(history, 50).expect_err("50 steps cannot place 113 operations");
        assert!(matches!(failure, CheckFailure::Inconclusive(_)), "{failure:?}");
    }

    /// Leaving unknown operations out never hides a violation: the stale read still fails.
    #[test]
    fn a_violation_is_found_with_unknown_writes_around() {
        let mut history = vec![op(0, Some(1), RegisterOp::Write(Some(1), Outcome::Ok))];
        history.extend((0..5).map(|n| op(2 + n, None, RegisterOp::Write(Some(100 + n as u32), Outcome::Unknown))));
        history.push(op(10, Some(11), RegisterOp::Read(None)));
        assert_eq!(check_key(history, BOUND), Err(CheckFailure::NotLinearizable("history of 7 operations is not linearizable".to_string())));
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
        assert!(check_key(history, BOUND).is_ok());
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
