//! The Raft log's newest entries in memory (`log_store::LogStore`).
//!
//! Every committed entry is read back at least twice soon after it is
//! appended: by the state machine that applies it, and on the leader by
//! each follower's replication stream. Read from RocksDB, each of those is
//! an iterator over the log's memtable, its range tombstones (purges) and
//! SSTs, a CRC-32 check and a decode: at one entry a purchase, about a
//! twentieth of a node's CPU. This cache answers them from the entries as
//! appended.
//!
//! What it may hold: consecutive entries, each exactly what the log holds
//! at its index. The log store keeps that true: an append adds its entries
//! only after RocksDB took them (and first drops any cached entry at or
//! after their index: an append overwrites from there on); `truncate_after`
//! and `purge` drop what they remove before RocksDB removes it. So a read
//! it answers is the read RocksDB would have answered, minus the disk; a
//! range it does not hold whole goes to RocksDB (the scrub still checks
//! every stored entry's CRC-32). Empty at start: it never outlives the
//! process, a repair or a restart.
//!
//! Bounded by [`ENTRY_CACHE_ENTRIES_MAX`] entries and
//! [`ENTRY_CACHE_BYTES_MAX`] stored bytes (the oldest go first; the newest
//! entry stays even when it alone is larger).
//!
//! May touch: nothing but its own memory.

use std::collections::VecDeque;

use openraft::entry::RaftEntry;

use crate::types::Entry;

/// Most entries held.
pub const ENTRY_CACHE_ENTRIES_MAX: usize = 4096;
/// Most stored bytes (CRC-32 and encoding) of the entries held.
pub const ENTRY_CACHE_BYTES_MAX: usize = 16 << 20;

#[derive(Default)]
pub struct EntryCache {
    /// Consecutive entries, oldest first, each with its stored size.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl EntryCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id().index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id().index)
    }

    /// Entries held and their stored bytes.
    #[cfg(test)]
    pub fn len_and_bytes(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }

    /// Drops every entry at index `from` or later.
    pub fn truncate_from(&mut self, from: u64) {
        while let Some((e, b)) = self.entries.back() {
            if e.log_id().index < from {
                break;
            }
            self.bytes -= *b;
            self.entries.pop_back();
        }
    }

    /// Drops every entry at index `upto` or earlier.
    pub fn purge_upto(&mut self, upto: u64) {
        while let Some((e, b)) = self.entries.front() {
            if e.log_id().index > upto {
                break;
            }
            self.bytes -= *b;
            self.entries.pop_front();
        }
    }

    /// Adds `entry`, which the log now holds at its index (`stored_bytes`:
    /// its stored size). Entries at or after its index are dropped first;
    /// an entry that does not follow the last one held starts the cache
    /// anew (the log between them is only in RocksDB).
    pub fn push(&mut self, entry: Entry, stored_bytes: usize) {
        let index = entry.log_id().index;
        self.truncate_from(index);
        if self.last_index().is_some_and(|last| last + 1 != index) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.entries.push_back((entry, stored_bytes));
        self.bytes += stored_bytes;
        while self.entries.len() > 1
            && (self.entries.len() > ENTRY_CACHE_ENTRIES_MAX || self.bytes > ENTRY_CACHE_BYTES_MAX)
        {
            if let Some((_, b)) = self.entries.pop_front() {
                self.bytes -= b;
            }
        }
        debug_assert_eq!(
            self.bytes,
            self.entries.iter().map(|(_, b)| b).sum::<usize>()
        );
    }

    /// The entries `start..end` when every one of them is held; `None`
    /// otherwise (and for an empty range).
    pub fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start >= end || start < first || end - 1 > last {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// Entries for the store's tests.
#[cfg(test)]
pub(crate) mod test_entries {
    use crate::types::{Entry, LogId, TypeConfig};
    use openraft::entry::RaftEntry;

    /// A blank entry of leader 1 in `term` at `index`.
    pub fn blank_in(term: u64, index: u64) -> Entry {
        use openraft::vote::RaftLeaderIdExt;
        let leader = openraft::alias::LeaderIdOf::<TypeConfig>::new_committed(term, 1);
        Entry::new_blank(LogId::new(leader, index))
    }

    /// (term, index) of each entry.
    pub fn ids(v: &[Entry]) -> Vec<(u64, u64)> {
        v.iter()
            .map(|e| (e.log_id().committed_leader_id().term, e.log_id().index))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_entries::{blank_in as entry, ids as indexes};
    use super::*;

    /// A cache holding term-1 entries `indexes`, each counted as `bytes`.
    fn holding(indexes: std::ops::RangeInclusive<u64>, bytes: usize) -> EntryCache {
        let mut c = EntryCache::default();
        for i in indexes {
            c.push(entry(1, i), bytes);
        }
        c
    }

    #[test]
    fn answers_only_ranges_it_holds_whole() {
        assert!(EntryCache::default().get(1, 2).is_none());
        let c = holding(5..=9, 100);
        assert_eq!(
            indexes(&c.get(5, 10).expect("held")),
            [(1, 5), (1, 6), (1, 7), (1, 8), (1, 9)]
        );
        assert_eq!(indexes(&c.get(7, 8).expect("held")), [(1, 7)]);
        // Reaching before the first or past the last: RocksDB answers.
        assert!(c.get(4, 6).is_none());
        assert!(c.get(8, 11).is_none());
        assert!(c.get(7, 7).is_none());
        assert_eq!(c.len_and_bytes(), (5, 500));
    }

    #[test]
    fn truncate_and_purge_drop_what_the_log_drops() {
        let mut c = holding(1..=6, 10);
        c.truncate_from(5);
        assert!(c.get(4, 6).is_none());
        assert_eq!(indexes(&c.get(1, 5).expect("held")).len(), 4);
        c.purge_upto(2);
        assert!(c.get(2, 4).is_none());
        assert_eq!(indexes(&c.get(3, 5).expect("held")), [(1, 3), (1, 4)]);
        assert_eq!(c.len_and_bytes(), (2, 20));
    }

    #[test]
    fn an_append_overwrites_from_its_index_and_a_gap_starts_anew() {
        let mut c = holding(1..=5, 10);
        // A new leader's entry at 3 replaces 3, 4 and 5.
        c.push(entry(2, 3), 10);
        assert_eq!(
            indexes(&c.get(1, 4).expect("held")),
            [(1, 1), (1, 2), (2, 3)]
        );
        assert!(c.get(4, 5).is_none());
        // An entry after a gap: what lies between is not held.
        c.push(entry(2, 9), 10);
        assert!(c.get(3, 4).is_none());
        assert_eq!(indexes(&c.get(9, 10).expect("held")), [(2, 9)]);
        assert_eq!(c.len_and_bytes(), (1, 10));
    }

    #[test]
    fn the_oldest_go_first_past_either_bound_but_the_newest_stays() {
        let c = holding(1..=(ENTRY_CACHE_ENTRIES_MAX as u64 + 3), 1);
        assert_eq!(c.len_and_bytes().0, ENTRY_CACHE_ENTRIES_MAX);
        assert!(c.get(3, 4).is_none());
        assert!(c.get(4, 5).is_some());
        let mut c = EntryCache::default();
        c.push(entry(1, 1), ENTRY_CACHE_BYTES_MAX / 2);
        c.push(entry(1, 2), ENTRY_CACHE_BYTES_MAX / 2);
        c.push(entry(1, 3), ENTRY_CACHE_BYTES_MAX);
        assert_eq!(c.len_and_bytes(), (1, ENTRY_CACHE_BYTES_MAX));
        c.push(entry(1, 4), ENTRY_CACHE_BYTES_MAX * 2);
        assert_eq!(c.len_and_bytes(), (1, ENTRY_CACHE_BYTES_MAX * 2));
        assert!(c.get(4, 5).is_some());
    }
}
