//! Exact scenario tests of membership changes (Raft thesis ch. 4) and leadership transfer
//! (§3.10), one rule per test, through the same harness as `paper_scenarios.rs`.

mod common;

use common::*;
use keel_core::{LogIndex, Membership, MembershipChange, MembershipError, MessageBody, NodeId, ProposeError, Role, Term, TransferError};
use std::collections::BTreeSet;

fn ids(list: &[u64]) -> BTreeSet<NodeId> {
    list.iter().map(|id| NodeId(*id)).collect()
}

/// Nodes 1–3, node 1 leading term 1 with its no-op committed everywhere. The leader syncs
/// its own writes at once, so a majority is just the acknowledgements a test delivers.
fn three_nodes() -> Cluster {
    let mut cluster = Cluster::with(3, |config| config.defer_leader_sync = false);
    cluster.elect(1);
    cluster.stabilize();
    cluster
}

/// Adds node `id` as a learner and lets it catch up.
fn add_learner(cluster: &mut Cluster, id: u64) {
    cluster.add_node(id, |config| config.defer_leader_sync = false);
    cluster.core_mut(1).propose_membership(MembershipChange::add_learner(NodeId(id))).expect("the leader takes the change");
    cluster.process(1);
    cluster.stabilize();
    let heartbeat_ticks = cluster.node(1).config.heartbeat_interval_ticks;
    cluster.ticks(1, heartbeat_ticks); // The learner's answers reach the leader: it is recent.
    cluster.stabilize();
}

/// Thesis §4.2.1 and §4.1: a learner receives the log and takes the configuration that
/// names it from the moment it appends it; it votes for no one and campaigns for nothing.
#[test]
fn a_learner_catches_up_and_never_campaigns() {
    let mut cluster = three_nodes();
    add_learner(&mut cluster, 4);
    let expected = Membership { voters: ids(&[1, 2, 3]), learners: ids(&[4]), ..Membership::default() };
    for id in 1..=4 {
        assert_eq!(cluster.core(id).membership(), &expected, "node {id}");
    }
    assert_eq!(cluster.log(4), cluster.log(1), "the learner holds the leader's log");
    cluster.ticks(4, 200);
    assert_eq!(cluster.core(4).role(), Role::Follower, "a learner never campaigns");
    assert!(cluster.in_flight(4, 1).is_empty() && cluster.in_flight(4, 2).is_empty(), "nor asks for votes");
}

/// Thesis §4.1: a configuration takes effect when appended, not when committed — and a
/// configuration entry a new leader overwrites gives way to the one before it. Five nodes:
/// node 2 appends the entry, the three that lack it elect node 3, whose log replaces it.
#[test]
fn a_configuration_takes_effect_on_append_and_falls_back_when_overwritten() {
    // Without CheckQuorum's lease, nodes 4 and 5 answer node 3 at once instead of ignoring
    // it for an election timeout after node 1 fell silent (thesis §4.2.3).
    let mut cluster = Cluster::with(5, |config| {
        config.defer_leader_sync = false;
        config.check_quorum = false;
    });
    cluster.elect(1);
    cluster.stabilize();
    cluster.add_node(6, |_| {});
    cluster.core_mut(1).propose_membership(MembershipChange::add_learner(NodeId(6))).unwrap();
    cluster.process(1);
    assert!(cluster.core(1).membership().is_learner(NodeId(6)), "in force on the leader at once");
    cluster.deliver(1, 2);
    assert!(cluster.core(2).membership().is_learner(NodeId(6)), "in force on node 2 as it appends it");
    assert_eq!(cluster.core(2).status().commit_index, LogIndex(1), "and not committed");

    // Everything else node 1 sent is lost; cut off, it can commit nothing more.
    for to in 2..=6 {
        cluster.take_in_flight(1, to);
    }
    cluster.take_in_flight(2, 1);
    cluster.isolate(1);
    cluster.elect(3); // With the votes of 4 and 5, whose logs are as long as its own.
    cluster.stabilize();
    let five = Membership::with_voters((1..=5).map(NodeId));
    assert_eq!(cluster.core(2).membership(), &five, "the overwritten configuration is gone, the one before it in force again");
    assert_ne!(cluster.log(2)[1].kind, cluster.log(1)[1].kind, "index 2 now holds node 3's entry");
}

/// The known flaw of single-server changes (Ongaro, raft-dev 2015): a leader proposes a
/// change only once an entry of its own term has committed; and one change at a time.
#[test]
fn a_change_waits_for_the_leaders_first_commit_and_for_the_last_change() {
    let mut cluster = Cluster::with(3, |config| config.defer_leader_sync = false);
    cluster.elect(1);
    let refused = cluster.core_mut(1).propose_membership(MembershipChange::add_learner(NodeId(4)));
    assert_eq!(refused, Err(MembershipError::NoCommitInTerm), "the no-op has not committed yet");
    cluster.stabilize();
    assert_eq!(cluster.core_mut(1).propose_membership(MembershipChange::add_learner(NodeId(4))), Ok((LogIndex(2), Term(1))));
    let second = cluster.core_mut(1).propose_membership(MembershipChange::add_learner(NodeId(5)));
    assert_eq!(second, Err(MembershipError::ChangeInProgress), "the first is not committed");
    let on_follower = cluster.core_mut(2).propose_membership(MembershipChange::add_learner(NodeId(5)));
    assert_eq!(on_follower, Err(MembershipError::NotLeader { leader_hint: Some(NodeId(1)) }));
}

/// Thesis §4.2.1: a learner that has not caught up is not promoted: every commit would
/// wait for it. Once it has, it is.
#[test]
fn a_lagging_learners_promotion_is_refused() {
    let mut cluster = three_nodes();
    cluster.add_node(4, |config| config.defer_leader_sync = false);
    cluster.isolate(4);
    cluster.core_mut(1).propose_membership(MembershipChange::add_learner(NodeId(4))).unwrap();
    cluster.process(1);
    cluster.stabilize();
    let refused = cluster.core_mut(1).propose_membership(MembershipChange::Promote(NodeId(4)));
    assert_eq!(refused, Err(MembershipError::LearnerBehind { id: NodeId(4), match_index: LogIndex(0), last_index: LogIndex(2) }));

    cluster.heal();
    let heartbeat_ticks = cluster.node(1).config.heartbeat_interval_ticks;
    for _ in 0..3 {
        cluster.ticks(1, heartbeat_ticks);
        cluster.stabilize();
    }
    assert_eq!(cluster.log(4), cluster.log(1), "caught up");
    let promoted = cluster.core_mut(1).propose_membership(MembershipChange::Promote(NodeId(4)));
    assert_eq!(promoted, Ok((LogIndex(3), Term(1))));
    let joint = cluster.core(1).membership();
    assert_eq!((joint.voters.clone(), joint.voters_outgoing.clone()), (ids(&[1, 2, 3, 4]), ids(&[1, 2, 3])), "C_old,new (§4.3)");
}

/// Thesis §4.3: in the joint configuration an entry commits only with a majority of C_old
/// *and* of C_new. Here C_old = {1, 2, 3}, C_new = {1, 2, 4}: node 4's acknowledgement
/// makes a majority of C_new with the leader's, not of C_old; node 3's then completes it.
#[test]
fn in_the_joint_phase_an_entry_commits_only_with_both_majorities() {
    let mut cluster = three_nodes();
    add_learner(&mut cluster, 4);
    cluster.core_mut(1).propose_membership(MembershipChange::Replace { remove: NodeId(3), promote: NodeId(4) }).expect("4 caught up");
    let joint = cluster.process(1).expect("the joint entry and its AppendEntries");
    let joint_index = joint.entries[0].index;
    assert_eq!(cluster.core(1).membership().voters_outgoing, ids(&[1, 2, 3]));

    let committed_before = cluster.core(1).status().commit_index;
    cluster.take_in_flight(1, 2); // Node 2 hears nothing for now.
    cluster.deliver(1, 4);
    cluster.deliver(4, 1);
    assert_eq!(cluster.core(1).status().commit_index, committed_before, "leader and node 4 are a majority of C_new only");
    cluster.deliver(1, 3);
    let ready = cluster.deliver(3, 1).expect("the commit");
    assert_eq!(ready.hard_state.map(|hard_state| hard_state.commit_index), Some(joint_index), "with node 3, C_old's majority too");
    // The leader leaves the joint configuration by itself once C_old,new commits (§4.3).
    assert_eq!(ready.entries.len(), 1, "C_new appended: {ready:?}");
    assert_eq!(cluster.core(1).membership(), &Membership::with_voters([NodeId(1), NodeId(2), NodeId(4)]));
    cluster.heal();
    cluster.stabilize();
    for _ in 0..3 {
        cluster.tick_all();
        cluster.stabilize();
    }
    for id in [1, 2, 4] {
        assert_eq!(cluster.core(id).membership(), &Membership::with_voters([NodeId(1), NodeId(2), NodeId(4)]), "node {id}");
    }
}

/// The same interleaving with the rule broken (commit with C_new's majority alone): the
/// entry commits on node 4's acknowledgement — the step the test above asserts does not.
#[cfg(feature = "fault-injection")]
#[test]
fn joint_scenario_notices_commit_with_the_new_majority_alone() {
    let mut cluster = three_nodes();
    add_learner(&mut cluster, 4);
    cluster.core_mut(1).faults.commit_with_new_voters_only = true;
    cluster.core_mut(1).propose_membership(MembershipChange::Replace { remove: NodeId(3), promote: NodeId(4) }).unwrap();
    let joint_index = cluster.process(1).expect("the joint entry").entries[0].index;
    cluster.take_in_flight(1, 2);
    cluster.deliver(1, 4);
    cluster.deliver(4, 1);
    assert!(cluster.core(1).status().commit_index >= joint_index, "the broken rule commits with C_new alone");
}

/// Thesis §4.2.2: a leader removed from the configuration leads until C_new commits —
/// counting itself in no majority of C_new — then steps down, and never campaigns again.
#[test]
fn a_removed_leader_steps_down_once_the_new_configuration_commits() {
    let mut cluster = three_nodes();
    cluster.core_mut(1).propose_membership(MembershipChange::Remove(NodeId(1))).unwrap();
    cluster.process(1);
    let joint = cluster.core(1).membership().clone();
    assert_eq!((joint.voters.clone(), joint.voters_outgoing.clone()), (ids(&[2, 3]), ids(&[1, 2, 3])));
    cluster.stabilize(); // C_old,new commits; the leader appends C_new = {2, 3} and sends it.
    assert_eq!(cluster.core(1).membership(), &Membership::with_voters([NodeId(2), NodeId(3)]));
    assert_eq!(cluster.core(1).role(), Role::Follower, "stepped down once C_new committed");
    let term = cluster.core(1).current_term();
    cluster.ticks(1, 200);
    assert_eq!((cluster.core(1).role(), cluster.core(1).current_term()), (Role::Follower, term), "a removed node never campaigns");
    // The remaining voters elect a leader among themselves, once node 1's lease is over.
    for _ in 0..100 {
        if !cluster.leaders().is_empty() {
            break;
        }
        cluster.tick(2);
        cluster.tick(3);
        cluster.stabilize();
    }
    let leaders = cluster.leaders();
    assert!(leaders == vec![2] || leaders == vec![3], "{leaders:?}");
    cluster.tick(leaders[0]);
    assert!(cluster.in_flight(leaders[0], 1).is_empty(), "the new leader sends nothing to the removed node");
}

/// A removed follower receives C_new before the leader lets it go: the leader replicates
/// to the committed configuration's members as well as the one in force. Regression: the
/// leader dropped node 3 the moment it appended C_new, so node 3 stayed in C_old,new for
/// good, never learning it was out (found running `keel member remove` on a live cluster).
#[test]
fn a_removed_follower_sees_the_configuration_that_leaves_it_out() {
    let mut cluster = three_nodes();
    let (joint_index, _) = cluster.core_mut(1).propose_membership(MembershipChange::Remove(NodeId(3))).unwrap();
    cluster.process(1);
    cluster.stabilize(); // C_old,new commits; the leader appends C_new = {1, 2}.
    let c_new = Membership::with_voters([NodeId(1), NodeId(2)]);
    assert_eq!(cluster.core(1).membership(), &c_new);
    assert!(cluster.core(1).status().commit_index > joint_index, "C_new committed");
    assert_eq!(cluster.core(3).membership(), &c_new, "node 3 appended C_new, so it knows it is out");
    let heartbeat_ticks = cluster.node(1).config.heartbeat_interval_ticks;
    cluster.ticks(1, heartbeat_ticks);
    assert!(cluster.in_flight(1, 3).is_empty(), "once C_new commits, the leader sends node 3 nothing more");
}

/// Thesis §3.10: the leader brings the target up to date, stops taking proposals and sends
/// TimeoutNow; the target campaigns at once (no PreVote), saying the leader asked, and wins.
#[test]
fn a_transfer_sends_timeout_now_and_the_target_takes_over() {
    let mut cluster = three_nodes();
    cluster.core_mut(1).transfer_leadership(NodeId(2)).expect("2 is a voter");
    let ready = cluster.process(1).expect("TimeoutNow");
    assert_eq!(ready.messages, vec![message(1, 2, 1, MessageBody::TimeoutNow)], "node 2 holds the whole log already");
    assert_eq!(cluster.core_mut(1).propose(b"x".to_vec()), Err(ProposeError::TransferInProgress));
    assert_eq!(cluster.core_mut(1).transfer_leadership(NodeId(3)), Err(TransferError::InProgress { target: NodeId(2) }));

    let ready = cluster.deliver(1, 2).expect("the campaign");
    assert_eq!(ready.persisted_messages, vec![message(2, 1, 2, transfer_vote(1, 1)), message(2, 3, 2, transfer_vote(1, 1))], "no PreVote");
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![2]);
    assert_eq!(cluster.core(1).role(), Role::Follower);
}

/// Thesis §3.10, step 4: a transfer that brings no new leader within an election timeout
/// is abandoned, and the leader takes proposals again.
#[test]
fn a_transfer_that_goes_nowhere_is_abandoned_after_an_election_timeout() {
    let mut cluster = three_nodes();
    cluster.isolate(3);
    cluster.core_mut(1).transfer_leadership(NodeId(3)).unwrap();
    cluster.process(1);
    cluster.stabilize(); // The TimeoutNow to node 3 is lost.
    assert_eq!(cluster.core(1).transfer_target(), Some(NodeId(3)));
    let timeout_ticks = cluster.node(1).config.election_timeout_ticks_min;
    cluster.ticks(1, timeout_ticks - 1);
    assert_eq!(cluster.core_mut(1).propose(b"x".to_vec()), Err(ProposeError::TransferInProgress));
    cluster.tick(1);
    assert_eq!(cluster.core(1).transfer_target(), None, "abandoned");
    assert!(cluster.core_mut(1).propose(b"x".to_vec()).is_ok(), "proposals resume");
    assert_eq!(cluster.leaders(), vec![1]);
}

/// Thesis §4.2.3: a node removed from the cluster that never heard of its removal cannot
/// disrupt it: its RequestVotes come from a stranger, and are refused.
#[test]
fn a_removed_node_cannot_disrupt_the_cluster() {
    let mut cluster = three_nodes();
    cluster.isolate(3); // Node 3 never hears that it is removed.
    cluster.core_mut(1).propose_membership(MembershipChange::Remove(NodeId(3))).unwrap();
    cluster.process(1);
    cluster.stabilize();
    let heartbeat_ticks = cluster.node(1).config.heartbeat_interval_ticks;
    cluster.ticks(1, heartbeat_ticks);
    cluster.stabilize();
    assert_eq!(cluster.core(1).membership(), &Membership::with_voters([NodeId(1), NodeId(2)]));
    // Node 3 times out and asks for votes with an ever higher term.
    for _ in 0..3 {
        cluster.tick_until_ready(3);
    }
    cluster.heal();
    let term = cluster.core(1).current_term();
    for message in cluster.take_in_flight(3, 1).into_iter().chain(cluster.take_in_flight(3, 2)) {
        let to = message.to.0;
        assert_eq!(cluster.core_mut(to).step(message), Err(keel_core::StepError::UnknownNode(NodeId(3))));
    }
    assert_eq!((cluster.leaders(), cluster.core(1).current_term()), (vec![1], term), "leader and term unchanged");
}

/// Thesis §4.1 on restart: the configuration comes back from the snapshot (and the log
/// after it); a snapshot written before keel had membership changes carries none, and the
/// node takes its bootstrap members.
#[test]
fn a_restarted_node_takes_its_configuration_from_its_snapshot() {
    use keel_core::{Config, RaftCore, RestoredState, Snapshot, SnapshotMeta};
    let config = Config::new(NodeId(2), vec![NodeId(1), NodeId(2), NodeId(3)]);
    let grown = Membership { voters: ids(&[1, 2, 3, 4]), learners: ids(&[5]), ..Membership::default() };
    let restored = |membership: Membership| RestoredState { snapshot: Some(Snapshot { meta: SnapshotMeta::of_image(LogIndex(9), Term(2), b"abc"), membership }), ..RestoredState::default() };
    assert_eq!(RaftCore::new(config.clone(), restored(grown.clone())).membership(), &grown);
    assert_eq!(RaftCore::new(config.clone(), restored(Membership::default())).membership(), &config.bootstrap_membership());
}

/// Regression (simulator seed 25 on three nodes, which found it): a follower whose log lags
/// behind a membership change does not know the leader a later configuration made, and
/// refused its AppendEntries as a stranger's — for good, since only that leader's log could
/// tell it. A leader's messages are taken from any node; votes and answers are not.
#[test]
fn a_lagging_follower_takes_the_log_from_a_leader_it_does_not_know_yet() {
    let mut cluster = three_nodes();
    cluster.isolate(3);
    add_learner(&mut cluster, 4);
    cluster.core_mut(1).propose_membership(MembershipChange::Promote(NodeId(4))).unwrap();
    cluster.process(1);
    for _ in 0..3 {
        cluster.tick(1);
        cluster.stabilize();
    }
    assert!(!cluster.core(1).membership().is_joint(), "C_new committed with nodes 1, 2 and 4");
    // Node 4 leads a later term; node 3 has never heard of it.
    cluster.core_mut(1).transfer_leadership(NodeId(4)).unwrap();
    cluster.process(1);
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![4]);
    assert!(!cluster.core(3).membership().is_member(NodeId(4)));
    cluster.heal();
    let heartbeat_ticks = cluster.node(4).config.heartbeat_interval_ticks;
    for _ in 0..5 {
        cluster.ticks(4, heartbeat_ticks);
        cluster.stabilize();
    }
    assert_eq!(cluster.log(3), cluster.log(4), "node 3 caught up from a leader it did not know");
    assert_eq!(cluster.core(3).leader_id(), Some(NodeId(4)));
}
