//! `Transport`: how a node's messages reach its peers.
//!
//! Raft's RPCs are one-way messages here (a response is just another message), so the
//! trait has one method and a new message type never changes it. Delivery is best effort:
//! Raft tolerates loss, duplication and reordering, and retries by itself.
//!
//! Inbound messages go into the receiving node's inbox (`RaftNode::inbox`). Every
//! implementation checks the cluster id before that: a message from another cluster is
//! rejected and logged, never stepped.

use keel_core::Message;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change of the peer wire format.
pub const PROTOCOL_VERSION: u16 = 1;

pub trait Transport: Send + Sync + 'static {
    /// Queues `message` for `message.to`. Must not block the driver: a full queue or an
    /// unreachable peer drops the message (and says so at debug level).
    fn send(&self, message: Message);
}

/// What travels between nodes: a batch of messages stamped with the cluster it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub protocol_version: u16,
    pub cluster_id: String,
    pub messages: Vec<Message>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    Undecodable(String),
    WrongProtocol { theirs: u16 },
    WrongCluster { theirs: String },
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::Undecodable(reason) => write!(f, "undecodable peer message: {reason}"),
            EnvelopeError::WrongProtocol { theirs } => write!(f, "peer speaks protocol {theirs}, this node speaks {PROTOCOL_VERSION}"),
            EnvelopeError::WrongCluster { theirs } => write!(f, "message from cluster {theirs:?}, not ours"),
        }
    }
}

impl Envelope {
    pub fn encode(cluster_id: &str, messages: Vec<Message>) -> Vec<u8> {
        let envelope = Envelope { protocol_version: PROTOCOL_VERSION, cluster_id: cluster_id.to_string(), messages };
        postcard::to_allocvec(&envelope).expect("serializing to a Vec cannot fail")
    }

    /// Decodes and checks version and cluster id.
    pub fn decode(bytes: &[u8], cluster_id: &str) -> Result<Vec<Message>, EnvelopeError> {
        let envelope: Envelope = postcard::from_bytes(bytes).map_err(|error| EnvelopeError::Undecodable(error.to_string()))?;
        if envelope.protocol_version != PROTOCOL_VERSION {
            return Err(EnvelopeError::WrongProtocol { theirs: envelope.protocol_version });
        }
        if envelope.cluster_id != cluster_id {
            return Err(EnvelopeError::WrongCluster { theirs: envelope.cluster_id });
        }
        Ok(envelope.messages)
    }
}
