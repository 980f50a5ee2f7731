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
