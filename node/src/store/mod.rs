//! Storage: one RocksDB per node holding the Raft log, the vote and the
//! state machine in separate column families. It may touch the disk under
//! the node's data directory and nothing else.
//!
//! | family      | key                     | value                          |
//! |-------------|-------------------------|--------------------------------|
//! | `raft_log`  | log index (u64 BE)      | bincode `Entry`                |
//! | `raft_meta` | `vote`, `purged`, `committed` | bincode                  |
//! | `sm_meta`   | `applied`, `membership`, `installing` | bincode          |
//! | domain      | see `domain::keys`      | bincode domain types           |
//!
//! All families share one WAL: a synced write makes every earlier write
//! durable, and a write batch across families is atomic.

pub mod apply_cache;
pub mod apply_results;
pub mod checkpoint;
pub mod entry_cache;
pub mod log_store;
pub mod snapshot;
pub mod state_machine;
pub mod vote_mirror;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType,
    Options,
};

pub use log_store::LogStore;
pub use state_machine::StateMachine;

use crate::domain::FAMILIES;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_SM_META: &str = "sm_meta";

/// Upper bound on the total WAL size before RocksDB flushes memtables of
/// the families holding it back.
const WAL_SIZE_BYTES_MAX: u64 = 256 << 20;
/// All memtables of all column families together (RocksDB flushes the
/// largest when the sum passes this): memory stays bounded whatever the load.
const MEMTABLES_SIZE_BYTES_MAX: usize = 256 << 20;
/// One block cache shared by every column family (data, index and filter
/// blocks).
const BLOCK_CACHE_SIZE_BYTES: usize = 256 << 20;
/// Size of one partition of an SST file's index or bloom filter.
const METADATA_BLOCK_SIZE_BYTES: usize = 4096;
/// Bloom filter bits per key for point-read families: a miss (a new
/// request_id, an unused bank reference) costs no disk read.
const BLOOM_BITS_PER_KEY: f64 = 10.0;
/// One memtable of a domain family. Inserts of random keys (request ids,
/// accounts, records) cost a skip-list search that grows with the
/// memtable, and profiles showed them as apply's largest cost; small
/// memtables keep that search short.
const DOMAIN_MEMTABLE_SIZE_BYTES: usize = 16 << 20;
/// Share of each point-read family's memtable given to its bloom filter.
const MEMTABLE_BLOOM_RATIO: f64 = 0.05;

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    crate::codec::encode(v).map_err(io_err)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, std::io::Error> {
    crate::codec::decode(raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Open (or create) the node's RocksDB with every column family.
pub fn open_db(path: &Path) -> Result<Arc<DB>, std::io::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_total_wal_size(WAL_SIZE_BYTES_MAX);
    opts.set_db_write_buffer_size(MEMTABLES_SIZE_BYTES_MAX);
    opts.increase_parallelism(2);
    let cache = Cache::new_lru_cache(BLOCK_CACHE_SIZE_BYTES);
    let table = |bloom: bool| {
        let mut t = BlockBasedOptions::default();
        t.set_block_cache(&cache);
        t.set_cache_index_and_filter_blocks(true);
        t.set_cache_index_and_filter_blocks_with_high_priority(true);
        t.set_pin_l0_filter_and_index_blocks_in_cache(true);
        // Partitioned index and filters: a point read or a scan brings one
        // small partition into the cache, not a whole SST file's index or
        // filter. With whole filters, at 48 M records the filters no longer
        // fit the cache and every negative lookup of apply (a new request
        // id, card, invoice number) read and checksummed a filter block of
        // about a megabyte from the file: the bulk load fell from 13,000
        // to 3,000 records/s. Only the small top-level blocks stay pinned.
        t.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        t.set_metadata_block_size(METADATA_BLOCK_SIZE_BYTES);
        t.set_pin_top_level_index_and_filter(true);
        if bloom {
            t.set_bloom_filter(BLOOM_BITS_PER_KEY, false);
            t.set_partition_filters(true);
        }
        t
    };

    let mut log_opts = Options::default();
    // Sequential keys, read by range: no bloom filter, no compression cost.
    log_opts.set_compression_type(DBCompressionType::None);
    log_opts.set_block_based_table_factory(&table(false));

    let mut cfs = vec![
        ColumnFamilyDescriptor::new(CF_RAFT_LOG, log_opts),
        ColumnFamilyDescriptor::new(CF_RAFT_META, Options::default()),
        ColumnFamilyDescriptor::new(CF_SM_META, Options::default()),
    ];
    for family in FAMILIES {
        let mut o = Options::default();
        o.set_level_compaction_dynamic_level_bytes(true);
        o.set_write_buffer_size(DOMAIN_MEMTABLE_SIZE_BYTES);
        // LZ4 on every level, the bottom one too. With zstd at the bottom,
        // compaction took 17-20 us of the ~127 us of node CPU per record of
        // a 7-year bulk load (1.8 M records; about a quarter of the load's
        // CPU at full scale, mostly zstd); with LZ4 it took 3-5 us, the
        // load used about 6 % less node CPU and the data about 15 % more
        // disk (zstd at level 1 saved little). See docs/BENCHMARKS.md.
        o.set_compression_type(DBCompressionType::Lz4);
        // Families read by key get bloom filters; `records` and `reports`
        // are read by range scans, where whole-key filters do not help.
        let scanned = matches!(
            family,
            crate::domain::Family::Records | crate::domain::Family::Reports
        );
        o.set_block_based_table_factory(&table(!scanned));
        if !scanned {
            // A whole-key bloom filter on the memtable too: a lookup of a
            // key the memtable does not hold (every new request_id) skips
            // the skip-list search.
            o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
            o.set_memtable_whole_key_filtering(true);
        }
        cfs.push(ColumnFamilyDescriptor::new(family.name(), o));
    }
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(io_err)?;
    check_format(&db)?;
    Ok(Arc::new(db))
}

/// Version of what this build writes into the database (the bincode shapes
/// of log entries and domain values). 2: accounts carry `last_purchase`
/// beside `last_purchase_seq`; 3: `last_purchase` only; 4: log entries
/// carry a batch of commands, invoice numbers come from one counter; 5:
/// the compact encoding of [`crate::codec`] (variable-length integers,
/// decimals as scale and mantissa); 6: no stored invoice number that was
/// imported has the form of the numbers billdb assigns
/// (`invoices::is_assigned_form`), so an assigned number is known new
/// without a lookup. A format-5 database may hold such a legacy number,
/// which an assigned one would then silently overwrite. 7: every Raft log
/// entry is stored behind a CRC-32 of its index and encoding
/// (`log_store::encode_entry`).
pub const DATA_FORMAT: u32 = 7;
/// The stamp is 4 bytes, u32 little-endian, in every format (it was
/// fixed-width bincode before format 5), so any build can read any stamp.
const KEY_FORMAT: &[u8] = b"data_format";

fn format_stamp(format: u32) -> [u8; 4] {
    format.to_le_bytes()
}

fn read_format_stamp(raw: &[u8]) -> Result<u32, std::io::Error> {
    let bytes: [u8; 4] = raw.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the data format stamp is {} bytes, not 4", raw.len()),
        )
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// A new database gets this build's format; an existing one must already
/// have it. Data written by another format would fail to decode halfway
/// through applying the log, so refuse at start with a message instead.
fn check_format(db: &DB) -> Result<(), std::io::Error> {
    let meta = cf(db, CF_SM_META)?;
    match db.get_cf(meta, KEY_FORMAT).map_err(io_err)? {
        Some(v) => {
            let found = read_format_stamp(&v)?;
            if found != DATA_FORMAT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the data directory holds billdb data format {found}; this build reads format {DATA_FORMAT}: use the build that wrote it, or remove the directory and let the node catch up from the cluster"
                    ),
                ));
            }
            Ok(())
        }
        None => {
            let holds_data = |family: &str| -> Result<bool, std::io::Error> {
                let mut it = db.iterator_cf(cf(db, family)?, rocksdb::IteratorMode::Start);
                Ok(it.next().is_some())
            };
            if holds_data(CF_RAFT_LOG)? || holds_data(CF_RAFT_META)? || holds_data(CF_SM_META)? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the data directory was written by an older billdb (data format 1); this build reads format {DATA_FORMAT}: remove the directory (e.g. `billdb local down` and delete it) or use the older build"
                    ),
                ));
            }
            db.put_cf_opt(meta, KEY_FORMAT, format_stamp(DATA_FORMAT), &sync_opts())
                .map_err(io_err)
        }
    }
}

/// Write options of the writes that must be on disk when they return (vote,
/// snapshot install, the data format stamp).
pub(crate) fn sync_opts() -> rocksdb::WriteOptions {
    let mut o = rocksdb::WriteOptions::default();
    o.set_sync(true);
    o
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, std::io::Error> {
    db.cf_handle(name)
        .ok_or_else(|| io_err(format!("column family {name} missing")))
}

/// Total size of the database's live SST files plus WAL, for metrics/status.
pub fn db_size_bytes(db: &DB) -> u64 {
    let sst: u64 = db
        .live_files()
        .map(|files| files.iter().map(|f| f.size as u64).sum())
        .unwrap_or(0);
    let mem = db
        .property_int_value("rocksdb.cur-size-all-mem-tables")
        .ok()
        .flatten()
        .unwrap_or(0);
    sst + mem
}

/// Live SST bytes per column family (name, bytes), in family order of
/// first appearance: what takes the disk, for metrics.
pub fn family_sst_bytes(db: &DB) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let Ok(files) = db.live_files() else {
        return out;
    };
    for f in files {
        match out.iter_mut().find(|(n, _)| *n == f.column_family_name) {
            Some((_, b)) => *b += f.size as u64,
            None => out.push((f.column_family_name.clone(), f.size as u64)),
        }
    }
    out
}

/// Every column family's memtables (active and immutable, not yet
/// flushed): family name, entries, bytes. Each write of a key adds an
/// entry, so a key rewritten often (a report row, `applied`) holds many
/// entries until the next flush, and every insert searches them all.
pub fn family_memtables(db: &DB) -> Vec<(String, u64, u64)> {
    let mut names: Vec<&str> = vec![CF_RAFT_LOG, CF_RAFT_META, CF_SM_META];
    names.extend(FAMILIES.iter().map(|f| f.name()));
    let int = |cf: &rocksdb::ColumnFamily, prop: &str| {
        db.property_int_value_cf(cf, prop)
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    names
        .into_iter()
        .filter_map(|name| {
            let cf = db.cf_handle(name)?;
            let entries = int(cf, "rocksdb.num-entries-active-mem-table")
                + int(cf, "rocksdb.num-entries-imm-mem-tables");
            Some((
                name.to_string(),
                entries,
                int(cf, "rocksdb.cur-size-all-mem-tables"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new database is stamped with this build's format and reopens; one
    /// holding Raft data but no stamp (an older build's), or another
    /// stamp, is refused with a message naming the formats.
    #[test]
    fn data_format_is_stamped_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(open_db(&path).unwrap());
        drop(open_db(&path).unwrap());

        // An older build: Raft data, no stamp.
        {
            let db = open_db(&path).unwrap();
            db.put_cf(cf(&db, CF_RAFT_META).unwrap(), b"vote", b"x")
                .unwrap();
            db.delete_cf(cf(&db, CF_SM_META).unwrap(), KEY_FORMAT)
                .unwrap();
        }
        let Err(e) = open_db(&path) else {
            panic!("older data must be refused")
        };
        assert!(e.to_string().contains("data format 1"), "{e}");

        // Stamps of formats before 5 were fixed-width bincode u32: the same
        // four bytes, so an older data directory is named, not misread.
        assert_eq!(bincode::serialize(&4u32).unwrap(), format_stamp(4));
        assert_eq!(read_format_stamp(&format_stamp(4)).unwrap(), 4);

        // Another format's stamp.
        let other = dir.path().join("other");
        {
            let db = open_db(&other).unwrap();
            db.put_cf(
                cf(&db, CF_SM_META).unwrap(),
                KEY_FORMAT,
                format_stamp(DATA_FORMAT + 1),
            )
            .unwrap();
        }
        let Err(e) = open_db(&other) else {
            panic!("another format must be refused")
        };
        assert!(
            e.to_string()
                .contains(&format!("format {}", DATA_FORMAT + 1)),
            "{e}"
        );
    }
}
