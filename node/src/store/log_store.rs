//! The Raft log and vote in RocksDB (`raft_log`, `raft_meta`).
//!
//! Durability: `append` writes the entries into RocksDB (readable at once)
//! and hands its callback to the flusher thread, which fsyncs the WAL once
//! for everything queued (group commit) and only then reports the entries
//! persisted. `save_vote` writes with `sync = true` before returning. All
//! writes happen on the caller in submission order, so log and vote I/O
//! stay serialised.
//!
//! Every stored entry carries a CRC-32 of its index and its encoding
//! ([`encode_entry`]), checked on every read, by the scrub, and at start
//! over the part of the log not yet applied ([`truncate_damaged_tail`]). A
//! damaged entry is never answered as data: the read fails, the index is
//! recorded, and the node restarts, cuts its log at the damage and fetches
//! the rest again from the leader (ARCHITECTURE.md "A damaged Raft log
//! entry is cut and fetched again").
//!
//! Reads of the newest entries (the state machine's apply, replication)
//! are answered from [`EntryCache`] when it holds the whole range; this
//! file keeps it equal to the log (see `entry_cache`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, entry::RaftEntry};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::entry_cache::EntryCache;
use super::{CF_RAFT_LOG, CF_RAFT_META, cf, decode, encode, io_err, sync_opts};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// How often a paused fsync looks for its pause file again.
const FAILPOINT_POLL_MS: u64 = 5;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";
const KEY_COMMITTED: &[u8] = b"committed";
/// After a repair from peers: no vote is granted until the log holds this
/// index (u64; absent: no fence). See `crate::repair`.
const KEY_VOTE_FENCE: &[u8] = b"vote_fence";
/// The lowest index a read found damaged (u64 big-endian; absent: none):
/// the next start verifies the log from there ([`truncate_damaged_tail`]).
const KEY_DAMAGED_FROM: &[u8] = b"damaged_from";
/// Bytes of the CRC-32 in front of every stored entry.
const ENTRY_CRC_BYTES: usize = 4;
/// How the error for a damaged entry begins; `storage_guard::FailureKind`
/// recognises it (a restart that cuts the log, not a repair of the whole
/// database).
pub const LOG_DAMAGE_TEXT: &str = "Raft log entry";

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// CRC-32 of an entry's index key and encoding: a flipped bit, a torn
/// value, or a value written under the wrong index all fail it.
fn entry_crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index_key(index));
    h.update(payload);
    h.finalize()
}

/// The stored form of `entry`: its CRC-32 (little-endian), then its
/// encoding.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, std::io::Error> {
    let mut out = vec![0u8; ENTRY_CRC_BYTES];
    crate::codec::encode_into(&mut out, entry).map_err(io_err)?;
    let crc = entry_crc(entry.log_id().index, &out[ENTRY_CRC_BYTES..]);
    out[..ENTRY_CRC_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The encoding inside the stored value of entry `index`, when its CRC
/// matches; otherwise why not.
pub(crate) fn check_entry(index: u64, raw: &[u8]) -> Result<&[u8], String> {
    let Some((crc, payload)) = raw.split_first_chunk::<ENTRY_CRC_BYTES>() else {
        return Err(format!("{} bytes, shorter than its checksum", raw.len()));
    };
    let stored = u32::from_le_bytes(*crc);
    let computed = entry_crc(index, payload);
    if stored != computed {
        return Err(format!(
            "its CRC-32 does not match (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(payload)
}

/// The entry stored under `index`, or why it cannot be vouched for.
fn decode_entry(index: u64, raw: &[u8]) -> Result<Entry, String> {
    let payload = check_entry(index, raw)?;
    let entry: Entry = decode(payload).map_err(|e| format!("it does not decode: {e}"))?;
    if entry.log_id().index != index {
        return Err(format!("it holds entry {}", entry.log_id().index));
    }
    Ok(entry)
}

/// The error a damaged entry is reported with (never its data).
pub fn damaged_error(index: u64, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{LOG_DAMAGE_TEXT} {index} is damaged: {why}"),
    )
}

/// The scrub's check of one stored entry (key and value as read): its
/// CRC. A damaged one is recorded ([`note_damage`]) and named in the error.
pub(crate) fn scrub_entry(db: &DB, key: &[u8], raw: &[u8]) -> Result<(), String> {
    let Some(index) = key_index(key) else {
        return Err(format!(
            "{LOG_DAMAGE_TEXT} key of {} bytes is damaged: not 8 bytes",
            key.len()
        ));
    };
    check_entry(index, raw).map(|_| ()).map_err(|why| {
        if let Err(e) = note_damage(db, index) {
            tracing::error!(index, error = %e, "could not record a damaged Raft log entry");
        }
        damaged_error(index, &why).to_string()
    })
}

/// Records that entry `index` was found damaged (the lowest such index is
/// kept), durable before this returns, so the next start cuts the log
/// there even when the entry lies in the applied part.
pub fn note_damage(db: &DB, index: u64) -> Result<(), std::io::Error> {
    let meta = cf(db, CF_RAFT_META)?;
    let known = damaged_from(db)?;
    if known.is_some_and(|k| k <= index) {
        return Ok(());
    }
    db.put_cf_opt(meta, KEY_DAMAGED_FROM, index.to_be_bytes(), &sync_opts())
        .map_err(io_err)
}

fn damaged_from(db: &DB) -> Result<Option<u64>, std::io::Error> {
    match db
        .get_cf(cf(db, CF_RAFT_META)?, KEY_DAMAGED_FROM)
        .map_err(io_err)?
    {
        None => Ok(None),
        Some(v) => Ok(key_index(&v)),
    }
}

/// What [`truncate_damaged_tail`] cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The first entry removed: the first one that failed verification.
    pub from_index: u64,
    /// The last index the log held before (the vote fence: no vote until
    /// the log holds it again).
    pub last_index_before: u64,
    pub reason: String,
}

/// At start, before the Raft core reads the log: verifies every entry not
/// yet applied, and every entry from the lowest one a read found damaged
/// ([`note_damage`]). At the first entry that fails (its CRC, its
/// encoding, its index, or missing where one must be), the log is cut
/// there, the committed index is lowered to the applied one when it was
/// past the cut, and a vote fence is set at the last index the log held,
/// all in one synced write. The node then fetches the cut entries again
/// from the leader (openraft sees a shorter log; a cut into the applied
/// part is purged up to the applied index at start) and grants no vote
/// until its log holds that index again, so it never helps elect a leader
/// that lacks an entry it acknowledged (the vote fence of `crate::repair`).
pub fn truncate_damaged_tail(db: &DB) -> Result<Option<Truncation>, std::io::Error> {
    let log = cf(db, CF_RAFT_LOG)?;
    let meta = cf(db, CF_RAFT_META)?;
    let applied = {
        let snap = db.snapshot();
        super::state_machine::applied_in(db, &snap)?
    };
    let marker = damaged_from(db)?;
    let purged: Option<LogId> = match db.get_cf(meta, KEY_PURGED).map_err(io_err)? {
        Some(v) => Some(decode(&v)?),
        None => None,
    };
    let first_kept = purged.map_or(0, |p| p.index + 1);
    let from = applied.map_or(0, |a| a.index + 1);
    let from = marker.map_or(from, |m| m.min(from)).max(first_kept);
    let strict_start = applied.is_some() || purged.is_some() || marker.is_some();
    let mut expected: Option<u64> = None;
    let mut damage: Option<(u64, String)> = None;
    for item in db.iterator_cf(
        log,
        IteratorMode::From(&index_key(from), Direction::Forward),
    ) {
        let (k, v) = item.map_err(io_err)?;
        let want = expected.unwrap_or(from);
        let Some(idx) = key_index(&k) else {
            damage = Some((want, format!("a key of {} bytes follows it", k.len())));
            break;
        };
        // Entries run without a gap from `from` to the end; only a log
        // that has applied and purged nothing may begin where it likes.
        if idx != want && (expected.is_some() || strict_start) {
            damage = Some((want, format!("it is missing; the next entry held is {idx}")));
            break;
        }
        if let Err(why) = decode_entry(idx, &v) {
            damage = Some((idx, why));
            break;
        }
        expected = Some(idx + 1);
    }
    let Some((cut, reason)) = damage else {
        if marker.is_some() {
            db.delete_cf_opt(meta, KEY_DAMAGED_FROM, &sync_opts())
                .map_err(io_err)?;
        }
        return Ok(None);
    };
    let last_index_before = match db.iterator_cf(log, IteratorMode::End).next() {
        Some(item) => key_index(&item.map_err(io_err)?.0).unwrap_or(cut),
        None => cut,
    };
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(log, index_key(cut), index_key(u64::MAX));
    batch.delete_cf(log, index_key(u64::MAX));
    let committed: Option<LogId> = match db.get_cf(meta, KEY_COMMITTED).map_err(io_err)? {
        Some(v) => decode::<Option<LogId>>(&v)?,
        None => None,
    };
    if committed.is_some_and(|c| c.index >= cut) {
        batch.put_cf(meta, KEY_COMMITTED, encode(&applied)?);
    }
    let fence = vote_fence(db)?.max(last_index_before);
    batch.put_cf(meta, KEY_VOTE_FENCE, fence.to_be_bytes());
    batch.delete_cf(meta, KEY_DAMAGED_FROM);
    db.write_opt(batch, &sync_opts()).map_err(io_err)?;
    Ok(Some(Truncation {
        from_index: cut,
        last_index_before,
        reason,
    }))
}

/// The fsync thread, shared by every clone of a [`LogStore`]. The last
/// clone to go closes the queue and waits for the thread, so the thread's
/// database handle is released before the store's is: the database closes
/// on the dropping thread, never on a thread still running while the
/// process exits (RocksDB aborts if it is torn down under it).
struct Flusher {
    tx: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            // The thread ends as soon as its queue is closed (after an fsync
            // in progress, if any).
            let _ = t.join();
        }
    }
}

/// When the WAL fsync in progress started, shared with the storage guard.
pub type FsyncWatch = Arc<std::sync::Mutex<Option<Instant>>>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
    /// Bytes of entries appended since the process started.
    appended_bytes: Arc<AtomicU64>,
    /// Index of the first entry not purged (0: nothing purged yet), shared
    /// with the network layer (`raft_net`), which uses it to spot a
    /// replication stream stuck on purged entries.
    first_kept_index: Arc<AtomicU64>,
    /// When the WAL fsync in progress started (`None`: none in progress):
    /// a disk that stalls shows here (`storage_guard::StorageGuard::degraded`).
    fsync_started: FsyncWatch,
    /// Where every saved vote is mirrored (`super::vote_mirror`), so
    /// a repair keeps it even when this database is damaged.
    vote_mirror: Option<PathBuf>,
    /// The newest entries as appended, shared by every clone (the readers
    /// of replication and apply).
    recent: Arc<Mutex<EntryCache>>,
}

impl LogStore {
    /// `fsync_pause_file`: a fault point for tests ([`fsync_pause_file`]):
    /// while that file exists, the fsync thread holds every sync, and so
    /// every append's completion.
    pub fn new(db: Arc<DB>, fsync_pause_file: Option<PathBuf>) -> Result<Self, std::io::Error> {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let flush_db = db.clone();
        let fsync_started = FsyncWatch::default();
        let watch = fsync_started.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || flusher(flush_db, rx, fsync_pause_file, watch))?;
        let store = LogStore {
            db,
            flusher: Arc::new(Flusher {
                tx: Some(tx),
                thread: Some(thread),
            }),
            appended_bytes: Arc::new(AtomicU64::new(0)),
            first_kept_index: Arc::new(AtomicU64::new(0)),
            fsync_started,
            vote_mirror: None,
            recent: Arc::default(),
        };
        let purged: Option<LogId> = store.get_meta(KEY_PURGED)?;
        if let Some(p) = purged {
            store.first_kept_index.store(p.index + 1, Ordering::Release);
        }
        Ok(store)
    }

    /// Mirror every saved vote into `dir` (`super::vote_mirror::write_vote`);
    /// the vote held now is mirrored at once.
    pub fn with_vote_mirror(mut self, dir: PathBuf) -> Result<Self, std::io::Error> {
        if let Some(v) = self.get_meta::<Vote>(KEY_VOTE)? {
            super::vote_mirror::write_vote(&dir, &v)?;
        }
        self.vote_mirror = Some(dir);
        Ok(self)
    }

    /// A new database after a repair: the vote the damaged one held and the
    /// vote fence, durable before this returns.
    pub fn restore_after_repair(
        &self,
        vote: Option<&Vote>,
        fence: u64,
    ) -> Result<(), std::io::Error> {
        let meta = cf(&self.db, CF_RAFT_META)?;
        let mut batch = rocksdb::WriteBatch::default();
        if let Some(v) = vote {
            batch.put_cf(meta, KEY_VOTE, encode(v)?);
        }
        batch.put_cf(meta, KEY_VOTE_FENCE, fence.to_be_bytes());
        self.db.write_opt(batch, &sync_opts()).map_err(io_err)?;
        if let (Some(dir), Some(v)) = (&self.vote_mirror, vote) {
            super::vote_mirror::write_vote(dir, v)?;
        }
        Ok(())
    }

    /// When the WAL fsync in progress started.
    pub fn fsync_watch(&self) -> FsyncWatch {
        self.fsync_started.clone()
    }

    /// The vote fence (0: none).
    pub fn vote_fence(&self) -> Result<u64, std::io::Error> {
        vote_fence(&self.db)
    }

    /// Index of the first log entry not purged (0 before any purge).
    pub fn first_kept_index(&self) -> Arc<AtomicU64> {
        self.first_kept_index.clone()
    }

    /// A counter of the entry bytes appended since the process started
    /// (read by the size-based snapshot trigger).
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended_bytes.clone()
    }

    /// The entry cache (a panic while it was held leaves it consistent:
    /// every change to it is a whole push or pop).
    fn recent(&self) -> MutexGuard<'_, EntryCache> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries in `range` from the first held at or after `start`. A
    /// purged beginning is the only absence the log may show: entries after
    /// a hole would be applied or sent as if consecutive, so a hole is an
    /// error. A bounded range the entry cache holds whole is answered from
    /// it.
    fn read_entries(
        &self,
        start: u64,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let end = match range.end_bound() {
            Bound::Included(x) => x.checked_add(1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(hit) = self.recent().get(start, end)
        {
            return Ok(hit);
        }
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut out: Vec<Entry> = Vec::new();
        let it = self.db.iterator_cf(
            cf,
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(io_err)?;
            let idx = key_index(&k).ok_or_else(|| io_err("a Raft log key is not 8 bytes"))?;
            if !range.contains(&idx) {
                break;
            }
            if let Some(prev) = out.last() {
                let expected = prev.log_id().index + 1;
                if idx != expected {
                    // Never answered as data: the core stops on this error
                    // and the storage guard takes the node out.
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "the Raft log has a hole: entry {expected} is missing before {idx}"
                        ),
                    ));
                }
            }
            out.push(self.checked(idx, &v)?);
        }
        Ok(out)
    }

    /// Entry `index` from its stored value; a damaged one is recorded
    /// ([`note_damage`]) and answered as an error, never as data.
    fn checked(&self, index: u64, raw: &[u8]) -> Result<Entry, std::io::Error> {
        decode_entry(index, raw).map_err(|why| {
            if let Err(e) = note_damage(&self.db, index) {
                tracing::error!(index, error = %e, "could not record a damaged Raft log entry");
            }
            damaged_error(index, &why)
        })
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, std::io::Error> {
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut it = self.db.iterator_cf(cf, IteratorMode::End);
        match it.next() {
            Some(Ok((k, v))) => {
                let idx = key_index(&k).ok_or_else(|| io_err("a Raft log key is not 8 bytes"))?;
                Ok(Some(self.checked(idx, &v)?.log_id()))
            }
            Some(Err(e)) => Err(io_err(e)),
            None => Ok(None),
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, std::io::Error> {
        match self
            .db
            .get_cf(cf(&self.db, CF_RAFT_META)?, key)
            .map_err(io_err)?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }
}

/// An entry as an archive of committed entries holds it: its index and its
/// stored form (CRC-32 ‖ encoding), verified.
pub type StoredEntry = (u64, Vec<u8>);

/// Up to `max_entries` stored entries (and about `max_bytes`) from `from`
/// through `upto`, each verified (CRC-32, encoding, index) before it is
/// answered: the log-archive route (`billdb backup archive`). `Ok(None)`
/// when `from` is no longer held (purged); a damaged entry is recorded
/// ([`note_damage`]) and answered as an error, never as data. Each comes
/// with the entry it decodes to (the check decodes it; callers reuse it).
pub fn read_stored(
    db: &DB,
    from: u64,
    upto: u64,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Option<Vec<(StoredEntry, Entry)>>, std::io::Error> {
    let cf = cf(db, CF_RAFT_LOG)?;
    let mut out: Vec<(StoredEntry, Entry)> = Vec::new();
    let mut bytes = 0usize;
    let it = db.iterator_cf(cf, IteratorMode::From(&index_key(from), Direction::Forward));
    for item in it {
        let (k, v) = item.map_err(io_err)?;
        let idx = key_index(&k).ok_or_else(|| io_err("a Raft log key is not 8 bytes"))?;
        if idx > upto || out.len() >= max_entries || (bytes >= max_bytes && !out.is_empty()) {
            break;
        }
        let expected = out.last().map_or(from, |((i, _), _)| i + 1);
        if idx != expected {
            if out.is_empty() {
                return Ok(None); // `from` was purged
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the Raft log has a hole: entry {expected} is missing before {idx}"),
            ));
        }
        let entry = decode_entry(idx, &v).map_err(|why| {
            if let Err(e) = note_damage(db, idx) {
                tracing::error!(index = idx, error = %e, "could not record a damaged Raft log entry");
            }
            damaged_error(idx, &why)
        })?;
        bytes += v.len();
        out.push(((idx, v.to_vec()), entry));
    }
    if out.is_empty() && from <= upto {
        return Ok(None);
    }
    Ok(Some(out))
}

/// Index of the first entry the log holds (`None`: it is empty).
pub fn first_held_index(db: &DB) -> Result<Option<u64>, std::io::Error> {
    let cf = cf(db, CF_RAFT_LOG)?;
    match db.iterator_cf(cf, IteratorMode::Start).next() {
        Some(Ok((k, _))) => Ok(key_index(&k)),
        Some(Err(e)) => Err(io_err(e)),
        None => Ok(None),
    }
}

/// The entry in a stored value read back from an archive: CRC-32,
/// encoding and index checked, or why not.
pub fn decode_stored(index: u64, raw: &[u8]) -> Result<Entry, String> {
    decode_entry(index, raw)
}

/// The vote fence stored in `db` (0: none).
pub fn vote_fence(db: &DB) -> Result<u64, std::io::Error> {
    match db
        .get_cf(cf(db, CF_RAFT_META)?, KEY_VOTE_FENCE)
        .map_err(io_err)?
    {
        None => Ok(0),
        Some(v) => {
            let b: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "vote fence is not 8 bytes")
            })?;
            Ok(u64::from_be_bytes(b))
        }
    }
}

/// Lifts the vote fence (durable before this returns).
pub fn clear_vote_fence(db: &DB) -> Result<(), std::io::Error> {
    db.delete_cf_opt(cf(db, CF_RAFT_META)?, KEY_VOTE_FENCE, &sync_opts())
        .map_err(io_err)
}

/// The WAL-fsync fault point's pause file in `data_dir`, when the
/// environment turns fault points on (`billdb_api::failpoints`).
pub fn fsync_pause_file(data_dir: &std::path::Path) -> Option<PathBuf> {
    use billdb_api::failpoints;
    (std::env::var(failpoints::ENV).as_deref() == Ok("1"))
        .then(|| data_dir.join(failpoints::FSYNC_PAUSE_FILE))
}

/// Group commit: wait for at least one callback, take all queued ones, fsync
/// the WAL once, then complete them. Exits when every sender is gone.
fn flusher(
    db: Arc<DB>,
    rx: mpsc::Receiver<IOFlushed<TypeConfig>>,
    pause_file: Option<PathBuf>,
    watch: FsyncWatch,
) {
    let mark = |v: Option<Instant>| {
        if let Ok(mut w) = watch.lock() {
            *w = v;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let started = Instant::now();
        mark(Some(started));
        let result = sync_wal(&db, pause_file.as_deref());
        mark(None);
        metrics::histogram!("billdb_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("billdb_wal_fsync_batch_callbacks").record(batch.len() as f64);
        if let Err(e) = &result {
            // Never retried: the kernel may have dropped the pages an fsync
            // failed on. The Raft core stops on this error and the storage
            // guard restarts the node from what is on disk.
            tracing::error!(error = %e, "WAL fsync failed; the Raft log is no longer durable here");
        }
        for cb in batch {
            cb.io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// fsync the WAL. The fault points sit here, in the sync itself, so a
/// completion reported before the sync would show up as an acknowledged
/// write while syncs are held (`writes_are_acknowledged_only_after_a_majority_fsynced`).
/// Beside the pause file, a `failpoint-wal-fsync-error` file makes the next
/// sync fail as a disk's EIO would (the file is removed: one failure).
fn sync_wal(db: &DB, pause_file: Option<&std::path::Path>) -> Result<(), String> {
    if let Some(p) = pause_file {
        while p.exists() {
            std::thread::sleep(std::time::Duration::from_millis(FAILPOINT_POLL_MS));
        }
        if let Some(dir) = p.parent() {
            let error_file = dir.join(billdb_api::failpoints::FSYNC_ERROR_FILE);
            if std::fs::remove_file(&error_file).is_ok() {
                return Err("fault point: fsync returned EIO (Input/output error)".into());
            }
        }
    }
    db.flush_wal(true).map_err(|e| e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        self.read_entries(start, range)
    }

    /// For replication: the entries from `start` on, or none when `start`
    /// itself is purged. The default (`try_get_log_entries`) may begin
    /// after a purged start, and openraft 0.10.0-alpha.37 then sends them
    /// as if they followed `start - 1` (checked only by a debug assertion,
    /// on both sides): a follower would take entries after a hole. An empty
    /// answer makes openraft send an empty request for the old range, which
    /// `raft_net` counts as stale and ends the stream on, and the follower
    /// is then caught up by snapshot.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, std::io::Error> {
        // openraft bounds `end` by `raft.max_payload_entries`.
        let out = self.read_entries(start, start..end)?;
        if out.first().is_some_and(|e| e.log_id().index != start) {
            return Ok(Vec::new());
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let started = Instant::now();
        self.db
            .put_cf_opt(
                cf(&self.db, CF_RAFT_META)?,
                KEY_VOTE,
                encode(vote)?,
                &sync_opts(),
            )
            .map_err(io_err)?;
        if let Some(dir) = &self.vote_mirror {
            super::vote_mirror::write_vote(dir, vote)?;
        }
        metrics::histogram!("billdb_vote_save_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        // Not synced: an older committed index after a crash only delays
        // re-apply; it is never ahead of the durable log.
        self.db
            .put_cf(
                cf(&self.db, CF_RAFT_META)?,
                KEY_COMMITTED,
                encode(&committed)?,
            )
            .map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        let mut batch = WriteBatch::default();
        let mut bytes = 0u64;
        let mut appended = Vec::new();
        for entry in entries {
            let value = encode_entry(&entry)?;
            bytes += value.len() as u64;
            batch.put_cf(cf, index_key(entry.log_id().index), &value);
            appended.push((entry, value.len()));
        }
        self.db.write(batch).map_err(io_err)?;
        // Only once RocksDB holds them (see `entry_cache`).
        let mut recent = self.recent();
        for (entry, stored_bytes) in appended {
            recent.push(entry, stored_bytes);
        }
        drop(recent);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.flusher
            .tx
            .as_ref()
            .ok_or_else(|| io_err("log flusher is closed"))?
            .send(callback)
            .map_err(|_| io_err("log flusher thread is gone"))?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        // Before RocksDB: the cache never holds what the log does not.
        self.recent().truncate_from(from);
        let cf = cf(&self.db, CF_RAFT_LOG)?;
        self.db
            .delete_range_cf(cf, index_key(from), index_key(u64::MAX))
            .map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        self.recent().purge_upto(log_id.index);
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_RAFT_META)?, KEY_PURGED, encode(&log_id)?);
        batch.delete_range_cf(
            cf(&self.db, CF_RAFT_LOG)?,
            index_key(0),
            index_key(log_id.index + 1),
        );
        self.db.write(batch).map_err(io_err)?;
        self.first_kept_index
            .fetch_max(log_id.index + 1, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LogId;
    use openraft::storage::RaftLogStorage;

    use crate::store::entry_cache::test_entries::{blank_in, ids};

    fn blank(index: u64) -> Entry {
        blank_in(1, index)
    }

    /// Entries 1..=10 with 3 and 4 missing (a hole a bug could leave) and
    /// 1..=2 purged away afterwards.
    fn store_with_hole() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(&dir.path().join("db")).unwrap();
        let cf = cf(&db, CF_RAFT_LOG).unwrap();
        for i in (1..=10).filter(|i| !(3..=4).contains(i)) {
            db.put_cf(cf, index_key(i), encode_entry(&blank(i)).unwrap())
                .unwrap();
        }
        let store = LogStore::new(db, None).unwrap();
        (dir, store)
    }

    fn indexes(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.log_id().index).collect()
    }

    /// What the entry cache answers is what RocksDB holds, through
    /// appends, a new term's entries after a truncation, and a purge; what
    /// it does not hold whole is read from RocksDB.
    #[test]
    fn cached_reads_equal_the_log_through_truncation_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(&dir.path().join("db")).unwrap();
        let mut store = LogStore::new(db.clone(), None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = ((1..=10).map(|i| blank_in(1, i)), IOFlushed::noop());
            store.append(a, b).await.unwrap();
            let last_kept = blank_in(1, 6).log_id();
            store.truncate_after(Some(last_kept)).await.unwrap();
            assert!(store.recent().get(7, 8).is_none(), "truncated");
            assert_eq!(ids(&store.read_entries(6, 6..=20).unwrap()), [(1, 6)]);
            let (a, b) = ((7..=9).map(|i| blank_in(2, i)), IOFlushed::noop());
            store.append(a, b).await.unwrap();
            store.purge(blank_in(1, 2).log_id()).await.unwrap();
        });
        // A second store on the same database starts with an empty cache:
        // it reads RocksDB.
        let cold = LogStore::new(db, None).unwrap();
        let want = [(1, 3), (1, 4), (1, 5), (1, 6), (2, 7), (2, 8), (2, 9)];
        assert_eq!(ids(&cold.read_entries(0, 0..=20).unwrap()), want);
        for (start, end) in [(3, 10), (3, 7), (6, 8), (7, 10), (9, 10)] {
            let hot = store.recent().get(start, end).expect("held");
            let disk = cold.read_entries(start, start..end).unwrap();
            assert_eq!(ids(&hot), ids(&disk), "{start}..{end}");
        }
        assert!(store.recent().get(2, 4).is_none(), "purged");
        assert!(store.recent().get(9, 11).is_none(), "truncated");
        assert_eq!(ids(&store.read_entries(0, 0..=20).unwrap()), want);
        assert_eq!(ids(&store.read_entries(7, 7..=20).unwrap()), want[4..]);
    }

    /// A hole inside a read is an error, never entries that do not follow
    /// each other; a replication read whose start is missing returns
    /// nothing (openraft would send what follows as if it followed the
    /// start).
    #[test]
    fn reads_refuse_a_hole_and_replication_reads_need_their_start() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_dir, mut store) = store_with_hole();
            let mut reader = store.get_log_reader().await;
            let e = reader.try_get_log_entries(1..=10).await.unwrap_err();
            assert!(e.to_string().contains("entry 3 is missing"), "{e}");
            assert_eq!(
                indexes(&reader.try_get_log_entries(1..=2).await.unwrap()),
                [1, 2]
            );
            assert_eq!(
                indexes(&reader.try_get_log_entries(3..=10).await.unwrap()),
                [5, 6, 7, 8, 9, 10],
                "a missing beginning is allowed (purged entries)"
            );
            assert!(
                reader
                    .limited_get_log_entries(3, 8)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                indexes(&reader.limited_get_log_entries(5, 8).await.unwrap()),
                [5, 6, 7]
            );
        });
    }

    /// A store with entries 1..=10 and the state machine applied to
    /// `applied`; committed at 10.
    fn store_applied(applied: u64) -> (tempfile::TempDir, Arc<DB>) {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(&dir.path().join("db")).unwrap();
        let log = cf(&db, CF_RAFT_LOG).unwrap();
        for i in 1..=10 {
            db.put_cf(log, index_key(i), encode_entry(&blank(i)).unwrap())
                .unwrap();
        }
        let meta = cf(&db, CF_RAFT_META).unwrap();
        db.put_cf(
            meta,
            KEY_COMMITTED,
            encode(&Some(blank(10).log_id())).unwrap(),
        )
        .unwrap();
        let sm = cf(&db, super::super::CF_SM_META).unwrap();
        db.put_cf(
            sm,
            super::super::checkpoint::KEY_APPLIED,
            encode(&Some(blank(applied).log_id())).unwrap(),
        )
        .unwrap();
        (dir, db)
    }

    fn flip(db: &DB, index: u64, at: usize) {
        let log = cf(db, CF_RAFT_LOG).unwrap();
        let mut v = db.get_cf(log, index_key(index)).unwrap().unwrap();
        v[at] ^= 0x40;
        db.put_cf(log, index_key(index), v).unwrap();
    }

    fn held(db: &DB) -> Vec<u64> {
        let log = cf(db, CF_RAFT_LOG).unwrap();
        db.iterator_cf(log, IteratorMode::Start)
            .map(|i| key_index(&i.unwrap().0).unwrap())
            .collect()
    }

    fn committed(db: &DB) -> Option<u64> {
        let meta = cf(db, CF_RAFT_META).unwrap();
        let raw = db.get_cf(meta, KEY_COMMITTED).unwrap().unwrap();
        decode::<Option<LogId>>(&raw).unwrap().map(|l| l.index)
    }

    /// A flipped byte in an entry not yet applied: found at start, the log
    /// cut there, committed lowered to applied, the vote fenced at the old
    /// last index. A sound log is left alone.
    #[test]
    fn start_cuts_the_log_at_a_damaged_unapplied_entry() {
        let (_dir, db) = store_applied(6);
        assert_eq!(truncate_damaged_tail(&db).unwrap(), None);
        assert_eq!(held(&db).len(), 10);
        flip(&db, 8, 7);
        let t = truncate_damaged_tail(&db).unwrap().expect("damage found");
        assert_eq!((t.from_index, t.last_index_before), (8, 10));
        assert!(t.reason.contains("CRC-32 does not match"), "{}", t.reason);
        assert_eq!(held(&db), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(committed(&db), Some(6));
        assert_eq!(vote_fence(&db).unwrap(), 10);
        assert_eq!(truncate_damaged_tail(&db).unwrap(), None, "cut once");
    }

    /// Damage in the applied part is seen by a read, which answers an
    /// error (never the entry) and records the index; the next start cuts
    /// the log there. An entry stored under another index, a lost one and
    /// a torn one are damage too.
    #[test]
    fn a_read_that_finds_damage_records_it_for_the_next_start() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (_dir, db) = store_applied(10);
        flip(&db, 4, 0);
        assert_eq!(
            truncate_damaged_tail(&db).unwrap(),
            None,
            "applied: not scanned"
        );
        let mut store = LogStore::new(db.clone(), None).unwrap();
        let e = rt.block_on(store.try_get_log_entries(1..=10)).unwrap_err();
        assert!(
            e.to_string().starts_with("Raft log entry 4 is damaged"),
            "{e}"
        );
        assert_eq!(damaged_from(&db).unwrap(), Some(4));
        let t = truncate_damaged_tail(&db).unwrap().expect("damage found");
        assert_eq!((t.from_index, t.last_index_before), (4, 10));
        assert_eq!(held(&db), [1, 2, 3]);
        assert_eq!(damaged_from(&db).unwrap(), None);
        assert_eq!(
            committed(&db),
            Some(10),
            "never raised; here already applied"
        );

        let (_dir, db) = store_applied(2);
        let log = cf(&db, CF_RAFT_LOG).unwrap();
        db.put_cf(
            log,
            index_key(5),
            db.get_cf(log, index_key(6)).unwrap().unwrap(),
        )
        .unwrap();
        let t = truncate_damaged_tail(&db)
            .unwrap()
            .expect("misplaced entry");
        assert_eq!(t.from_index, 5);

        let (_dir, db) = store_applied(2);
        let log = cf(&db, CF_RAFT_LOG).unwrap();
        db.delete_cf(log, index_key(7)).unwrap();
        let t = truncate_damaged_tail(&db).unwrap().expect("hole");
        assert_eq!(t.from_index, 7);
        assert!(t.reason.contains("missing"), "{}", t.reason);

        let (_dir, db) = store_applied(2);
        db.put_cf(log_cf(&db), index_key(3), [1u8, 2]).unwrap();
        let t = truncate_damaged_tail(&db).unwrap().expect("torn");
        assert_eq!(t.from_index, 3);
        assert!(
            t.reason.contains("shorter than its checksum"),
            "{}",
            t.reason
        );
    }

    fn log_cf(db: &DB) -> &rocksdb::ColumnFamily {
        cf(db, CF_RAFT_LOG).unwrap()
    }
}
