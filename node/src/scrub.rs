//! The background scrub: reads every block of every column family with
//! checksum verification, once per `storage.scrub_interval_s` (default a
//! day), paced over the period so it costs little I/O, and reports the
//! first checksum failure to the storage guard (which fences the node and
//! repairs it from its peers: `repair`). Raft log entries also have their
//! own CRC-32 checked; a damaged one restarts the node to cut its log
//! there (`store::log_store::truncate_damaged_tail`). Reads bypass the block cache
//! (`fill_cache = false`) so the scrub neither evicts the working set nor
//! trusts a cached copy of a block it is meant to read from disk. The scan
//! goes in chunks, each with a fresh iterator, so no iterator pins old SST
//! files for long.
//!
//! May touch: the database (read only) and the guard's scrub status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::DB;

use crate::storage_guard::{StorageGuard, unix_ms};
use crate::store::{CF_RAFT_LOG, CF_RAFT_META, CF_SM_META, db_size_bytes};

/// Bytes (keys and values) one iterator reads before it is dropped.
const CHUNK_BYTES: u64 = 4 << 20;
/// The scrub never reads slower than this (a small database is still
/// verified within minutes of a start).
const RATE_BYTES_PER_S_MIN: u64 = 1 << 20;
/// A pass aims to end within this share of the interval.
const PASS_SHARE_PERCENT: u64 = 80;
/// How long the scrub waits after a start before its first pass.
const FIRST_PASS_DELAY_MS: u64 = 1_000;

/// Starts the scrub thread; `interval_s` = 0 turns it off.
pub fn spawn(db: Arc<DB>, guard: Arc<StorageGuard>, interval_s: u64) {
    guard.update_scrub(|s| s.interval_s = interval_s);
    if interval_s == 0 {
        tracing::warn!("storage.scrub_interval_s = 0: the background checksum scrub is off");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("scrub".into())
        .spawn(move || run(&db, &guard, Duration::from_secs(interval_s)));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the checksum scrub");
    }
}

fn families() -> Vec<&'static str> {
    let mut f = vec![CF_RAFT_LOG, CF_RAFT_META, CF_SM_META];
    f.extend(crate::domain::FAMILIES.iter().map(|f| f.name()));
    f
}

fn run(db: &DB, guard: &StorageGuard, interval: Duration) {
    std::thread::sleep(Duration::from_millis(FIRST_PASS_DELAY_MS));
    loop {
        if guard.failure().is_some() {
            return;
        }
        let started = Instant::now();
        let size = db_size_bytes(db).max(1);
        let pass_s = (interval.as_secs() * PASS_SHARE_PERCENT / 100).max(1);
        let rate = (size / pass_s).max(RATE_BYTES_PER_S_MIN);
        match pass(db, guard, rate) {
            Ok(bytes) => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                metrics::counter!("billdb_scrub_passes_total").increment(1);
                metrics::gauge!("billdb_scrub_last_pass_timestamp_seconds")
                    .set(unix_ms() as f64 / 1000.0);
                guard.update_scrub(|s| {
                    s.passes += 1;
                    s.last_pass_unix_ms = Some(unix_ms());
                    s.last_pass_ms = Some(ms);
                });
                tracing::debug!(bytes, ms, "checksum scrub pass done");
            }
            Err(e) => {
                if guard.check_corruption(&e) {
                    tracing::error!(error = %e, "checksum scrub: damage found");
                    return;
                }
                if guard.failure().is_some() {
                    return;
                }
                tracing::warn!(error = %e, "checksum scrub: a read failed; retrying next pass");
            }
        }
        let left = interval.saturating_sub(started.elapsed());
        std::thread::sleep(left);
    }
}

/// One pass over every family at `rate` bytes per second; bytes read, or
/// the first read error (RocksDB's text, naming file and offset).
pub fn pass(db: &DB, guard: &StorageGuard, rate: u64) -> Result<u64, String> {
    let started = Instant::now();
    let mut total = 0u64;
    for name in families() {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        let mut from: Option<Vec<u8>> = None;
        loop {
            if guard.failure().is_some() {
                return Ok(total);
            }
            let mut opts = rocksdb::ReadOptions::default();
            opts.set_verify_checksums(true);
            opts.fill_cache(false);
            let mode = match &from {
                Some(k) => rocksdb::IteratorMode::From(k, rocksdb::Direction::Forward),
                None => rocksdb::IteratorMode::Start,
            };
            let mut chunk = 0u64;
            let mut last: Option<Vec<u8>> = None;
            for item in db.iterator_cf_opt(cf, opts, mode) {
                let (k, v) = item.map_err(|e| e.to_string())?;
                if from.as_deref() == Some(&k[..]) {
                    continue;
                }
                if name == CF_RAFT_LOG {
                    crate::store::log_store::scrub_entry(db, &k, &v)?;
                }
                chunk += (k.len() + v.len()) as u64;
                last = Some(k.to_vec());
                if chunk >= CHUNK_BYTES {
                    break;
                }
            }
            total += chunk;
            metrics::counter!("billdb_scrub_bytes_total").increment(chunk);
            guard.update_scrub(|s| s.bytes_verified += chunk);
            // Pace: the bytes read so far may not run ahead of the rate.
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            match last {
                Some(k) if chunk >= CHUNK_BYTES => from = Some(k),
                _ => break,
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass reads what was written, in chunks, and counts it.
    #[test]
    fn a_pass_reads_every_family_in_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::open_db(&dir.path().join("db")).expect("open");
        let meta = db.cf_handle(CF_RAFT_META).expect("cf");
        let value = vec![7u8; 64 << 10];
        // 160 values of 64 KiB: 10 MiB, three chunks.
        for i in 0u64..160 {
            db.put_cf(meta, i.to_be_bytes(), &value).expect("put");
        }
        db.flush_cf(meta).expect("flush");
        let guard = StorageGuard::default();
        let read = pass(&db, &guard, u64::MAX).expect("pass");
        assert!(read >= 160 * (64 << 10), "read {read}");
        assert_eq!(guard.scrub().bytes_verified, read);
        assert!(guard.failure().is_none());
    }

    /// A Raft log value that fails its CRC stops the pass with an error
    /// naming the entry, which the guard reads as log damage.
    #[test]
    fn a_pass_checks_raft_log_entry_crcs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = crate::store::open_db(&dir.path().join("db")).expect("open");
        let log = db.cf_handle(CF_RAFT_LOG).expect("cf");
        db.put_cf(log, 5u64.to_be_bytes(), [0u8; 12]).expect("put");
        let guard = StorageGuard::default();
        let e = pass(&db, &guard, u64::MAX).expect_err("damage found");
        assert!(e.starts_with("Raft log entry 5 is damaged"), "{e}");
        assert_eq!(
            crate::storage_guard::FailureKind::of(&e),
            crate::storage_guard::FailureKind::LogDamaged
        );
        assert!(guard.check_corruption(&e));
        assert_eq!(
            guard.failure().map(|f| f.kind),
            Some(crate::storage_guard::FailureKind::LogDamaged)
        );
    }
}
