//! InstallSnapshot (§7, Figure 13): streaming our snapshot to a follower behind the
//! compacted prefix in bounded chunks, pipelined within a byte window, and receiving one.
//!
//! The image never passes through the core whole. The leader's core decides which chunk
//! goes next (offset and length) and hands it to the driver as an `OutgoingChunk`, which
//! the driver fills from its stored image and sends. The follower's core checks each chunk
//! (order, CRC-32C so far) and hands it on as a `ReceivedChunk` for the driver to write to
//! a temporary file; when the last one arrives and the checksum of the whole matches, it
//! replaces its log and asks the driver to install the image (`Ready::snapshot`).
//!
//! Flow control, per follower: the follower answers every chunk with the offset it needs
//! next. The leader keeps at most `snapshot_window_bytes_max` bytes sent beyond that
//! offset. A lost chunk shows as a gap: the follower keeps asking for the offset it needs,
//! and the leader goes back to it at the next heartbeat that brought no answer.

use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::progress::ReplicationState;
use crate::raft::RaftCore;
use crate::ready::{OutgoingChunk, ReceivedChunk, StepError};
use crate::types::{NodeId, Role, Snapshot, SnapshotMeta};

/// Follower: a snapshot being received, with how much of it arrived in order and the
/// CRC-32C of those bytes.
#[derive(Debug)]
pub(crate) struct IncomingSnapshot {
    snapshot: Snapshot,
    received_bytes: u64,
    crc32c: u32,
}

impl RaftCore {
    pub(crate) fn start_snapshot(&mut self, peer: NodeId) {
        let meta = self.snapshot.as_ref().expect("a compacted log always has a snapshot").meta;
        let progress = self.progress.get_mut(&peer).expect("leader tracks every peer");
        progress.inflight.clear();
        progress.state = ReplicationState::Snapshot { meta, acked_offset: 0, sent_offset: 0 };
        progress.snapshot_chunk_answered = true;
        self.send_snapshot_chunks(peer);
    }

    /// A heartbeat while a snapshot streams: if nothing was answered since the last one,
    /// the chunks in flight (or their answers) were lost; send again from the offset the
    /// follower last asked for.
    pub(crate) fn snapshot_heartbeat(&mut self, peer: NodeId) {
        let progress = self.progress.get_mut(&peer).expect("leader tracks every peer");
        let ReplicationState::Snapshot { meta, acked_offset, .. } = progress.state else {
            unreachable!("peer is not receiving a snapshot");
        };
        if !progress.snapshot_chunk_answered {
            progress.state = ReplicationState::Snapshot { meta, acked_offset, sent_offset: acked_offset };
        }
        progress.snapshot_chunk_answered = false;
        self.send_snapshot_chunks(peer);
    }

    /// Sends chunks from `sent_offset` while the window has room.
    fn send_snapshot_chunks(&mut self, peer: NodeId) {
        let snapshot = self.snapshot.clone().expect("a compacted log always has a snapshot");
        let ReplicationState::Snapshot { meta, acked_offset, mut sent_offset } = self.progress[&peer].state else {
            unreachable!("peer is not receiving a snapshot");
        };
        if meta != snapshot.meta {
            // We compacted again since the transfer began: send the newer snapshot instead.
            return self.start_snapshot(peer);
        }
        let (chunk_max, window_max) = (self.config.snapshot_chunk_bytes_max as u64, self.config.snapshot_window_bytes_max as u64);
        let mut chunks_sent = 0;
        loop {
            let window_full = sent_offset - acked_offset >= window_max;
            // An empty image still takes one chunk: the one that says `done`.
            let all_sent = sent_offset == meta.data_bytes && (meta.data_bytes > 0 || chunks_sent > 0);
            if window_full || all_sent {
                break;
            }
            let len = chunk_max.min(meta.data_bytes - sent_offset);
            self.send_chunk(peer, &snapshot, sent_offset, len as usize);
            sent_offset += len;
            chunks_sent += 1;
        }
        let progress = self.progress.get_mut(&peer).expect("leader tracks every peer");
        progress.state = ReplicationState::Snapshot { meta, acked_offset, sent_offset };
        if chunks_sent > 0 {
            progress.sent_up_to(meta.last_included_index);
        }
    }

    fn send_chunk(&mut self, peer: NodeId, snapshot: &Snapshot, offset: u64, len: usize) {
        let done = offset + len as u64 == snapshot.meta.data_bytes;
        let body = MessageBody::InstallSnapshot { meta: snapshot.meta, membership: snapshot.membership.clone(), offset, data: Vec::new(), done, read_round: self.reads.current_round() };
        let message = Message { from: self.id, to: peer, term: self.current_term, body };
        self.outgoing_chunks.push(OutgoingChunk { message, len });
    }

    pub(crate) fn handle_install_snapshot_response(&mut self, from: NodeId, meta: SnapshotMeta, next_offset: u64, done: bool, read_round: u64) {
        self.note_follower_alive(from, read_round);
        let progress = self.progress.get_mut(&from).expect("leader tracks every peer");
        let ReplicationState::Snapshot { meta: sending, acked_offset, sent_offset } = progress.state else {
            return; // A duplicate answer after the transfer finished.
        };
        if sending != meta {
            return;
        }
        progress.snapshot_chunk_answered = true;
        if done {
            progress.record_match(meta.last_included_index);
            progress.become_replicate();
            self.events.push(crate::event::Event::SnapshotSent { to: from, index: meta.last_included_index });
            self.maybe_commit();
            if self.role != Role::Leader {
                return; // A leader the new configuration leaves out stepped down (§4.2.2).
            }
            return self.send_append(from, crate::replication::Trigger::Replicate);
        }
        // An offset below one it asked for before: the follower restarted, or this answer is
        // older than one already seen; either way, sending again from there is safe.
        let sent_offset = if next_offset < acked_offset { next_offset } else { sent_offset.max(next_offset) };
        progress.state = ReplicationState::Snapshot { meta, acked_offset: next_offset, sent_offset };
        self.send_snapshot_chunks(from);
    }

    /// InstallSnapshot receiver (Figure 13): take chunks in order, keeping a running
    /// checksum, and hand each to the driver to write; when the last arrives and the checksum
    /// matches, replace the log and ask the driver to install the image. (`validate.rs` has
    /// checked that the chunk fits its image.)
    #[allow(clippy::too_many_arguments)] // The fields of one InstallSnapshot message.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta, membership: Membership, offset: u64, data: Vec<u8>, done: bool, read_round: u64) -> Result<(), StepError> {
        if meta.last_included_index <= self.log.commit_index() {
            // Our committed log already covers it.
            self.incoming_snapshot = None;
            self.reply_snapshot(from, meta, 0, true, read_round);
            return Ok(());
        }
        if offset == 0 {
            self.incoming_snapshot = Some(IncomingSnapshot { snapshot: Snapshot { meta, membership }, received_bytes: 0, crc32c: 0 });
        }
        let expected = match &self.incoming_snapshot {
            Some(incoming) if incoming.snapshot.meta == meta => incoming.received_bytes,
            _ => 0,
        };
        if offset != expected || self.incoming_snapshot.is_none() {
            // A chunk from another transfer, a duplicate, or one after a gap: ask for what
            // we need.
            self.reply_snapshot(from, meta, expected, false, read_round);
            return Ok(());
        }
        let incoming = self.incoming_snapshot.as_mut().expect("checked above");
        incoming.crc32c = crc32c::crc32c_append(incoming.crc32c, &data);
        incoming.received_bytes += data.len() as u64;
        let (received, crc32c, snapshot) = (incoming.received_bytes, incoming.crc32c, incoming.snapshot.clone());
        self.received_chunks.push(ReceivedChunk { snapshot: snapshot.clone(), offset, data });
        if !done {
            self.reply_snapshot(from, meta, received, false, read_round);
            return Ok(());
        }
        self.incoming_snapshot = None;
        if crc32c != meta.data_crc32c {
            // The chunks handed out stay in a temporary file, which the next transfer's
            // first chunk replaces.
            return Err(StepError::SnapshotChecksum { from, index: meta.last_included_index, expected: meta.data_crc32c, actual: crc32c });
        }
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
