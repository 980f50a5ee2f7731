//! Every queue in the core has a limit (TIGER_STYLE); past it, requests are refused with an
//! error instead of growing memory without bound.

use keel_core::{Config, NodeId, ProposeError, RaftCore, ReadError, RestoredState, Role};

fn single_node_leader(configure: impl FnOnce(&mut Config)) -> RaftCore {
    let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
    configure(&mut config);
    let mut core = RaftCore::new(config, RestoredState::default());
    for _ in 0..40 {
        core.tick();
    }
    assert_eq!(core.role(), Role::Leader, "a one-node cluster elects itself");
    core
}

/// Carries out every Ready (nothing to persist or send in a one-node cluster) and collects
/// the answered reads.
fn run_readies(core: &mut RaftCore) -> Vec<u64> {
    let mut answered = Vec::new();
    while core.has_ready() {
        let ready = core.ready();
        answered.extend(ready.read_states.iter().filter(|state| state.result.is_ok()).map(|state| state.request_id));
        core.advance(ready);
    }
    answered
}

#[test]
fn pending_reads_are_bounded() {
    let mut core = single_node_leader(|config| config.read_requests_max = 2);
    assert_eq!(core.read_index(1), Ok(()));
    assert_eq!(core.read_index(2), Ok(()));
    assert_eq!(core.read_index(3), Err(ReadError::TooManyPending));
    let mut answered = run_readies(&mut core);
    answered.sort();
    assert_eq!(answered, vec![1, 2]);
    assert_eq!(core.read_index(4), Ok(()), "answered reads free their places");
}

#[test]
fn uncommitted_entries_are_bounded() {
    let mut core = single_node_leader(|config| config.uncommitted_entries_max = 3);
    // The leader's no-op is the first uncommitted entry.
    assert!(core.propose(b"a".to_vec()).is_ok());
    assert!(core.propose(b"b".to_vec()).is_ok());
    assert_eq!(core.propose(b"c".to_vec()), Err(ProposeError::TooManyUncommitted));
    run_readies(&mut core);
    assert!(core.propose(b"c".to_vec()).is_ok(), "committing frees room");
}

/// Bytes too: the commands of uncommitted entries may not pass `uncommitted_bytes_max`, but
/// one proposal always gets in while nothing is uncommitted, however large it is.
#[test]
fn uncommitted_bytes_are_bounded() {
    let mut core = single_node_leader(|config| config.uncommitted_bytes_max = 10);
    run_readies(&mut core); // The no-op commits; it counts for nothing.
    assert!(core.propose(vec![0; 6]).is_ok());
    assert_eq!(core.propose(vec![0; 6]), Err(ProposeError::TooManyUncommitted), "6 + 6 > 10");
    assert!(core.propose(vec![0; 4]).is_ok(), "6 + 4 = 10 fits");
    run_readies(&mut core);
    assert!(core.propose(vec![0; 50]).is_ok(), "nothing uncommitted: a command over the limit still moves");
    assert_eq!(core.propose(vec![0; 1]), Err(ProposeError::TooManyUncommitted));
    run_readies(&mut core);
    assert!(core.propose(vec![0; 1]).is_ok(), "committing frees the bytes");
}

/// A Ready hands out at most `committed_bytes_per_ready_max` bytes of committed entries (at
/// least one entry, so a large one still moves) and `committed_entries_per_ready_max`
/// entries.
#[test]
fn committed_entries_per_ready_are_bounded_in_bytes_and_count() {
    let mut core = single_node_leader(|config| {
        config.committed_bytes_per_ready_max = 100;
        config.committed_entries_per_ready_max = 3;
    });
    run_readies(&mut core);
    for _ in 0..4 {
        core.propose(vec![0; 40]).unwrap(); // 64 bytes each, counting the entry's header.
    }
    for _ in 0..6 {
        core.propose(vec![]).unwrap(); // 24 bytes each.
    }
    let mut batches = Vec::new();
    while core.has_ready() {
        let ready = core.ready();
        if !ready.committed_entries.is_empty() {
            batches.push(ready.committed_entries.iter().map(|entry| entry.size_bytes()).collect::<Vec<_>>());
        }
        core.advance(ready);
    }
    assert_eq!(batches, vec![vec![64], vec![64], vec![64], vec![64, 24], vec![24, 24, 24], vec![24, 24]]);
}

/// Every limit is checked at start, by name.
#[test]
fn a_zero_limit_is_refused_by_name() {
    let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
    config.committed_bytes_per_ready_max = 0;
    assert_eq!(config.validate(), Err("committed_bytes_per_ready_max must be at least 1".to_string()));
    let mut config = Config::new(NodeId(1), vec![NodeId(1)]);
    config.snapshot_bytes_max = 0;
    assert_eq!(config.validate(), Err("snapshot_bytes_max must be at least 1".to_string()));
}
