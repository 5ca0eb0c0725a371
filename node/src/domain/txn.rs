//! The narrow storage view the domain works through: point reads and
//! writes on named families ([`Get`], [`Txn`]) and bounded ordered range
//! scans for reads ([`ReadView`]). The RocksDB implementations live in
//! `store::state_machine`; [`MemTxn`] is the in-memory one for unit tests.
//! [`Scratch`] buffers one command's writes so a refusal can drop them.

use std::collections::BTreeMap;

/// Domain column families. The storage layer maps each to a RocksDB column
/// family of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
            match FAMILY_AFTER.iter().find(|(f, _)| *f == family) {
                Some((_, Some(next))) => Bound::Excluded((*next, Vec::new())),
                _ => Bound::Unbounded,
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

/// The family that follows each family in `Family`'s derived order.
const FAMILY_AFTER: &[(Family, Option<Family>)] = &[
    (Family::Accounts, Some(Family::Records)),
    (Family::Records, Some(Family::Requests)),
    (Family::Requests, Some(Family::BankRefs)),
    (Family::BankRefs, Some(Family::Cards)),
    (Family::Cards, Some(Family::RecordIndex)),
    (Family::RecordIndex, Some(Family::YearUnits)),
    (Family::YearUnits, Some(Family::Tariffs)),
    (Family::Tariffs, Some(Family::Invoices)),
    (Family::Invoices, Some(Family::Reports)),
    (Family::Reports, Some(Family::Meta)),
    (Family::Meta, None),
];

/// One command's writes, buffered over a base view: reads see them; they
/// reach the base only through [`Scratch::into_writes`], so a refused
/// command (or an error half-way) leaves nothing behind.
pub struct Scratch<'a, G: Get + ?Sized> {
    base: &'a G,
    writes: BTreeMap<(Family, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a, G: Get + ?Sized> Scratch<'a, G> {
    pub fn new(base: &'a G) -> Self {
        Scratch {
            base,
            writes: BTreeMap::new(),
        }
    }

    #[allow(clippy::type_complexity)]
    pub fn into_writes(self) -> BTreeMap<(Family, Vec<u8>), Option<Vec<u8>>> {
        self.writes
    }
}

impl<G: Get + ?Sized> Get for Scratch<'_, G> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        match self.writes.get(&(family, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(family, key),
        }
    }
}

impl<G: Get + ?Sized> Txn for Scratch<'_, G> {
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((family, key), Some(value));
    }
    fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.writes.insert((family, key), None);
    }
}
