//! The narrow storage view the domain works through: point reads and
//! writes on named families. The RocksDB implementation lives in
//! `store::state_machine`; [`MemTxn`] is the in-memory one for unit tests.

use std::collections::BTreeMap;

/// Domain column families. The storage layer maps each to a RocksDB column
/// family of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Accounts,
    Records,
    Requests,
    BankRefs,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Accounts => "accounts",
            Family::Records => "records",
            Family::Requests => "requests",
            Family::BankRefs => "bank_refs",
        }
    }
}

/// Reads see this transaction's own earlier writes.
pub trait Txn {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error>;
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>);
    fn delete(&mut self, family: Family, key: Vec<u8>);
}

/// An in-memory [`Txn`] for tests.
#[derive(Debug, Default, Clone)]
pub struct MemTxn {
    pub data: BTreeMap<(Family, Vec<u8>), Vec<u8>>,
}

impl Txn for MemTxn {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        Ok(self.data.get(&(family, key.to_vec())).cloned())
    }
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.data.insert((family, key), value);
    }
    fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.data.remove(&(family, key));
    }
}
