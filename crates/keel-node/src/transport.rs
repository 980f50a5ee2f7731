//! `Transport`: how a node's messages reach its peers.
//!
//! Raft's RPCs are one-way messages here (a response is just another message), so the
//! trait has one method and a new message type never changes it. Delivery is best effort:
//! Raft tolerates loss, duplication and reordering, and retries by itself.
//!
//! Inbound messages go into the receiving node's inbox (`RaftNode::inbox`). Every
//! implementation checks the cluster id before that: a message from another cluster is
//! rejected and logged, never stepped.

use keel_core::{Message, NodeId};
use std::collections::BTreeMap;

/// Bumped on any incompatible change of the peer wire format. 2: streams of frames
/// (`transport_http.rs`) replaced one request per batch. 3: snapshot metadata carries the
/// image's size and CRC-32C. 4: configurations carry member addresses. 5: a stream's
/// handshake names its sender (`from`), which peer TLS checks against its certificate.
pub const PROTOCOL_VERSION: u16 = 5;

pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `message.to`. Must not block the driver: a full queue or an
    /// unreachable peer drops the message (and says so at debug level).
    fn send(&self, message: Message);

    /// Where each member listens, as of the configuration in force (thesis §4.1: members
    /// come and go with the log). Transports that address peers by id alone ignore it.
    fn set_peer_addresses(&self, _addresses: &BTreeMap<NodeId, String>) {}
}
