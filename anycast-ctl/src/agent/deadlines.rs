//! The agent's expiry schedule: every learned member's own deadline, in a binary heap, so the
//! agent sleeps until the earliest one (`tokio::time::sleep_until`) instead of ticking.
//!
//! Invariants:
//! - Each learned member has one entry, armed at a time no later than its deadline; a refresh
//!   only moves the deadline later (no heap operation). An entry that comes due is checked
//!   against the member's current deadline: re-armed there if the member was refreshed, or
//!   reported due.
//! - An entry armed for a member that has since gone (or come back with another entry) is
//!   recognised by its arming time and dropped.
use std::{cmp::Reverse, collections::BinaryHeap, time::Instant};

/// A min-heap of (arming time, key).
#[derive(Debug)]
pub struct Deadlines<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Arms an entry for `key` at `at`; the caller records `at` as the key's arming time.
    pub fn arm(&mut self, key: K, at: Instant) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest arming time, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, Instant)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((at, key))| (key, at))
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_come_due_in_deadline_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Deadlines::default();
        d.arm(3u32, ms(30));
        d.arm(1, ms(10));
        d.arm(2, ms(20));
        assert_eq!(d.next(), Some(ms(10)));
        assert_eq!(d.pop_due(ms(5)), None);
        assert_eq!(d.pop_due(ms(25)), Some((1, ms(10))));
        assert_eq!(d.pop_due(ms(25)), Some((2, ms(20))));
        assert_eq!(d.pop_due(ms(25)), None);
        assert_eq!(d.pop_due(ms(30)), Some((3, ms(30))));
        assert_eq!(d.next(), None);
    }
}
