//! InstallSnapshot (§7, Figure 13): streaming our snapshot to a follower behind the
//! compacted prefix, one bounded chunk per round trip, and receiving one.

use crate::message::MessageBody;
use crate::progress::ReplicationState;
use crate::raft::RaftCore;
use crate::ready::StepError;
use crate::membership::Membership;
use crate::types::{NodeId, Role, Snapshot, SnapshotMeta};
use std::sync::Arc;

/// Follower: a snapshot being received, chunk by chunk, with the CRC-32C of what arrived.
#[derive(Debug)]
pub(crate) struct IncomingSnapshot {
    meta: SnapshotMeta,
    membership: Membership,
    data: Vec<u8>,
    crc32c: u32,
}

impl RaftCore {
    pub(crate) fn start_snapshot(&mut self, peer: NodeId) {
        let meta = self.snapshot.as_ref().expect("a compacted log always has a snapshot").meta;
        let progress = self.progress.get_mut(&peer).expect("leader tracks every peer");
        progress.inflight.clear();
        progress.state = ReplicationState::Snapshot { meta, next_offset: 0 };
        self.send_snapshot_chunk(peer, true);
    }

    /// Sends the chunk the follower asked for last. On a heartbeat, only if the previous
    /// chunk seems lost (`resend`), so one chunk is in flight at a time.
    pub(crate) fn send_snapshot_chunk(&mut self, peer: NodeId, resend: bool) {
        let snapshot = self.snapshot.clone().expect("a compacted log always has a snapshot");
        let progress = &self.progress[&peer];
        let ReplicationState::Snapshot { meta, next_offset } = progress.state else {
            unreachable!("peer is not receiving a snapshot");
        };
        if meta != snapshot.meta {
            // We compacted again since the transfer began: send the newer snapshot instead.
            return self.start_snapshot(peer);
        }
        if !resend {
            return;
        }
        let begin = (next_offset as usize).min(snapshot.data.len());
        let end = (begin + self.config.snapshot_chunk_bytes_max).min(snapshot.data.len());
        self.progress.get_mut(&peer).expect("leader tracks every peer").sent_up_to(meta.last_included_index);
        let body = MessageBody::InstallSnapshot {
            meta,
            membership: snapshot.membership.clone(),
            offset: begin as u64,
            data: snapshot.data[begin..end].to_vec(),
            done: end == snapshot.data.len(),
            read_round: self.reads.current_round(),
        };
        self.send(peer, body);
    }

    pub(crate) fn handle_install_snapshot_response(&mut self, from: NodeId, meta: SnapshotMeta, next_offset: u64, done: bool, read_round: u64) {
        self.note_follower_alive(from, read_round);
        let progress = self.progress.get_mut(&from).expect("leader tracks every peer");
        let ReplicationState::Snapshot { meta: sending, .. } = progress.state else {
            return; // A duplicate answer after the transfer finished.
        };
        if sending != meta {
            return;
        }
        progress.snapshot_chunk_answered = true;
        if done {
            progress.record_match(meta.last_included_index);
            progress.become_replicate();
            self.maybe_commit();
            if self.role != Role::Leader {
                return; // A leader the new configuration leaves out stepped down (§4.2.2).
            }
            return self.send_append(from, crate::replication::Trigger::Replicate);
        }
        progress.state = ReplicationState::Snapshot { meta, next_offset };
        self.send_snapshot_chunk(from, true);
    }

    /// InstallSnapshot receiver (Figure 13): gather chunks in order; when the last arrives
    /// and its checksum matches, replace the log and hand the snapshot to the driver to
    /// persist and restore. (`validate.rs` has checked that the chunk fits its image.)
    #[allow(clippy::too_many_arguments)] // The fields of one InstallSnapshot message.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta, membership: Membership, offset: u64, data: Vec<u8>, done: bool, read_round: u64) -> Result<(), StepError> {
        if meta.last_included_index <= self.log.commit_index() {
            // Our committed log already covers it.
            self.incoming_snapshot = None;
            self.reply_snapshot(from, meta, 0, true, read_round);
            return Ok(());
        }
        if offset == 0 {
            self.incoming_snapshot = Some(IncomingSnapshot { meta, membership, data: Vec::new(), crc32c: 0 });
        }
        let expected = match &self.incoming_snapshot {
            Some(incoming) if incoming.meta == meta => incoming.data.len() as u64,
            _ => 0,
        };
        if offset != expected || self.incoming_snapshot.as_ref().is_none_or(|incoming| incoming.meta != meta) {
            // A chunk from another transfer, or out of order: ask for what we need.
            self.reply_snapshot(from, meta, expected, false, read_round);
            return Ok(());
        }
        let incoming = self.incoming_snapshot.as_mut().expect("checked above");
        incoming.crc32c = crc32c::crc32c_append(incoming.crc32c, &data);
        incoming.data.extend_from_slice(&data);
        let received = incoming.data.len() as u64;
        if !done {
            self.reply_snapshot(from, meta, received, false, read_round);
            return Ok(());
        }
        let incoming = self.incoming_snapshot.take().expect("checked above");
        if incoming.crc32c != meta.data_crc32c {
            // Changes nothing: the next chunk we are sent starts the transfer over.
            return Err(StepError::SnapshotChecksum { from, index: meta.last_included_index, expected: meta.data_crc32c, actual: incoming.crc32c });
        }
        let snapshot = Snapshot { meta, membership: incoming.membership, data: Arc::new(incoming.data) };
        self.log.install_snapshot(meta, snapshot.membership.clone());
        self.snapshot = Some(snapshot.clone());
        self.snapshot_to_install = Some(snapshot);
        self.reply_snapshot(from, meta, received, true, read_round);
        Ok(())
    }

    fn reply_snapshot(&mut self, to: NodeId, meta: SnapshotMeta, next_offset: u64, done: bool, read_round: u64) {
        self.send(to, MessageBody::InstallSnapshotResponse { meta, next_offset, done, read_round });
    }
}
