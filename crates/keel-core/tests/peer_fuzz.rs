//! No input from the network can panic a node or break its own invariants.
//!
//! A live three-node cluster (the harness of the scenario tests, driven by the contract)
//! runs its normal traffic — ticks, deliveries in any order, losses, proposals, compactions —
//! while arbitrary messages are stepped into its nodes: messages in flight with one field
//! changed, and messages made up whole (terms and indexes small, near the limits and beyond
//! them; entries in and out of order; snapshot chunks that fit and that do not; images whose
//! checksum holds and that do not). Every `step` must return `Ok` or a `StepError`, never
//! panic; after every action each node's invariants hold (the core checks its own after
//! every input in debug builds, and the harness checks that storage holds exactly the log
//! the core believes durable and that entries are applied once each, in order).
//!
//! What is *not* checked is agreement between nodes: Raft assumes peers that follow the
//! protocol, and a made-up message from a member can make nodes disagree. Surviving it is
//! this test's promise; the simulator checks agreement among correct peers.
//!
//! Deterministic: proptest with a fixed seed, no failure files. `KEEL_FUZZ_CASES=N` runs N
//! cases (default 300); the test prints how many actions and messages it ran.

mod common;

use common::Cluster;
use keel_core::{AppendResult, Entry, EntryKind, LogIndex, Membership, Message, MessageBody, NodeId, SnapshotMeta, Term};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::cell::Cell;

#[derive(Clone, Debug)]
enum Action {
    Tick(u64),
    /// Delivers the message in flight at this position (modulo how many there are).
    Deliver(usize),
    Drop(usize),
    Propose(u64),
    Compact(u64),
    /// Steps a copy of a message in flight, with one field changed.
    Mutate(usize, Mutation),
    /// Steps a made-up message from `from` to `to`.
    Inject { from: u64, to: u64, term: u64, body: MessageBody },
}

#[derive(Clone, Debug)]
enum Mutation {
    Term(u64),
    /// Every log index the body names.
    Index(u64),
    /// Every entry's term, or a snapshot's last included term.
    EntryTerm(u64),
    ReadRound(u64),
    /// A snapshot chunk's offset, or an answer's next offset.
    Offset(u64),
    DropFirstEntry,
    FlipData(usize),
    ToOther(u64),
}

/// Mostly small values, where the protocol's checks bite, and sometimes the edges.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![10 => 0u64..8, 1 => Just(LogIndex::MAX.0), 1 => Just(LogIndex::MAX.0 + 1), 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1), 1 => any::<u64>()]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    let consecutive = (number(), 1u64..4, 1u64..4).prop_map(|(first, count, term)| {
        (0..count).map(|offset| Entry { term: Term(term), index: LogIndex(first.saturating_add(offset)), kind: EntryKind::Command(vec![b'f'].into()) }).collect()
    });
    let kind = prop_oneof![4 => Just(EntryKind::Noop), 1 => membership().prop_map(EntryKind::Config)];
    let scattered = prop::collection::vec((number(), number(), kind), 0..4).prop_map(|triples| triples.into_iter().map(|(index, term, kind)| Entry { term: Term(term), index: LogIndex(index), kind }).collect());
    prop_oneof![consecutive, scattered]
}

/// Configurations well formed and not: small ids, sets that may overlap or be empty.
fn membership() -> impl Strategy<Value = Membership> {
    let set = || prop::collection::btree_set((0u64..6).prop_map(NodeId), 0..4);
    (set(), set(), set()).prop_map(|(voters, voters_outgoing, learners)| Membership { voters, voters_outgoing, learners, ..Membership::default() })
}

fn snapshot_meta() -> impl Strategy<Value = SnapshotMeta> {
    (number(), number(), 0u64..16, any::<u32>())
        .prop_map(|(index, term, data_bytes, data_crc32c)| SnapshotMeta { last_included_index: LogIndex(index), last_included_term: Term(term), data_bytes, data_crc32c })
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<bool>(), number(), number(), any::<bool>()).prop_map(|(pre_vote, index, term, leadership_transfer)| MessageBody::RequestVote {
            pre_vote,
            last_log_index: LogIndex(index),
            last_log_term: Term(term),
            leadership_transfer
        }),
        Just(MessageBody::TimeoutNow),
        (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, vote_granted)| MessageBody::RequestVoteResponse { pre_vote, vote_granted }),
        (number(), number(), entries(), number(), number()).prop_map(|(prev, prev_term, entries, commit, read_round)| MessageBody::AppendEntries {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(prev_term),
            entries,
            leader_commit: LogIndex(commit),
            read_round,
        }),
        // Well formed, so it passes the shape check and reaches the log: entries that run on
        // from `prev`, terms from `prev`'s on.
        (0u64..10, 1u64..4, 0u64..4, 0u64..12).prop_map(|(prev, term, count, commit)| {
            let prev_log_term = if prev == 0 { Term(0) } else { Term(term) };
            let entries = (1..=count).map(|offset| Entry { term: Term(term + offset / 2), index: LogIndex(prev + offset), kind: EntryKind::Command(vec![b'w'].into()) }).collect();
            MessageBody::AppendEntries { prev_log_index: LogIndex(prev), prev_log_term, entries, leader_commit: LogIndex(commit), read_round: 0 }
        }),
        (number(), number()).prop_map(|(match_index, read_round)| MessageBody::AppendEntriesResponse { result: AppendResult::Success { match_index: LogIndex(match_index) }, read_round }),
        (number(), prop::option::of(number()), number(), number()).prop_map(|(rejected, term, conflict, read_round)| MessageBody::AppendEntriesResponse {
            result: AppendResult::Conflict { rejected_index: LogIndex(rejected), conflict_term: term.map(Term), conflict_index: LogIndex(conflict) },
            read_round,
        }),
        (snapshot_meta(), membership(), number(), prop::collection::vec(any::<u8>(), 0..8), any::<bool>(), number())
            .prop_map(|(meta, membership, offset, data, done, read_round)| MessageBody::InstallSnapshot { meta, membership, offset, data, done, read_round }),
        // A whole image whose checksum holds: the install path itself.
        (1u64..12, 1u64..4, membership(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(index, term, membership, data)| {
            let meta = SnapshotMeta::of_image(LogIndex(index), Term(term), &data);
            MessageBody::InstallSnapshot { meta, membership, offset: 0, data, done: true, read_round: 0 }
        }),
        (snapshot_meta(), number(), any::<bool>(), number()).prop_map(|(meta, next_offset, done, read_round)| MessageBody::InstallSnapshotResponse { meta, next_offset, done, read_round }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        number().prop_map(Mutation::Term),
        number().prop_map(Mutation::Index),
        number().prop_map(Mutation::EntryTerm),
        number().prop_map(Mutation::ReadRound),
        number().prop_map(Mutation::Offset),
        Just(Mutation::DropFirstEntry),
        any::<usize>().prop_map(Mutation::FlipData),
        (1u64..=3).prop_map(Mutation::ToOther),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (1u64..=3).prop_map(Action::Tick),
        16 => any::<usize>().prop_map(Action::Deliver),
        2 => any::<usize>().prop_map(Action::Drop),
        4 => (1u64..=3).prop_map(Action::Propose),
        1 => (1u64..=3).prop_map(Action::Compact),
        4 => (any::<usize>(), mutation()).prop_map(|(at, mutation)| Action::Mutate(at, mutation)),
        4 => (1u64..=3, 1u64..=3, number(), body()).prop_map(|(from, to, term, body)| Action::Inject { from, to, term, body }),
    ]
}

fn mutate(mut message: Message, mutation: &Mutation) -> Message {
    match (mutation, &mut message.body) {
        (Mutation::Term(term), _) => message.term = Term(*term),
        (Mutation::ToOther(id), _) => message.from = NodeId(*id),
        (Mutation::Index(index), MessageBody::AppendEntries { prev_log_index, entries, .. }) => {
            *prev_log_index = LogIndex(*index);
            entries.iter_mut().for_each(|entry| entry.index = LogIndex(*index));
        }
        (Mutation::Index(index), MessageBody::RequestVote { last_log_index, .. }) => *last_log_index = LogIndex(*index),
        (Mutation::Index(index), MessageBody::AppendEntriesResponse { result: AppendResult::Success { match_index }, .. }) => *match_index = LogIndex(*index),
        (Mutation::Index(index), MessageBody::AppendEntriesResponse { result: AppendResult::Conflict { rejected_index, conflict_index, .. }, .. }) => {
            *rejected_index = LogIndex(*index);
            *conflict_index = LogIndex(index / 2);
        }
        (Mutation::Index(index), MessageBody::InstallSnapshot { meta, .. } | MessageBody::InstallSnapshotResponse { meta, .. }) => meta.last_included_index = LogIndex(*index),
        (Mutation::EntryTerm(term), MessageBody::AppendEntries { entries, prev_log_term, .. }) => {
            *prev_log_term = Term(*term);
            entries.iter_mut().for_each(|entry| entry.term = Term(*term));
        }
        (Mutation::EntryTerm(term), MessageBody::InstallSnapshot { meta, .. }) => meta.last_included_term = Term(*term),
        (Mutation::ReadRound(round), MessageBody::AppendEntries { read_round, .. } | MessageBody::AppendEntriesResponse { read_round, .. } | MessageBody::InstallSnapshot { read_round, .. } | MessageBody::InstallSnapshotResponse { read_round, .. }) => {
            *read_round = *round
        }
        (Mutation::Offset(offset), MessageBody::InstallSnapshot { offset: at, .. }) => *at = *offset,
        (Mutation::Offset(offset), MessageBody::InstallSnapshotResponse { next_offset, .. }) => *next_offset = *offset,
        (Mutation::DropFirstEntry, MessageBody::AppendEntries { entries, .. }) if !entries.is_empty() => {
            entries.remove(0);
        }
        (Mutation::FlipData(at), MessageBody::InstallSnapshot { data, .. }) if !data.is_empty() => {
            let at = at % data.len();
            data[at] ^= 0x55;
        }
        _ => message.term = Term(message.term.0.wrapping_add(1)),
    }
    message
}

#[derive(Default)]
struct Counts {
    actions: Cell<u64>,
    stepped: Cell<u64>,
    refused: Cell<u64>,
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// Steps a message the test made; a refusal is fine, a panic fails the case.
fn step_arbitrary(cluster: &mut Cluster, message: Message, counts: &Counts) {
    let to = message.to.0;
    bump(&counts.stepped);
    if cluster.core_mut(to).step(message).is_err() {
        bump(&counts.refused);
    }
    cluster.process(to);
}

fn run(actions: &[Action], counts: &Counts) {
    let mut cluster = Cluster::with(3, |config| {
        config.snapshot_chunk_bytes_max = 4;
        config.snapshot_bytes_max = 12;
        config.inflight_messages_max = 2;
    });
    // Start from a working cluster, so real traffic flows around the made-up messages.
    cluster.elect(1);
    cluster.stabilize();
    for action in actions {
        bump(&counts.actions);
        match action {
            Action::Tick(id) => {
                cluster.tick(*id);
            }
            Action::Deliver(at) => {
                // Real traffic, but after a made-up message even a real one may be refused
                // (a node pushed to `Term::MAX` asks for votes in a term no one accepts).
                if let Some(message) = cluster.take_in_flight_at(*at) {
                    step_arbitrary(&mut cluster, message, counts);
                }
            }
            Action::Drop(at) => {
                cluster.take_in_flight_at(*at);
            }
            Action::Propose(id) => {
                if cluster.core(*id).role() == keel_core::Role::Leader {
                    let _ = cluster.core_mut(*id).propose(b"p".to_vec());
                    cluster.process(*id);
                }
            }
            Action::Compact(id) => {
                let node = cluster.node(*id);
                if node.state_machine.applied_index > cluster.core(*id).status().snapshot_index {
                    cluster.compact(*id);
                }
            }
            Action::Mutate(at, mutation) => {
                if let Some(message) = cluster.in_flight_at(*at) {
                    step_arbitrary(&mut cluster, mutate(message, mutation), counts);
                }
            }
            Action::Inject { from, to, term, body } => {
                let message = Message { from: NodeId(*from), to: NodeId(*to), term: Term(*term), body: body.clone() };
                step_arbitrary(&mut cluster, message, counts);
            }
        }
        for id in 1..=3 {
            while cluster.process(id).is_some() {} // An advance can make more work.
            cluster.assert_disk_matches_core(id);
        }
    }
}

#[test]
fn arbitrary_peer_messages_never_panic_a_node_nor_break_its_invariants() {
    let cases = std::env::var("KEEL_FUZZ_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(300);
    let config = Config { cases, failure_persistence: None, rng_algorithm: RngAlgorithm::ChaCha, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]));
    let counts = Counts::default();
    let result = runner.run(&prop::collection::vec(action(), 1..250), |actions| {
        run(&actions, &counts);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (actions, stepped, refused) = (counts.actions.get(), counts.stepped.get(), counts.refused.get());
    println!("peer fuzz: {cases} cases, {actions} actions, {stepped} messages stepped ({refused} refused), no panic, every invariant held");
    let cases = u64::from(cases);
    assert!(refused > cases && stepped - refused > 10 * cases, "the cases exercised too little: {stepped} stepped, {refused} refused");
}
