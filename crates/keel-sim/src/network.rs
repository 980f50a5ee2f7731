//! A simulated network: per-message delay (so reordering), loss, duplication, and
//! partitions as a set of blocked one-way links (so non-transitive partitions too).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

pub struct Network {
    blocked: BTreeSet<(usize, usize)>,
    pub loss_percent: u32,
    pub duplicate_percent: u32,
    pub delay_ms_max: u64,
}

impl Network {
    pub fn new(rng: &mut ChaCha8Rng) -> Network {
        Network { blocked: BTreeSet::new(), loss_percent: rng.gen_range(0..=8), duplicate_percent: rng.gen_range(0..=4), delay_ms_max: rng.gen_range(3..=40) }
    }

    /// The delays at which copies of a message from `from` to `to` arrive (none if dropped).
    pub fn deliveries(&self, rng: &mut ChaCha8Rng, from: usize, to: usize) -> Vec<u64> {
        if self.blocked.contains(&(from, to)) || rng.gen_range(0..100) < self.loss_percent {
            return Vec::new();
        }
        let mut delays = vec![rng.gen_range(1..=self.delay_ms_max)];
        if rng.gen_range(0..100) < self.duplicate_percent {
            delays.push(rng.gen_range(1..=self.delay_ms_max * 2));
        }
        delays
    }

    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Splits the nodes into two sides that cannot talk to each other.
    pub fn partition(&mut self, side: &[usize], others: &[usize]) {
        for a in side {
            for b in others {
                self.block(*a, *b);
                self.block(*b, *a);
            }
        }
    }

    /// The one-way links that drop everything.
    pub fn blocked(&self) -> &BTreeSet<(usize, usize)> {
        &self.blocked
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }
}
