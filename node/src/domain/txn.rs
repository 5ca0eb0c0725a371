//! The narrow storage view the domain works through: point reads and
//! writes on named families ([`Get`], [`Txn`]) and bounded ordered range
//! scans for reads ([`ReadView`]). The RocksDB implementations live in
//! `store::state_machine`; [`MemTxn`] is the in-memory one for unit tests.
//! [`Scratch`] buffers one command's writes so a refusal can drop them.

use std::collections::{BTreeMap, HashMap};

/// Domain column families. The storage layer maps each to a RocksDB column
/// family of the same name.
///
/// Encoded (in executed log entries) as its declaration index: append only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    Accounts,
    Records,
    Requests,
    BankRefs,
    /// card_no → `Card`.
    Cards,
    /// account ‖ seq → `RecordMeta` (ts of the record, loaded/reissued/reversed state).
    RecordIndex,
    /// account ‖ year → units bought in that calendar year (ladder tariffs).
    YearUnits,
    /// tariff_id → `TariffVersions`.
    Tariffs,
    /// invoice_no → `Invoice` (with print count).
    Invoices,
    /// report row keys (see `domain::reports`) → `ReportRow`.
    Reports,
    /// singletons: segment boundary, current heating season.
    Meta,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Accounts => "accounts",
            Family::Records => "records",
            Family::Requests => "requests",
            Family::BankRefs => "bank_refs",
            Family::Cards => "cards",
            Family::RecordIndex => "record_index",
            Family::YearUnits => "year_units",
            Family::Tariffs => "tariffs",
            Family::Invoices => "invoices",
            Family::Reports => "reports",
            Family::Meta => "domain_meta",
        }
    }
}

/// Point reads.
pub trait Get {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error>;
}

/// A write set; reads see this transaction's own earlier writes.
pub trait Txn: Get {
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, family: Family, key: Vec<u8>);
    /// Every write of `writes` (a finished command's), as puts and deletes.
    fn put_all(&mut self, writes: WriteSet) {
        for (family, key, value) in writes.into_sorted() {
            match value {
                Some(v) => self.put(family, key, v),
                None => self.delete(family, key),
            }
        }
    }
}

/// Most items one scan may return, whatever the caller asks.
pub const SCAN_LIMIT_MAX: usize = 1000;

/// A read-only view with bounded, ordered range scans.
pub trait ReadView: Get {
    /// Items with `start <= key < end` (an empty `end` means "no upper
    /// bound"), in key order (descending when `reverse`), at most
    /// `min(limit, SCAN_LIMIT_MAX)` of them.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        family: Family,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, std::io::Error>;
}

/// An in-memory [`Txn`] and [`ReadView`] for tests.
#[derive(Debug, Default, Clone)]
pub struct MemTxn {
    pub data: BTreeMap<(Family, Vec<u8>), Vec<u8>>,
}

impl Get for MemTxn {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        Ok(self.data.get(&(family, key.to_vec())).cloned())
    }
}

impl Txn for MemTxn {
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.data.insert((family, key), value);
    }
    fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.data.remove(&(family, key));
    }
}

impl ReadView for MemTxn {
    fn scan(
        &self,
        family: Family,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, std::io::Error> {
        use std::ops::Bound;
        let lo = Bound::Included((family, start.to_vec()));
        let hi = if end.is_empty() {
            // Every key of `family` sorts before the next family.
            match FAMILY_ORDER.get(family as usize + 1) {
                Some(next) => Bound::Excluded((*next, Vec::new())),
                None => Bound::Unbounded,
            }
        } else {
            Bound::Excluded((family, end.to_vec()))
        };
        if !end.is_empty() && start >= end {
            return Ok(Vec::new());
        }
        let limit = limit.min(SCAN_LIMIT_MAX);
        let range = self.data.range((lo, hi));
        let map = |((_, k), v): (&(Family, Vec<u8>), &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(map).collect()
        } else {
            range.take(limit).map(map).collect()
        })
    }
}

/// How many [`Family`] variants there are (the length of `domain::FAMILIES`).
pub const FAMILY_COUNT: usize = 11;

/// One family's keys → values (`None`: deleted), looked up by borrowed key.
pub type FamilyMap = HashMap<Vec<u8>, Option<Vec<u8>>, foldhash::fast::RandomState>;

/// Pending writes, one hash map per family: key → value (`None`: a
/// delete). A lookup borrows the key (no allocation, no ordered search),
/// which profiles of bulk imports showed mattered: ordered maps keyed by
/// `(Family, Vec<u8>)` cost a key copy per read and a dozen key compares
/// per read and write, ~15 % of a follower's CPU.
///
/// Deterministic: the maps are only looked up; writes leave a set only
/// through [`WriteSet::into_sorted`] (by family, then key) or
/// [`WriteSet::merge_into`] another set (keys are distinct, so the order
/// of moving them cannot change the result). Hash order never reaches
/// storage.
#[derive(Debug, Default)]
pub struct WriteSet {
    families: [FamilyMap; FAMILY_COUNT],
}

impl WriteSet {
    /// `Some(value)` when this set writes `key` (`Some(None)`: deletes it).
    pub fn get(&self, family: Family, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.families[family as usize].get(key)
    }

    /// Write (`Some`) or delete (`None`) `key`; a later write of a key
    /// replaces the earlier one.
    pub fn insert(&mut self, family: Family, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.families[family as usize].insert(key, value);
    }

    /// At least the bytes these writes take encoded in a log entry (keys,
    /// values, and a bound on each write's framing).
    pub fn encoded_bytes_bound(&self) -> usize {
        const FRAMING_BYTES_MAX: usize = 24;
        self.families
            .iter()
            .flat_map(|f| f.iter())
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + FRAMING_BYTES_MAX)
            .sum()
    }

    /// Distinct keys written.
    pub fn len(&self) -> usize {
        self.families.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.families.iter().all(HashMap::is_empty)
    }

    /// Every write, in `Family` order, then key order.
    #[allow(clippy::type_complexity)]
    pub fn into_sorted(self) -> Vec<(Family, Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::with_capacity(self.len());
        for (i, writes) in self.families.into_iter().enumerate() {
            let family = FAMILY_ORDER[i];
            let from = out.len();
            out.extend(writes.into_iter().map(|(k, v)| (family, k, v)));
            // Keys are distinct within a family: an unstable sort is exact.
            out[from..].sort_unstable_by(|a, b| a.1.cmp(&b.1));
        }
        out
    }

    /// Move every write into `dest` (replacing what `dest` wrote to the
    /// same keys); calls `each(key_len + value_len)` per write moved.
    pub fn merge_into(self, dest: &mut WriteSet, mut each: impl FnMut(usize)) {
        for (i, writes) in self.families.into_iter().enumerate() {
            for (k, v) in writes {
                each(k.len() + v.as_ref().map_or(0, Vec::len));
                dest.insert(FAMILY_ORDER[i], k, v);
            }
        }
    }
}

/// Every family, indexed by its discriminant (declaration order).
pub const FAMILY_ORDER: [Family; FAMILY_COUNT] = [
    Family::Accounts,
    Family::Records,
    Family::Requests,
    Family::BankRefs,
    Family::Cards,
    Family::RecordIndex,
    Family::YearUnits,
    Family::Tariffs,
    Family::Invoices,
    Family::Reports,
    Family::Meta,
];

/// One command's writes, buffered over a base view: reads see them; they
/// reach the base only through [`Scratch::into_writes`], so a refused
/// command (or an error half-way) leaves nothing behind.
pub struct Scratch<'a, G: Get + ?Sized> {
    base: &'a G,
    writes: WriteSet,
}

impl<'a, G: Get + ?Sized> Scratch<'a, G> {
    pub fn new(base: &'a G) -> Self {
        Scratch {
            base,
            writes: WriteSet::default(),
        }
    }

    pub fn into_writes(self) -> WriteSet {
        self.writes
    }
}

impl<G: Get + ?Sized> Get for Scratch<'_, G> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        match self.writes.get(family, key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(family, key),
        }
    }
}

impl<G: Get + ?Sized> Txn for Scratch<'_, G> {
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(family, key, Some(value));
    }
    fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.writes.insert(family, key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_order_is_indexed_by_discriminant() {
        assert_eq!(FAMILY_COUNT, crate::domain::FAMILIES.len());
        for (i, f) in FAMILY_ORDER.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}");
        }
        // Snapshot files name a family by its index: the order is fixed.
        let names: Vec<&str> = FAMILY_ORDER.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "accounts",
                "records",
                "requests",
                "bank_refs",
                "cards",
                "record_index",
                "year_units",
                "tariffs",
                "invoices",
                "reports",
                "domain_meta"
            ]
        );
    }

    fn writes() -> Vec<(Family, Vec<u8>, Option<Vec<u8>>)> {
        (0..200u32)
            .map(|i| {
                let family = FAMILY_ORDER[(i as usize * 7) % FAMILY_COUNT];
                let key = format!("k{}", (i * 7919) % 1000).into_bytes();
                let value = (i % 5 != 0).then(|| i.to_be_bytes().to_vec());
                (family, key, value)
            })
            .collect()
    }

    #[test]
    fn a_write_set_drains_sorted_whatever_the_insert_order() {
        let mut forward = WriteSet::default();
        let mut backward = WriteSet::default();
        let mut model: BTreeMap<(Family, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for (f, k, v) in writes() {
            forward.insert(f, k.clone(), v.clone());
            model.insert((f, k), v);
        }
        // Later writes win: insert the same final values in reverse,
        // each key once.
        for ((f, k), v) in model.iter().rev() {
            backward.insert(*f, k.clone(), v.clone());
        }
        assert_eq!(forward.len(), model.len());
        for ((f, k), v) in &model {
            assert_eq!(forward.get(*f, k), Some(v));
        }
        assert_eq!(forward.get(Family::Accounts, b"absent"), None);
        let want: Vec<_> = model.into_iter().map(|((f, k), v)| (f, k, v)).collect();
        assert_eq!(forward.into_sorted(), want);
        assert_eq!(backward.into_sorted(), want);
    }

    #[test]
    fn merging_replaces_and_counts_bytes() {
        let mut dest = WriteSet::default();
        dest.insert(Family::Accounts, b"a".to_vec(), Some(b"old".to_vec()));
        dest.insert(Family::Cards, b"c".to_vec(), Some(b"card".to_vec()));
        let mut src = WriteSet::default();
        src.insert(Family::Accounts, b"a".to_vec(), Some(b"new!".to_vec()));
        src.insert(Family::Meta, b"m".to_vec(), None);
        let mut bytes = 0;
        src.merge_into(&mut dest, |b| bytes += b);
        assert_eq!(bytes, (1 + 4) + 1);
        assert_eq!(dest.len(), 3);
        assert_eq!(
            dest.into_sorted(),
            vec![
                (Family::Accounts, b"a".to_vec(), Some(b"new!".to_vec())),
                (Family::Cards, b"c".to_vec(), Some(b"card".to_vec())),
                (Family::Meta, b"m".to_vec(), None),
            ]
        );
    }

    #[test]
    fn a_scratch_reads_its_own_writes_over_the_base() {
        let mut base = MemTxn::default();
        base.put(Family::Accounts, b"a".to_vec(), b"base".to_vec());
        base.put(Family::Accounts, b"b".to_vec(), b"base".to_vec());
        let mut s = Scratch::new(&base);
        s.put(Family::Accounts, b"a".to_vec(), b"mine".to_vec());
        s.delete(Family::Accounts, b"b".to_vec());
        assert_eq!(
            s.get(Family::Accounts, b"a").unwrap(),
            Some(b"mine".to_vec())
        );
        assert_eq!(s.get(Family::Accounts, b"b").unwrap(), None);
        assert_eq!(s.get(Family::Cards, b"a").unwrap(), None);
        let writes = s.into_writes();
        base.put_all(writes);
        assert_eq!(
            base.get(Family::Accounts, b"a").unwrap(),
            Some(b"mine".to_vec())
        );
        assert_eq!(base.get(Family::Accounts, b"b").unwrap(), None);
    }
}
