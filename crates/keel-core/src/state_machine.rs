//! The replicated state machine a driver applies committed entries to (§5, "replicated
//! state machines"). The core never calls it; it lives here so every layer shares one trait.

use crate::types::{Entry, LogIndex};

pub trait StateMachine: Send + 'static {
    /// What applying a command answers to the client that proposed it.
    type Output: Clone + Send + std::fmt::Debug + 'static;

    /// Applies one committed entry. Must be deterministic: every node applies the same entries
    /// in the same order and must reach the same state. Entries arrive exactly once, in index
    /// order; a no-op entry must still advance `applied_index`.
    fn apply(&mut self, entry: &Entry) -> Self::Output;

    /// Index of the last entry applied (or restored from a snapshot).
    fn applied_index(&self) -> LogIndex;

    /// Writes a serialized image of the state as of `applied_index()` to `out`, streamed:
    /// an image may be larger than the memory a second copy would take. Equal states give
    /// equal bytes.
    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;

    /// The same image, written later on another thread: the driver calls this on its own
    /// task and runs the returned closure on a snapshot thread, so neither applying nor log
    /// writes wait for more than what this method does (for `KvStore`: an O(1) copy of a
    /// persistent map), not for serializing and writing the image.
    fn snapshot_job(&self) -> SnapshotWrite;

    /// Replaces the whole state with the image `image` streams. Bad bytes are an error, not
    /// a panic: they come from disk or the network.
    fn restore(&mut self, image: &mut dyn std::io::Read) -> Result<(), String>;
}

/// Writes a state machine image (`StateMachine::snapshot_job`) to the stream it is given.
pub type SnapshotWrite = Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send>;
