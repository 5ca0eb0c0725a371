//! A bounded, write-through cache of state-machine values for apply's point
//! reads (accounts, cards, tariffs, year counters, the last purchase and its
//! record index, report rows, segment meta).
//!
//! Why: a purchase reads about a dozen keys that the previous write to the
//! same account (or the same report row) has just written; every one of
//! those reads was a RocksDB memtable skip-list search, which profiles
//! showed as the largest single cost of apply on every replica.
//!
//! Coherence: only the apply task and snapshot install touch the domain
//! families, and both go through [`super::state_machine`]. A read that
//! misses is filled from RocksDB's committed state (values only: a key
//! found absent is not remembered); every batch apply writes updates the
//! entries the cache already holds before the batch is written (a key only
//! written, like an imported account, is not brought in), and the cache is
//! cleared when that write fails and around a snapshot install. Values are bytes, so
//! what apply decodes is exactly what RocksDB holds: the cache changes
//! speed, never results (apply stays deterministic; the map is only looked
//! up, never iterated).
//!
//! Bounded: two generations of at most `bytes_max / 2` each; when the young
//! one fills, the old one is dropped (an approximate LRU: a hit in the old
//! generation moves the entry to the young one).
//!
//! `requests` and `bank_refs` are not cached: nearly every lookup there is
//! a miss for a new key (bloom filters answer those), and caching them would
//! only push useful entries out. `invoices` are read once, when printed;
//! `records` are written far more than read (bulk imports write thousands).

use std::collections::HashMap;

use crate::domain::Family;
use crate::domain::txn::{FAMILY_COUNT, FamilyMap};

/// Bytes counted per entry on top of key and value (map and vector headers).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// One generation: a map per family (indexed by `Family as usize`), so a
/// lookup borrows the key instead of building a `(Family, Vec<u8>)`.
type Generation = [FamilyMap; FAMILY_COUNT];

pub struct ApplyCache {
    young: Generation,
    old: Generation,
    young_bytes: usize,
    bytes_max: usize,
    hits: u64,
    misses: u64,
}

fn cacheable(family: Family) -> bool {
    !matches!(
        family,
        Family::Requests | Family::BankRefs | Family::Invoices | Family::Records
    )
}

fn size_of(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES
}

impl ApplyCache {
    /// A cache holding at most about `bytes_max` bytes; 0 disables it.
    pub fn new(bytes_max: usize) -> Self {
        ApplyCache {
            young: Default::default(),
            old: Default::default(),
            young_bytes: 0,
            bytes_max,
            hits: 0,
            misses: 0,
        }
    }

    /// `Some(value)` when cached (`Some(None)`: known absent).
    pub fn get(&mut self, family: Family, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if self.bytes_max == 0 || !cacheable(family) {
            return None;
        }
        let f = family as usize;
        if let Some(v) = self.young[f].get(key) {
            self.hits += 1;
            return Some(v.clone());
        }
        match self.old[f].remove_entry(key) {
            Some((k, v)) => {
                self.hits += 1;
                self.insert_key(f, k, v.clone());
                Some(v)
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remember `family/key = value`, read from RocksDB.
    pub fn insert(&mut self, family: Family, key: &[u8], value: Vec<u8>) {
        if self.bytes_max == 0 || !cacheable(family) {
            return;
        }
        let f = family as usize;
        self.old[f].remove(key);
        self.insert_key(f, key.to_vec(), Some(value));
    }

    /// A write about to be committed: update the entry if the cache holds
    /// the key (`None`: deleted), leave the cache alone otherwise.
    pub fn update(&mut self, family: Family, key: &[u8], value: Option<Vec<u8>>) {
        if self.bytes_max == 0 || !cacheable(family) {
            return;
        }
        let f = family as usize;
        if let Some(slot) = self.young[f].get_mut(key) {
            *slot = value;
        } else if let Some((k, _)) = self.old[f].remove_entry(key) {
            self.insert_key(f, k, value);
        }
    }

    fn insert_key(&mut self, f: usize, k: Vec<u8>, value: Option<Vec<u8>>) {
        let size = size_of(&k, &value);
        if size > self.bytes_max / 2 {
            self.young[f].remove(&k);
            return;
        }
        if self.young_bytes + size > self.bytes_max / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += size;
        self.young[f].insert(k, value);
    }

    /// Hits and misses since the last call (for the metrics).
    pub fn take_counts(&mut self) -> (u64, u64) {
        let counts = (self.hits, self.misses);
        self.hits = 0;
        self.misses = 0;
        counts
    }

    /// Forget everything (a failed write, a snapshot install).
    pub fn clear(&mut self) {
        self.young = Default::default();
        self.old = Default::default();
        self.young_bytes = 0;
    }

    /// Entries held (both generations; a key is in at most one).
    pub fn len(&self) -> usize {
        self.young.iter().chain(&self.old).map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_misses_and_absent_values() {
        let mut c = ApplyCache::new(1 << 20);
        assert_eq!(c.get(Family::Accounts, b"A"), None);
        c.insert(Family::Accounts, b"A", b"v1".to_vec());
        assert_eq!(c.get(Family::Accounts, b"A"), Some(Some(b"v1".to_vec())));
        // Same key, other family: not confused.
        assert_eq!(c.get(Family::Cards, b"A"), None);
        // Writes update what is cached, and deletions are remembered...
        c.update(Family::Accounts, b"A", Some(b"v2".to_vec()));
        assert_eq!(c.get(Family::Accounts, b"A"), Some(Some(b"v2".to_vec())));
        c.update(Family::Accounts, b"A", None);
        assert_eq!(c.get(Family::Accounts, b"A"), Some(None));
        // ...but a key only written is not brought in.
        c.update(Family::Cards, b"C", Some(b"x".to_vec()));
        assert_eq!(c.get(Family::Cards, b"C"), None);
    }

    #[test]
    fn request_and_bank_ref_lookups_are_never_cached() {
        let mut c = ApplyCache::new(1 << 20);
        c.insert(Family::Requests, b"r", b"x".to_vec());
        c.insert(Family::BankRefs, b"b", b"y".to_vec());
        assert_eq!(c.get(Family::Requests, b"r"), None);
        assert_eq!(c.get(Family::BankRefs, b"b"), None);
        assert!(c.is_empty());
    }

    #[test]
    fn stays_within_its_bound_and_keeps_recently_used_entries() {
        let bytes_max = 100 * (ENTRY_OVERHEAD_BYTES + 16);
        let mut c = ApplyCache::new(bytes_max);
        c.insert(Family::Accounts, b"hot", vec![0; 8]);
        for i in 0..10_000u64 {
            c.insert(Family::Accounts, &i.to_be_bytes(), vec![1; 8]);
            // Touch the hot key now and then: it survives generation flips.
            if i % 10 == 0 {
                assert_eq!(c.get(Family::Accounts, b"hot"), Some(Some(vec![0; 8])));
            }
            let held: usize = c
                .young
                .iter()
                .chain(c.old.iter())
                .flatten()
                .map(|(k, v)| size_of(k, v))
                .sum();
            assert!(held <= bytes_max, "{held} > {bytes_max}");
        }
        // Old entries were dropped.
        assert_eq!(c.get(Family::Accounts, &0u64.to_be_bytes()), None);
        assert!(c.len() < 200);
    }

    #[test]
    fn zero_bytes_disables_it() {
        let mut c = ApplyCache::new(0);
        c.insert(Family::Accounts, b"A", b"v".to_vec());
        assert_eq!(c.get(Family::Accounts, b"A"), None);
    }
}
