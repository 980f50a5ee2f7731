//! In-memory transport: tokio channels between nodes of one process, with switches for
//! tests — partitions (one-way or both ways), dropping everything to a node, and a delay.

use crate::transport::Transport;
use keel_core::{Message, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Default)]
struct Routes {
    inboxes: BTreeMap<NodeId, mpsc::Sender<Message>>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    delay: Option<Duration>,
}

/// The wires between the nodes of one test cluster.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    routes: Arc<Mutex<Routes>>,
}

impl MemoryNetwork {
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::default()
    }

    /// Connects a node's inbox; replaces it after a restart.
    pub fn register(&self, id: NodeId, inbox: mpsc::Sender<Message>) {
        self.routes.lock().expect("routes lock").inboxes.insert(id, inbox);
    }

    pub fn transport(&self, from: NodeId) -> MemoryTransport {
        MemoryTransport { from, network: self.clone() }
    }

    /// Cuts `a` off from `b` in both directions.
    pub fn partition(&self, a: NodeId, b: NodeId) {
        let mut routes = self.routes.lock().expect("routes lock");
        routes.blocked.insert((a, b));
        routes.blocked.insert((b, a));
    }

    /// Cuts `node` off from everyone.
    pub fn isolate(&self, node: NodeId) {
        let others: Vec<NodeId> = self.routes.lock().expect("routes lock").inboxes.keys().copied().collect();
        for other in others.into_iter().filter(|other| *other != node) {
            self.partition(node, other);
        }
    }

    pub fn heal(&self) {
        self.routes.lock().expect("routes lock").blocked.clear();
    }

    pub fn set_delay(&self, delay: Option<Duration>) {
        self.routes.lock().expect("routes lock").delay = delay;
    }

    fn deliver(&self, from: NodeId, message: Message) {
        let (inbox, delay) = {
            let routes = self.routes.lock().expect("routes lock");
            if routes.blocked.contains(&(from, message.to)) {
                return;
            }
            (routes.inboxes.get(&message.to).cloned(), routes.delay)
        };
        let Some(inbox) = inbox else { return };
        match delay {
            None => {
                let _ = inbox.try_send(message);
            }
            Some(delay) => {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = inbox.try_send(message);
                });
            }
        }
    }
}

pub struct MemoryTransport {
    from: NodeId,
    network: MemoryNetwork,
}

impl Transport for MemoryTransport {
    fn send(&self, message: Message) {
        self.network.deliver(self.from, message);
    }
}
