//! billdb client library.
//!
//! Scope of this crate's files: `admin` talks HTTP to a node's admin API; `local`
//! manages a local multi-process cluster inside one directory it is given;
//! `backup`, `archive` and `migrate` use the node crate's storage code (they open
//! backups' RocksDB databases on this machine).
//!
//! - [`admin`]: blocking client of the `billdb-node` HTTP admin API.
//! - [`local`]: [`local::LocalCluster`], the local cluster manager behind
//!   `billdb local ...`, also used by integration tests, chaos and benchmarks.

pub mod admin;
pub mod archive;
pub mod backup;
pub mod certs;
pub mod client;
pub mod drill;
pub mod local;
pub mod migrate;
pub mod render;
pub mod tls;
