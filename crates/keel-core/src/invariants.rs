//! Assertions run after every input in debug builds (TigerBeetle style): a violated
//! invariant is a programmer error and stops the process at the line that broke it.
//! Cross-node properties (Election Safety, Log Matching, ...) are checked by `keel-sim`.

use crate::raft::RaftCore;
use crate::types::{LogIndex, Role, Term};

/// Values that may only grow; remembered to compare against after the next input.
#[derive(Debug, Default, Clone, Copy)]
pub struct Monotonic {
    term: Term,
    commit_index: LogIndex,
    applied_index: LogIndex,
}

impl RaftCore {
    pub(crate) fn check_invariants(&mut self) {
        if !cfg!(any(debug_assertions, feature = "invariants")) {
            return;
        }
        let commit_index = self.log.commit_index();
        assert!(self.current_term >= self.monotonic.term, "term went backwards");
        assert!(commit_index >= self.monotonic.commit_index, "commit index went backwards");
        assert!(self.applied_index >= self.monotonic.applied_index, "applied index went backwards");
        assert!(commit_index <= self.log.last_index(), "commit index beyond the log");
        assert!(self.applied_index <= commit_index, "applied beyond commit");
        assert!(self.applied_handed <= commit_index.max(self.applied_index), "handed out uncommitted entries");
        assert!(self.log.last_term() <= self.current_term, "log holds an entry from a future term");
        assert!(self.log.persisted_index() <= self.log.last_index(), "persisted beyond the log");
        if self.role == Role::Leader {
            assert_eq!(self.leader_id, Some(self.id), "a leader names itself leader");
            assert_eq!(self.voted_for, Some(self.id), "a leader voted for itself in its term");
        }
        self.monotonic = Monotonic { term: self.current_term, commit_index, applied_index: self.applied_index };
    }
}
