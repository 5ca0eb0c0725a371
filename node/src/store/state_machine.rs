//! The replicated state machine on RocksDB: applies committed entries —
//! an entry carrying the leader's results by writing its write set
//! (`apply_results`), an older one through [`crate::domain::apply`] — and
//! builds and installs snapshots.
//!
//! Each apply call is one atomic write batch holding the domain writes, the
//! request (idempotency) entries, `applied` and, when it changed,
//! `membership`. Responders are answered only after the batch is written.
//! The batch is not fsync'd itself: the next synced Raft write (log fsync,
//! vote) makes it durable through the shared WAL, and after a crash the
//! state is a consistent prefix that openraft re-applies from the log.
//!
//! Snapshot install is redo-logged: the verified file stays on disk and
//! `installing` in `sm_meta` names it until the swap is complete, so a
//! crash mid-install is finished on the next open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::read_fence::ReadFence;
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, entry::RaftEntry};
use rocksdb::{DB, IteratorMode, WriteBatch};
use sha2::{Digest, Sha256};

use super::apply_cache::ApplyCache;
use super::checkpoint::{
    self, CHECKPOINT_PREFIX, KEY_APPLIED, KEY_MEMBERSHIP, SnapshotHandle, fsync_dir,
};
use super::snapshot::{SnapshotFile, SnapshotReader, verify};
use super::{CF_SM_META, cf, decode, encode, io_err, sync_opts};
use crate::domain::{self, FAMILIES, Family, Get, ReadView, Txn, WriteSet};
use crate::types::{BatchReply, CommandReply, LogId, SnapshotMeta, StoredMembership, TypeConfig};

const KEY_INSTALLING: &[u8] = b"installing";

/// When apply writes what it has gathered: a stream of committed entries
/// becomes one RocksDB write batch (with `applied`) until one bound is hit.
#[derive(Clone, Copy, Debug)]
pub struct ApplyLimits {
    /// Most entries applied in one write batch.
    pub entries_max: usize,
    /// Most client commands (entries carry batches of them) in one write.
    pub commands_max: u64,
    /// Most bytes (keys + values) in one write. A follower that lags
    /// receives entries faster than it applies them; without a byte bound
    /// 4,096 bulk imports of 1,000 records each became one write set of
    /// gigabytes (a lagging follower reached 8 GiB RSS during a bulk load).
    pub bytes_max: usize,
}

impl Default for ApplyLimits {
    fn default() -> Self {
        ApplyLimits {
            entries_max: 4096,
            commands_max: 4096,
            bytes_max: 32 << 20,
        }
    }
}

impl ApplyLimits {
    /// Whether a write set of `entries`, `commands` and `bytes` is full.
    fn full(&self, entries: usize, commands: u64, bytes: usize) -> bool {
        entries >= self.entries_max || commands >= self.commands_max || bytes >= self.bytes_max
    }
}

/// Bytes per write batch when loading a snapshot.
const INSTALL_BATCH_BYTES_MAX: usize = 8 << 20;
/// Apply's write-through read cache (see `apply_cache`).
const APPLY_CACHE_BYTES_MAX: usize = 64 << 20;

pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotHandle>;

/// A write set over the state machine's families; reads see its own writes.
pub struct RocksTxn<'a> {
    db: &'a DB,
    overlay: WriteSet,
    /// Bytes put or deleted so far (keys + values, rewrites counted again):
    /// an upper bound on the write set's size.
    written_bytes: usize,
    /// Apply's read cache; `None` for one-off readers.
    cache: Option<&'a Mutex<ApplyCache>>,
}

impl<'a> RocksTxn<'a> {
    pub fn new(db: &'a DB) -> Self {
        RocksTxn {
            db,
            overlay: WriteSet::default(),
            written_bytes: 0,
            cache: None,
        }
    }

    fn cached(db: &'a DB, cache: &'a Mutex<ApplyCache>) -> Self {
        RocksTxn {
            db,
            overlay: WriteSet::default(),
            written_bytes: 0,
            cache: Some(cache),
        }
    }

    /// Move the writes into `batch`; cached entries learn them now, so the
    /// caller must clear the cache if writing the batch fails.
    fn into_batch(self, batch: &mut WriteBatch) -> Result<(), std::io::Error> {
        let mut cache = match self.cache {
            Some(c) => Some(c.lock().map_err(io_err)?),
            None => None,
        };
        // Sorted: RocksDB inserts a batch's keys into the memtable in
        // order, and a sorted run reuses the skip list's search path.
        for (family, key, value) in self.overlay.into_sorted() {
            let cf = cf(self.db, family.name())?;
            match &value {
                Some(v) => batch.put_cf(cf, &key, v),
                None => batch.delete_cf(cf, &key),
            }
            if let Some(c) = cache.as_mut() {
                c.update(family, &key, value);
            }
        }
        Ok(())
    }
}

impl Get for RocksTxn<'_> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        if let Some(v) = self.overlay.get(family, key) {
            return Ok(v.clone());
        }
        let Some(cache) = self.cache else {
            return self
                .db
                .get_cf(cf(self.db, family.name())?, key)
                .map_err(io_err);
        };
        let mut cache = cache.lock().map_err(io_err)?;
        if let Some(v) = cache.get(family, key) {
            return Ok(v);
        }
        let v = self
            .db
            .get_cf(cf(self.db, family.name())?, key)
            .map_err(io_err)?;
        if let Some(v) = &v {
            cache.insert(family, key, v.clone());
        }
        Ok(v)
    }
}

impl Txn for RocksTxn<'_> {
    fn put(&mut self, family: Family, key: Vec<u8>, value: Vec<u8>) {
        self.written_bytes += key.len() + value.len();
        self.overlay.insert(family, key, Some(value));
    }
    fn delete(&mut self, family: Family, key: Vec<u8>) {
        self.written_bytes += key.len();
        self.overlay.insert(family, key, None);
    }
    fn put_all(&mut self, writes: WriteSet) {
        let written = &mut self.written_bytes;
        writes.merge_into(&mut self.overlay, |bytes| *written += bytes);
    }
}

/// A read-only view of the state machine for the domain's read functions:
/// point reads and bounded range scans (RocksDB iterators with
/// `iterate_lower_bound` / `iterate_upper_bound`), all from one RocksDB
/// snapshot so a multi-read answer is consistent.
pub struct RocksRead<'a> {
    db: &'a DB,
    snap: rocksdb::Snapshot<'a>,
}

impl<'a> RocksRead<'a> {
    pub fn new(db: &'a DB) -> Self {
        RocksRead {
            db,
            snap: db.snapshot(),
        }
    }

    /// The last applied log id as this view sees it.
    pub fn applied(&self) -> Result<Option<LogId>, std::io::Error> {
        applied_in(self.db, &self.snap)
    }
}

impl Get for RocksRead<'_> {
    fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, std::io::Error> {
        self.snap
            .get_cf(cf(self.db, family.name())?, key)
            .map_err(io_err)
    }
}

impl ReadView for RocksRead<'_> {
    fn scan(
        &self,
        family: Family,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, std::io::Error> {
        let limit = limit.min(domain::txn::SCAN_LIMIT_MAX);
        if limit == 0 || (!end.is_empty() && start >= end) {
            return Ok(Vec::new());
        }
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&self.snap);
        opts.set_iterate_lower_bound(start.to_vec());
        if !end.is_empty() {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        let mut out = Vec::with_capacity(limit.min(64));
        for item in self
            .db
            .iterator_cf_opt(cf(self.db, family.name())?, opts, mode)
        {
            let (k, v) = item.map_err(io_err)?;
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    snap_dir: PathBuf,
    current: Arc<Mutex<Option<(SnapshotMeta, SnapshotHandle)>>>,
    /// Snapshots replaced as current while a transfer still held them
    /// (by name): their files and checkpoints stay until it lets go.
    retired: Arc<Mutex<Vec<(String, SnapshotHandle)>>>,
    cache: Arc<Mutex<ApplyCache>>,
    /// What is applied, for lease reads on the leader (`read_fence`).
    fence: Arc<ReadFence>,
    limits: ApplyLimits,
    /// RocksDB writes made by apply since open (`billdb_apply_writes_total`).
    apply_writes: Arc<AtomicU64>,
    /// The highest op level this node applies (`domain::levels`): an entry
    /// above it stops apply rather than be applied by a build that does
    /// not know it.
    build_op_level: u32,
    /// Re-execute entries that carry the leader's results and refuse them
    /// when they differ (`apply_results`).
    verify_results: bool,
}

fn snap_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("snap-{:020}-t{}", l.index, l.leader_id.term),
        None => "snap-empty".to_string(),
    }
}

impl StateMachine {
    /// Open the state machine over `db`; finishes an interrupted snapshot
    /// install and finds the newest complete snapshot in `snap_dir`.
    pub fn open(db: Arc<DB>, snap_dir: PathBuf) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(&snap_dir)?;
        let sm = StateMachine {
            db,
            snap_dir,
            current: Arc::new(Mutex::new(None)),
            retired: Arc::new(Mutex::new(Vec::new())),
            cache: Arc::new(Mutex::new(ApplyCache::new(APPLY_CACHE_BYTES_MAX))),
            fence: Arc::new(ReadFence::default()),
            limits: ApplyLimits::default(),
            apply_writes: Arc::new(AtomicU64::new(0)),
            build_op_level: domain::levels::BUILD_OP_LEVEL,
            verify_results: false,
        };
        if let Some(raw) = sm
            .db
            .get_cf(cf(&sm.db, CF_SM_META)?, KEY_INSTALLING)
            .map_err(io_err)?
        {
            let meta: SnapshotMeta = decode(&raw)?;
            let path = sm.snap_dir.join(format!("{}.snap", snap_name(&meta)));
            tracing::warn!(snapshot = %path.display(), "finishing an interrupted snapshot install");
            sm.load_snapshot_file(&path, &meta)?;
        }
        let mut best: Option<(SnapshotMeta, SnapshotHandle)> = None;
        for entry in std::fs::read_dir(&sm.snap_dir)? {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if ext == "tmp" || ext == "part" || ext == "recv" {
                // Unfinished: a build, a file being written, a transfer.
                let _ = remove_path(&path);
                continue;
            }
            if ext != "meta" {
                continue;
            }
            let Ok(raw) = std::fs::read(&path) else {
                continue;
            };
            let Ok(meta) = decode::<SnapshotMeta>(&raw) else {
                continue;
            };
            let Some(handle) = sm.handle_on_disk(&meta) else {
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|(b, _)| b.last_log_id < meta.last_log_id)
            {
                best = Some((meta, handle));
            }
        }
        *sm.current.lock().map_err(io_err)? = best;
        let (applied, _) = sm.read_applied()?;
        sm.fence.reset_applied(applied.map_or(0, |l| l.index));
        Ok(sm)
    }

    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// The same state machine with other apply bounds (tests use small ones).
    pub fn with_limits(mut self, limits: ApplyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// RocksDB writes apply has made since this state machine was opened.
    /// Apply at most op level `level` (a node acting as an older build:
    /// `--op-level-max`). Never above this build's.
    pub fn with_build_op_level(mut self, level: u32) -> Self {
        self.build_op_level = level.clamp(1, domain::levels::BUILD_OP_LEVEL);
        self
    }

    /// Re-execute every entry that carries the leader's results and
    /// compare (`[raft] verify_results`).
    pub fn with_verify_results(mut self, verify: bool) -> Self {
        self.verify_results = verify;
        self
    }

    pub fn apply_writes(&self) -> u64 {
        self.apply_writes.load(Ordering::Relaxed)
    }

    /// The applied-state fence the API's lease reads consult.
    pub fn fence(&self) -> Arc<ReadFence> {
        self.fence.clone()
    }

    fn file_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.snap_dir.join(format!("{}.snap", snap_name(meta)))
    }

    fn checkpoint_dir(&self, meta: &SnapshotMeta) -> PathBuf {
        self.snap_dir
            .join(format!("{CHECKPOINT_PREFIX}{}", snap_name(meta)))
    }

    /// The snapshot `meta` names, if its file or its checkpoint is here.
    fn handle_on_disk(&self, meta: &SnapshotMeta) -> Option<SnapshotHandle> {
        let (file, dir) = (self.file_path(meta), self.checkpoint_dir(meta));
        if dir.is_dir() {
            Some(SnapshotHandle::of_checkpoint(dir, file))
        } else if file.is_file() {
            crate::store::snapshot::SnapshotFile::open(&file)
                .ok()
                .map(SnapshotHandle::of_file)
        } else {
            None
        }
    }

    fn set_current(
        &self,
        meta: SnapshotMeta,
        handle: SnapshotHandle,
    ) -> Result<(), std::io::Error> {
        let newest = snap_name(&meta);
        let mut cur = self.current.lock().map_err(io_err)?;
        let old = cur.replace((meta, handle));
        drop(cur);
        // Keep the newest snapshot (meta, file, checkpoint) and any older
        // one a transfer still holds: a transfer may be writing the file
        // from its checkpoint, and RocksDB opens a checkpoint's table files
        // as it reads them (deleting them under it failed sends to a new
        // node while snapshots were built every few hundred entries).
        let mut retired = self.retired.lock().map_err(io_err)?;
        if let Some((old_meta, old_handle)) = old {
            retired.push((snap_name(&old_meta), old_handle));
        }
        retired.retain(|(name, h)| *name != newest && h.in_use());
        let mut keep: Vec<String> = retired.iter().map(|(n, _)| n.clone()).collect();
        drop(retired);
        keep.push(newest);
        for entry in std::fs::read_dir(&self.snap_dir)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stem = p.file_stem().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            let old_file = (ext == "snap" || ext == "meta") && !keep.iter().any(|k| k == stem);
            let old_checkpoint = name
                .strip_prefix(CHECKPOINT_PREFIX)
                .is_some_and(|n| !keep.iter().any(|k| k == n));
            if old_file || old_checkpoint {
                let _ = remove_path(&p);
            }
        }
        Ok(())
    }

    fn write_meta_file(&self, meta: &SnapshotMeta) -> Result<(), std::io::Error> {
        let name = snap_name(meta);
        let tmp = self.snap_dir.join(format!("{name}.meta.tmp"));
        std::fs::write(&tmp, encode(meta)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        let dest = self.snap_dir.join(format!("{name}.meta"));
        std::fs::rename(&tmp, &dest)?;
        fsync_dir(&self.snap_dir)
    }

    /// Replace every domain family with the file's contents, then record
    /// `applied`/`membership` and clear `installing`, in one synced batch.
    fn load_snapshot_file(&self, path: &Path, meta: &SnapshotMeta) -> Result<(), std::io::Error> {
        let result = self.load_snapshot_file_uncached(path, meta);
        // Every domain family was replaced (or half-replaced on an error).
        self.cache.lock().map_err(io_err)?.clear();
        if result.is_ok() {
            self.fence
                .reset_applied(meta.last_log_id.as_ref().map_or(0, |l| l.index));
        }
        result
    }

    fn load_snapshot_file_uncached(
        &self,
        path: &Path,
        meta: &SnapshotMeta,
    ) -> Result<(), std::io::Error> {
        let db = &*self.db;
        for family in FAMILIES {
            let cf = cf(db, family.name())?;
            let last = db
                .iterator_cf(cf, IteratorMode::End)
                .next()
                .transpose()
                .map_err(io_err)?;
            if let Some((k, _)) = last {
                let mut end = k.to_vec();
                end.push(0);
                db.delete_range_cf(cf, &b""[..], end.as_slice())
                    .map_err(io_err)?;
            }
        }
        let mut reader = SnapshotReader::open(path)?;
        let mut batch = WriteBatch::default();
        let mut items = 0u64;
        while let Some((fam, k, v)) = reader.next_item()? {
            let family = FAMILIES
                .get(fam as usize)
                .ok_or_else(|| io_err(format!("snapshot names unknown family {fam}")))?;
            batch.put_cf(cf(db, family.name())?, k, v);
            items += 1;
            if batch.size_in_bytes() >= INSTALL_BATCH_BYTES_MAX {
                db.write(std::mem::take(&mut batch)).map_err(io_err)?;
                metrics::counter!("billdb_snapshot_install_items_total").increment(items);
                items = 0;
            }
        }
        let meta_cf = cf(db, CF_SM_META)?;
        batch.put_cf(meta_cf, KEY_APPLIED, encode(&meta.last_log_id)?);
        batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(&meta.last_membership)?);
        batch.delete_cf(meta_cf, KEY_INSTALLING);
        db.write_opt(batch, &sync_opts()).map_err(io_err)?;
        metrics::counter!("billdb_snapshot_install_items_total").increment(items);
        Ok(())
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        let meta = checkpoint::meta_of(&self.db)?;
        Ok((meta.last_log_id, meta.last_membership))
    }
}

/// A digest of the domain state from one consistent view: every family's
/// keys and values in order. Equal digests mean identical replicas.
/// What applying one entry's payload gave.
enum Applied {
    Blank,
    /// The replies, and the leader's execution sequence when the entry
    /// carried its results.
    Normal(BatchReply, Option<u64>),
    Membership(StoredMembership),
}

/// Applies one committed entry's payload into `txn`: the one place where
/// commands meet the domain, for Raft's apply and for [`replay`] alike.
/// An operation above this build's op level stops apply (nothing of the
/// entry is written).
fn apply_payload(
    txn: &mut RocksTxn<'_>,
    log_id: LogId,
    payload: EntryPayload<crate::types::Batch, crate::types::NodeId, crate::types::NodeInfo>,
    build_op_level: u32,
    verify_results: bool,
) -> Result<Applied, std::io::Error> {
    Ok(match payload {
        EntryPayload::Blank => Applied::Blank,
        EntryPayload::Normal(batch) => {
            if let Some(executed) = &batch.executed {
                if build_op_level < domain::levels::RESULTS_OP_LEVEL {
                    return Err(std::io::Error::other(format!(
                        "log entry {} carries the leader's results (op level {}), but this \
                         node applies op level {build_op_level} at most: upgrade this node's billdb",
                        log_id.index,
                        domain::levels::RESULTS_OP_LEVEL
                    )));
                }
                if let Some(replies) = super::apply_results::apply(
                    txn,
                    log_id.index,
                    log_id.leader_id.term,
                    &batch.commands,
                    executed,
                    verify_results,
                )? {
                    return Ok(Applied::Normal(BatchReply { replies }, Some(executed.seq)));
                }
                // The premise failed: executed here, below, like an entry
                // without results.
            }
            let mut outcomes = Vec::with_capacity(batch.commands.len());
            for cmd in batch.commands.iter() {
                let needs = domain::levels::op_level(&cmd.op);
                if needs > build_op_level {
                    return Err(std::io::Error::other(format!(
                        "log entry {} holds {} (op level {needs}), but this build \
                         applies op level {build_op_level} at most: upgrade this node's billdb",
                        log_id.index,
                        cmd.op.name(),
                    )));
                }
                let (outcome, decided_at) = domain::apply_indexed(txn, log_id.index, cmd)?;
                outcomes.push(CommandReply {
                    outcome,
                    decided_at,
                });
            }
            Applied::Normal(BatchReply { replies: outcomes }, None)
        }
        EntryPayload::Membership(m) => Applied::Membership(StoredMembership::new(Some(log_id), m)),
    })
}

/// Writes `txn`, `applied` and (when it changed) the membership as one
/// RocksDB write batch.
fn write_applied(
    db: &DB,
    txn: RocksTxn<'_>,
    last_applied: &Option<LogId>,
    membership: Option<StoredMembership>,
) -> Result<(), std::io::Error> {
    let meta_cf = cf(db, CF_SM_META)?;
    let mut batch = WriteBatch::default();
    txn.into_batch(&mut batch)?;
    batch.put_cf(meta_cf, KEY_APPLIED, encode(last_applied)?);
    if let Some(m) = membership {
        batch.put_cf(meta_cf, KEY_MEMBERSHIP, encode(&m)?);
    }
    db.write(batch).map_err(io_err)
}

/// Entries replayed by [`replay`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub entries: u64,
    pub commands: u64,
    pub last: Option<LogId>,
}

/// Applies `entries` to `db` outside Raft, exactly as the state machine
/// applies committed entries (the same [`apply_payload`], the same write
/// batches with `applied`): a point-in-time restore replays an archive of
/// committed entries on top of a backup with it. The entries must follow
/// the database's applied index without a gap.
pub fn replay(
    db: &DB,
    entries: impl IntoIterator<Item = crate::types::Entry>,
    build_op_level: u32,
    limits: ApplyLimits,
) -> Result<Replayed, std::io::Error> {
    let mut done = Replayed {
        last: RocksRead::new(db).applied()?,
        ..Replayed::default()
    };
    let mut txn = RocksTxn::new(db);
    let mut pending = 0usize;
    let mut commands = 0u64;
    let mut last_applied = done.last;
    let mut membership = None;
    for entry in entries {
        let log_id = entry.log_id();
        let expected = last_applied.map_or(0, |l| l.index + 1);
        if log_id.index != expected {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "replay: entry {} does not follow the applied index (expected {expected})",
                    log_id.index
                ),
            ));
        }
        match apply_payload(&mut txn, log_id, entry.payload, build_op_level, false)? {
            Applied::Blank => {}
            Applied::Normal(r, _) => commands += r.replies.len() as u64,
            Applied::Membership(m) => membership = Some(m),
        }
        last_applied = Some(log_id);
        pending += 1;
        if limits.full(pending, commands, txn.written_bytes) {
            write_applied(
                db,
                std::mem::replace(&mut txn, RocksTxn::new(db)),
                &last_applied,
                membership.take(),
            )?;
            done.entries += pending as u64;
            done.commands += commands;
            done.last = last_applied;
            pending = 0;
            commands = 0;
        }
    }
    if pending > 0 {
        write_applied(db, txn, &last_applied, membership)?;
        done.entries += pending as u64;
        done.commands += commands;
        done.last = last_applied;
    }
    Ok(done)
}

pub fn state_digest(db: &DB) -> Result<(Option<LogId>, String), std::io::Error> {
    let snap = db.snapshot();
    Ok((applied_in(db, &snap)?, digest_in(db, &snap)?))
}

/// The last applied log id as `snap` sees it.
pub fn applied_in(db: &DB, snap: &rocksdb::Snapshot) -> Result<Option<LogId>, std::io::Error> {
    match snap
        .get_cf(cf(db, CF_SM_META)?, KEY_APPLIED)
        .map_err(io_err)?
    {
        Some(v) => decode::<Option<LogId>>(&v),
        None => Ok(None),
    }
}

/// The digest of every domain family as `snap` sees them.
pub fn digest_in(db: &DB, snap: &rocksdb::Snapshot<'_>) -> Result<String, std::io::Error> {
    let mut h = Sha256::new();
    for (i, family) in FAMILIES.iter().enumerate() {
        for item in snap.iterator_cf(cf(db, family.name())?, IteratorMode::Start) {
            let (k, v) = item.map_err(io_err)?;
            h.update([i as u8]);
            h.update((k.len() as u32).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u32).to_be_bytes());
            h.update(&v);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Remove a file or a directory tree.
fn remove_path(p: &Path) -> Result<(), std::io::Error> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Build a snapshot: a checkpoint of the database (flush + hard links),
/// its meta file, and make it current. The snapshot file is written only
/// when a peer needs it ([`SnapshotHandle::materialize`]).
fn build_snapshot_blocking(
    sm: &StateMachine,
) -> Result<(SnapshotMeta, SnapshotHandle), std::io::Error> {
    let (meta, dir) = checkpoint::create(&sm.db, &sm.snap_dir, snap_name)?;
    sm.write_meta_file(&meta)?;
    let handle = SnapshotHandle::of_checkpoint(dir.clone(), sm.file_path(&meta));
    sm.set_current(meta.clone(), handle.clone())?;
    tracing::info!(checkpoint = %dir.display(), "snapshot built");
    Ok((meta, handle))
}

pub struct SnapshotBuilder {
    sm: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotHandle;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let sm = self.sm.clone();
        let started = std::time::Instant::now();
        let (meta, handle) = tokio::task::spawn_blocking(move || build_snapshot_blocking(&sm))
            .await
            .map_err(io_err)??;
        metrics::histogram!("billdb_snapshot_build_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Snapshot {
            meta,
            snapshot: handle,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotHandle;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        self.read_applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        let db = self.db.clone();
        let cache = self.cache.clone();
        let mut txn = RocksTxn::cached(&db, &cache);
        let mut replies = Vec::new();
        let mut last_applied: Option<LogId> = None;
        let mut membership: Option<StoredMembership> = None;
        let mut blank_term: Option<u64> = None;
        let mut exec_seq: Option<(u64, u64)> = None;
        let mut results_entries = 0u64;
        let mut commands = 0u64;
        loop {
            let next = entries.next().await;
            let done = next.is_none();
            if let Some(item) = next {
                let (entry, responder) = item?;
                let log_id = entry.log_id();
                let reply = match apply_payload(
                    &mut txn,
                    log_id,
                    entry.payload,
                    self.build_op_level,
                    self.verify_results,
                )? {
                    Applied::Blank => {
                        blank_term = Some(log_id.leader_id.term);
                        BatchReply::default()
                    }
                    Applied::Normal(reply, seq) => {
                        commands += reply.replies.len() as u64;
                        if let Some(seq) = seq {
                            exec_seq = Some((log_id.leader_id.term, seq));
                            results_entries += 1;
                        }
                        reply
                    }
                    Applied::Membership(m) => {
                        membership = Some(m);
                        BatchReply::default()
                    }
                };
                last_applied = Some(log_id);
                replies.push((responder, reply));
            }
            if (done && !replies.is_empty())
                || self.limits.full(replies.len(), commands, txn.written_bytes)
            {
                let written = write_applied(
                    &db,
                    std::mem::replace(&mut txn, RocksTxn::cached(&db, &cache)),
                    &last_applied,
                    membership.take(),
                );
                let mut c = cache.lock().map_err(io_err)?;
                if let Err(e) = written {
                    c.clear();
                    return Err(e);
                }
                let (hits, misses) = c.take_counts();
                drop(c);
                self.apply_writes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("billdb_apply_writes_total").increment(1);
                if let Some(l) = &last_applied {
                    self.fence.applied(l.index, blank_term.take());
                }
                if let Some((term, seq)) = exec_seq.take() {
                    self.fence.exec_applied(term, seq);
                }
                metrics::counter!("billdb_apply_cache_hits_total").increment(hits);
                metrics::counter!("billdb_apply_cache_misses_total").increment(misses);
                metrics::counter!("billdb_applied_entries_total").increment(replies.len() as u64);
                metrics::counter!("billdb_applied_commands_total").increment(commands);
                metrics::counter!("billdb_applied_results_entries_total")
                    .increment(results_entries);
                commands = 0;
                results_entries = 0;
                for (responder, reply) in replies.drain(..) {
                    if let Some(r) = responder {
                        r.send(reply);
                    }
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { sm: self.clone() }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotHandle,
    ) -> Result<(), std::io::Error> {
        let sm = self.clone();
        let meta = meta.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
            let snapshot = snapshot.materialize()?;
            let dest = sm.file_path(&meta);
            if snapshot.path.parent() == Some(sm.snap_dir.as_path()) {
                // Received by this node's Raft service: move it into place.
                if snapshot.path != dest {
                    std::fs::rename(&snapshot.path, &dest)?;
                }
            } else {
                let tmp = dest.with_extension("tmp");
                snapshot.copy_to(&tmp)?;
                std::fs::rename(&tmp, &dest)?;
            }
            verify(&dest)?;
            sm.write_meta_file(&meta)?;
            sm.db
                .put_cf_opt(
                    cf(&sm.db, CF_SM_META)?,
                    KEY_INSTALLING,
                    encode(&meta)?,
                    &sync_opts(),
                )
                .map_err(io_err)?;
            sm.load_snapshot_file(&dest, &meta)?;
            let installed = SnapshotHandle::of_file(SnapshotFile::open(&dest)?);
            sm.set_current(meta, installed)?;
            Ok(())
        })
        .await
        .map_err(io_err)??;
        metrics::histogram!("billdb_snapshot_install_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let cur = self.current.lock().map_err(io_err)?.clone();
        match cur {
            Some((meta, handle)) => Ok(Some(Snapshot {
                meta,
                snapshot: handle,
            })),
            None => Ok(None),
        }
    }
}

impl StateMachine {
    /// Where the Raft service stages a snapshot being received; a `.part`
    /// file until complete, then `.recv` until installed. `stream_no` keeps
    /// two transfers of the same snapshot (a leader retrying while the
    /// first is still arriving) from truncating or renaming each other's
    /// file under an install in progress.
    pub fn incoming_path(&self, meta: &SnapshotMeta, stream_no: u64) -> PathBuf {
        self.snap_dir
            .join(format!("incoming-{}-{stream_no}.part", snap_name(meta)))
    }

    /// Where the bytes of an interrupted transfer of this snapshot wait
    /// for the transfer to resume (see `raft_service::install_snapshot`).
    /// Keyed by the snapshot's last log id: two leaders' builds of the same
    /// index need not give the same bytes, so a resumed file is verified
    /// whole before it is installed.
    pub fn staged_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.snap_dir
            .join(format!("incoming-{}.resume", snap_name(meta)))
    }

    /// Remove the staged bytes of interrupted transfers of snapshots other
    /// than `keep` (a newer snapshot makes them useless).
    pub fn discard_staged_except(&self, keep: &SnapshotMeta) {
        let keep = self.staged_path(keep);
        let Ok(dir) = std::fs::read_dir(&self.snap_dir) else {
            return;
        };
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "resume") && p != keep {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MemTxn, Op, RecordQuery, Segment};
    use crate::types::Command;

    fn cmd(rid: &str, ts_ms: i64, op: Op) -> Command {
        Command {
            request_id: rid.into(),
            ts_ms,
            operator: "op".into(),
            branch: String::new(),
            channel: String::new(),
            op,
        }
    }

    fn open_op(acct: &str) -> Op {
        Op::OpenAccount {
            account_id: acct.into(),
            name: String::new(),
            address: String::new(),
            branch: "b".into(),
            utility: "water".into(),
            meter_id: String::new(),
            tariff_id: String::new(),
        }
    }

    fn pay_op(acct: &str, i: i64) -> Op {
        Op::Payment {
            account_id: acct.into(),
            amount: rust_decimal::Decimal::new(100, 2),
            bank_code: "BK".into(),
            bank_ref: format!("{acct}-{i}"),
        }
    }

    /// Apply `cmds` through the state machine's cached transaction and
    /// commit them the way `apply` does.
    fn apply_cached(sm: &StateMachine, first_index: u64, cmds: &[Command]) {
        let mut txn = RocksTxn::cached(&sm.db, &sm.cache);
        for (i, c) in cmds.iter().enumerate() {
            domain::apply(&mut txn, first_index + i as u64, c).unwrap();
        }
        let mut batch = WriteBatch::default();
        txn.into_batch(&mut batch).unwrap();
        sm.db.write(batch).unwrap();
    }

    fn cached_balance(sm: &StateMachine, acct: &str) -> rust_decimal::Decimal {
        let txn = RocksTxn::cached(&sm.db, &sm.cache);
        domain::get_account(&txn, acct).unwrap().unwrap().balance
    }

    /// Run `cmds` through the real `apply`, one command per log entry.
    fn apply_entries(sm: &mut StateMachine, first_index: u64, cmds: &[Command]) {
        use openraft::testing::log_id;
        let entries: Vec<Result<EntryResponder<TypeConfig>, std::io::Error>> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = log_id::<TypeConfig>(1, 1, first_index + i as u64);
                let batch = crate::types::Batch::of(vec![c.clone()]);
                Ok((crate::types::Entry::new_normal(id, batch), None))
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(sm.apply(futures::stream::iter(entries)))
            .unwrap();
    }

    /// Writes the exec chain `chain` and applied index `index` (term 1,
    /// node 1): what an entry with results adds to the state, for
    /// comparing a state applied from commands with one applied from them.
    fn set_chain_at(db: &DB, chain: (u64, u64, u64), index: u64) {
        let mut txn = RocksTxn::new(db);
        domain::set_exec_chain(&mut txn, chain).unwrap();
        let id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
        write_applied(db, txn, &Some(id), None).unwrap();
    }

    /// Executes `cmds` as one batch the way the leader does (`leader_exec`:
    /// at the pending index, over `state`), without changing `state`.
    fn leader_execute(state: &RocksTxn<'_>, cmds: &[Command]) -> crate::types::Executed {
        let mut scratch = domain::Scratch::new(state);
        let replies = cmds
            .iter()
            .map(|c| {
                domain::execute(&mut scratch, domain::PENDING_LOG_INDEX, c)
                    .unwrap()
                    .reply()
            })
            .collect();
        let writes = scratch
            .into_writes()
            .into_sorted()
            .into_iter()
            .filter(|w| w.0 != Family::Requests)
            .collect();
        crate::types::Executed {
            seq: 1,
            epoch: 1,
            prev: 0,
            replies,
            writes,
        }
    }

    fn open_sm(dir: &Path, verify: bool) -> StateMachine {
        let db = crate::store::open_db(&dir.join("db")).unwrap();
        StateMachine::open(db, dir.join("snap"))
            .unwrap()
            .with_verify_results(verify)
    }

    /// Applies one entry as `apply` does (the same `apply_payload` and
    /// `write_applied`), returning its replies.
    fn apply_batch(
        sm: &mut StateMachine,
        index: u64,
        batch: crate::types::Batch,
    ) -> Result<BatchReply, std::io::Error> {
        let id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
        let mut txn = RocksTxn::new(&sm.db);
        match apply_payload(
            &mut txn,
            id,
            EntryPayload::Normal(batch),
            sm.build_op_level,
            sm.verify_results,
        )? {
            Applied::Normal(reply, _) => {
                write_applied(&sm.db, txn, &Some(id), None)?;
                Ok(reply)
            }
            _ => panic!("a normal entry"),
        }
    }

    /// The batch the next tests send: a new payment, the same request_id
    /// again in the same batch (a replay), an earlier request_id (a replay
    /// decided at an earlier index), an earlier one with another payload
    /// (a conflict), and a payment refused by the domain.
    fn mixed_batch() -> Vec<Command> {
        vec![
            cmd("p2", 20, pay_op("A", 2)),
            cmd("p2", 20, pay_op("A", 2)),
            cmd("p1", 20, pay_op("A", 1)),
            cmd("p1", 20, pay_op("A", 7)),
            cmd("px", 20, pay_op("NOPE", 3)),
        ]
    }

    /// An entry carrying the leader's results leaves exactly the state and
    /// answers exactly the replies of re-executing its commands: new,
    /// replayed (in the batch and from an earlier entry, with its original
    /// index), conflicting and refused commands alike. With verification
    /// on, the follower re-executes and agrees.
    #[test]
    fn an_executed_entry_applies_like_its_commands() {
        let setup = [cmd("o", 1, open_op("A")), cmd("p1", 2, pay_op("A", 1))];
        let mut results = Vec::new();
        for (mode, verify) in [("commands", false), ("results", false), ("verified", true)] {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = open_sm(dir.path(), verify);
            apply_entries(&mut sm, 1, &setup);
            let batch = if mode == "commands" {
                crate::types::Batch::of(mixed_batch())
            } else {
                let executed = leader_execute(&RocksTxn::new(&sm.db), &mixed_batch());
                crate::types::Batch::executed(mixed_batch(), executed)
            };
            let reply = apply_batch(&mut sm, 3, batch).unwrap();
            if mode == "commands" {
                // The one key an entry with results adds: the chain
                // (term 1, epoch 1, sequence 1).
                set_chain_at(&sm.db, (1, 1, 1), 3);
            }
            results.push((mode, reply, state_digest(&sm.db).unwrap()));
        }
        let (_, first, state) = &results[0];
        let decided: Vec<u64> = first.replies.iter().map(|r| r.decided_at).collect();
        assert_eq!(decided, vec![3, 3, 2, 3, 3], "{first:?}");
        assert!(
            matches!(first.replies[3].outcome, domain::Outcome::Refused(ref e) if e.code == billdb_api::error::ErrorCode::IdempotencyConflict)
        );
        for (mode, reply, s) in &results[1..] {
            assert_eq!(reply, first, "{mode}: the same replies");
            assert_eq!(s, state, "{mode}: the same state");
        }
    }

    /// Verification catches a leader whose write set or replies differ
    /// from what this replica computes, and nothing of the entry is
    /// written; without verification the replica takes the write set as
    /// given. A write set naming the exactly-once table is refused always.
    #[test]
    fn verification_refuses_an_entry_whose_results_differ() {
        let setup = [cmd("o", 1, open_op("A")), cmd("p1", 2, pay_op("A", 1))];
        let tamper_value = |e: &mut crate::types::Executed| {
            let w = e
                .writes
                .iter_mut()
                .find(|w| w.0 == Family::Accounts)
                .expect("an account write");
            w.2 = Some(b"not the account".to_vec());
        };
        let tamper_reply = |e: &mut crate::types::Executed| {
            e.replies[0] = domain::ExecReply::Replay;
        };
        let tamper_requests = |e: &mut crate::types::Executed| {
            e.writes
                .push((Family::Requests, b"x".to_vec(), Some(b"y".to_vec())));
        };
        type Tamper = dyn Fn(&mut crate::types::Executed);
        let cases: [(&str, &Tamper, bool, bool); 4] = [
            ("a changed value, verified", &tamper_value, true, false),
            ("a changed value, not verified", &tamper_value, false, true),
            ("a changed reply, verified", &tamper_reply, true, false),
            ("the exactly-once table", &tamper_requests, false, false),
        ];
        for (name, tamper, verify, accepted) in cases {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = open_sm(dir.path(), verify);
            apply_entries(&mut sm, 1, &setup);
            let before = state_digest(&sm.db).unwrap();
            let mut executed = leader_execute(&RocksTxn::new(&sm.db), &mixed_batch()[..1]);
            tamper(&mut executed);
            let batch = crate::types::Batch::executed(mixed_batch()[..1].to_vec(), executed);
            let r = apply_batch(&mut sm, 3, batch);
            assert_eq!(r.is_ok(), accepted, "{name}: {r:?}");
            if !accepted {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("entry 3"), "{name}: {e}");
                assert_eq!(
                    state_digest(&sm.db).unwrap(),
                    before,
                    "{name}: nothing written"
                );
            }
        }
    }

    /// An entry whose predecessor in its leader's epoch was never applied
    /// (openraft refused that write) is executed from its commands, and so
    /// is every later entry of the epoch; a new epoch's first entry is
    /// applied from its results again. The state is the one executing the
    /// applied commands gives, on every replica.
    #[test]
    fn an_entry_after_one_never_applied_is_executed_from_its_commands() {
        let setup = [cmd("o", 1, open_op("A")), cmd("p1", 2, pay_op("A", 1))];
        let dir = tempfile::tempdir().unwrap();
        // The leader's view: E1, then E2 and E3 executed on top of it.
        let mut leader = open_sm(&dir.path().join("leader"), false);
        apply_entries(&mut leader, 1, &setup);
        let mut chain = Vec::new();
        for (i, rid) in ["p2", "p3", "p4"].iter().enumerate() {
            let cmds = vec![cmd(rid, 10, pay_op("A", 2 + i as i64))];
            let mut e = leader_execute(&RocksTxn::new(&leader.db), &cmds);
            e.seq = 1 + i as u64;
            e.prev = i as u64;
            let batch = crate::types::Batch::executed(cmds.clone(), e);
            apply_batch(&mut leader, 3 + i as u64, batch.clone()).unwrap();
            chain.push((cmds, batch));
        }
        // A fresh epoch's first entry, executed on the replica's real state.
        let fresh_cmds = vec![cmd("p5", 11, pay_op("A", 5))];

        // The replicas' log: E1 was refused, E2 and E3 were appended.
        let replica_dir = dir.path().join("replica");
        let mut replica = open_sm(&replica_dir, true);
        apply_entries(&mut replica, 1, &setup);
        let mut expected = open_sm(&dir.path().join("expected"), false);
        apply_entries(&mut expected, 1, &setup);
        for (i, (cmds, batch)) in chain[1..].iter().enumerate() {
            let index = 3 + i as u64;
            let got = apply_batch(&mut replica, index, batch.clone()).unwrap();
            let want =
                apply_batch(&mut expected, index, crate::types::Batch::of(cmds.clone())).unwrap();
            assert_eq!(got, want, "entry {index}: the commands' own replies");
        }
        let mut e = leader_execute(&RocksTxn::new(&replica.db), &fresh_cmds);
        e.epoch = 2;
        e.seq = 4;
        e.prev = 0;
        let fresh = crate::types::Batch::executed(fresh_cmds.clone(), e);
        let got = apply_batch(&mut replica, 5, fresh).unwrap();
        let want = apply_batch(&mut expected, 5, crate::types::Batch::of(fresh_cmds)).unwrap();
        assert_eq!(got, want);
        let (_, on_replica) = state_digest(&replica.db).unwrap();
        // The chain key is the only difference: the replica applied the
        // fresh entry from its results.
        assert_eq!(
            domain::exec_chain(&RocksTxn::new(&replica.db)).unwrap(),
            Some((1, 2, 4))
        );
        set_chain_at(&expected.db, (1, 2, 4), 5);
        assert_eq!(on_replica, state_digest(&expected.db).unwrap().1);
        // Paid: p1, p3, p4, p5 (1.00 each), never p2.
        let balance = domain::get_account(&RocksTxn::new(&replica.db), "A")
            .unwrap()
            .unwrap()
            .balance;
        assert_eq!(balance, rust_decimal::Decimal::new(400, 2));
        assert!(
            domain::request_outcome(&RocksTxn::new(&replica.db), "p2")
                .unwrap()
                .is_none()
        );
    }

    /// A batch without results encodes exactly as data format 7 wrote
    /// batches (a count and the commands), so old log entries decode
    /// unchanged; an executed batch round-trips, and a decoder of the old
    /// format refuses it rather than misread it.
    #[test]
    fn batches_keep_the_old_encoding_and_executed_ones_are_refused_by_it() {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct OldBatch {
            commands: Vec<Command>,
        }
        let cmds = mixed_batch();
        let old = crate::codec::encode(&OldBatch {
            commands: cmds.clone(),
        })
        .unwrap();
        let plain = crate::types::Batch::of(cmds.clone());
        assert_eq!(crate::codec::encode(&plain).unwrap(), old);
        assert_eq!(
            crate::codec::decode::<crate::types::Batch>(&old).unwrap(),
            plain
        );

        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_sm(dir.path(), false);
        apply_entries(&mut sm, 1, &[cmd("o", 1, open_op("A"))]);
        let executed = crate::types::Batch::executed(
            cmds,
            leader_execute(&RocksTxn::new(&sm.db), &mixed_batch()),
        );
        let raw = crate::codec::encode(&executed).unwrap();
        assert_eq!(
            crate::codec::decode::<crate::types::Batch>(&raw).unwrap(),
            executed
        );
        assert!(crate::codec::decode::<OldBatch>(&raw).is_err());
        let mut cut = raw.clone();
        cut.truncate(raw.len() - 1);
        assert!(crate::codec::decode::<crate::types::Batch>(&cut).is_err());
    }

    /// Apply cuts its write set at the byte bound, not only at entry and
    /// command counts: the same stream of entries becomes one RocksDB
    /// write with the default bounds and many small ones with a 2 KiB
    /// bound, and both leave the same state and applied index.
    #[test]
    fn apply_writes_are_cut_at_the_byte_bound() {
        let n = 60u64;
        let mut cmds = vec![cmd("open", 1, open_op("A1"))];
        cmds.extend((1..n).map(|i| cmd(&format!("p{i}"), 1 + i as i64, pay_op("A1", i as i64))));
        let mut states = Vec::new();
        for bytes_max in [ApplyLimits::default().bytes_max, 2048] {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::store::open_db(&dir.path().join("db")).unwrap();
            let limits = ApplyLimits {
                bytes_max,
                ..ApplyLimits::default()
            };
            let mut sm = StateMachine::open(db, dir.path().join("snap"))
                .unwrap()
                .with_limits(limits);
            apply_entries(&mut sm, 1, &cmds);
            let (applied, _) = sm.read_applied().unwrap();
            assert_eq!(applied.map(|l| l.index), Some(n));
            let balance = domain::get_account(&RocksTxn::new(&sm.db), "A1")
                .unwrap()
                .unwrap()
                .balance;
            assert_eq!(balance, rust_decimal::Decimal::new(100 * (n as i64 - 1), 2));
            states.push((sm.apply_writes(), state_digest(&sm.db).unwrap().1));
        }
        assert_eq!(
            states[0].0, 1,
            "default bounds: one write for 60 small entries"
        );
        let small = states[1].0;
        assert!(
            (5..n).contains(&small),
            "a 2 KiB bound must cut 60 payments (~150-400 bytes written each) into several writes, got {small}"
        );
        assert_eq!(states[0].1, states[1].1, "same state either way");
    }

    /// A snapshot build is a checkpoint, not a file: the file is written
    /// from the checkpoint on first use and holds the state as of the
    /// build, even after more writes; a newer build replaces the old
    /// checkpoint, and a reopened node finds the current one.
    #[test]
    fn snapshots_are_checkpoints_written_as_files_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(&dir.path().join("db")).unwrap();
        let snap_dir = dir.path().join("snapshots");
        let sm = StateMachine::open(db.clone(), snap_dir.clone()).unwrap();
        let mut cmds = vec![cmd("o", 1, open_op("A"))];
        cmds.extend((0..3).map(|i| cmd(&format!("p{i}"), 10 + i, pay_op("A", i))));
        apply_cached(&sm, 1, &cmds);
        // `apply` writes `applied` with each batch; do the same here.
        let applied =
            |index: u64| -> LogId { openraft::testing::log_id::<TypeConfig>(1, 1, index) };
        let meta_cf = cf(&db, CF_SM_META).unwrap();
        db.put_cf(meta_cf, KEY_APPLIED, encode(&Some(applied(4))).unwrap())
            .unwrap();
        let (_, digest_at_build) = state_digest(&db).unwrap();

        let (meta, handle) = build_snapshot_blocking(&sm).unwrap();
        assert_eq!(meta.last_log_id, Some(applied(4)));
        let ckpt = sm.checkpoint_dir(&meta);
        assert!(ckpt.is_dir());
        assert!(
            !handle.file_path().exists(),
            "no file until a peer needs one"
        );

        // More writes after the build.
        apply_cached(&sm, 5, &[cmd("p9", 20, pay_op("A", 9))]);
        db.put_cf(meta_cf, KEY_APPLIED, encode(&Some(applied(5))).unwrap())
            .unwrap();
        let file = handle.materialize().unwrap();
        assert!(file.size_bytes > 0);
        assert_eq!(handle.clone().materialize().unwrap().path, file.path);

        // The file holds the state at the build: load it into a fresh node.
        let other = tempfile::tempdir().unwrap();
        let db2 = crate::store::open_db(&other.path().join("db")).unwrap();
        let sm2 = StateMachine::open(db2.clone(), other.path().join("snapshots")).unwrap();
        sm2.load_snapshot_file(&file.path, &meta).unwrap();
        assert_eq!(state_digest(&db2).unwrap().1, digest_at_build);
        assert_ne!(state_digest(&db).unwrap().1, digest_at_build);

        // A reopened node finds the current snapshot by its checkpoint.
        let reopened = StateMachine::open(db.clone(), snap_dir.clone()).unwrap();
        let cur = reopened.current.lock().unwrap().clone().unwrap();
        assert_eq!(cur.0, meta);

        // A newer build keeps the old checkpoint and file while a transfer
        // (here `handle`) still holds them ...
        let (meta2, _) = build_snapshot_blocking(&sm).unwrap();
        assert_eq!(meta2.last_log_id, Some(applied(5)));
        assert!(sm.checkpoint_dir(&meta2).is_dir());
        assert!(ckpt.is_dir(), "a checkpoint in use is kept");
        assert!(file.path.exists(), "a file in use is kept");
        // ... and the next build after it let go removes them.
        drop(handle);
        db.put_cf(meta_cf, KEY_APPLIED, encode(&Some(applied(6))).unwrap())
            .unwrap();
        let (meta3, _) = build_snapshot_blocking(&sm).unwrap();
        assert_eq!(meta3.last_log_id, Some(applied(6)));
        assert!(!ckpt.exists(), "the old checkpoint is removed");
        assert!(!file.path.exists(), "the old file is removed");
        assert!(
            !sm.checkpoint_dir(&meta2).exists(),
            "an unused older one is removed"
        );
        // The old handle's file stays readable through its open handle.
        let mut buf = [0u8; 8];
        assert_eq!(file.read_at(0, &mut buf).unwrap(), 8);
    }

    /// The apply cache never outlives the state it was filled from: after a
    /// snapshot install replaces the families, apply reads the installed
    /// values, not what it had cached; and a write updates what it caches.
    #[test]
    fn apply_cache_follows_writes_and_is_dropped_by_a_snapshot_install() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(&dir.path().join("db")).unwrap();
        let sm = StateMachine::open(db.clone(), dir.path().join("snapshots")).unwrap();
        let mut cmds = vec![cmd("o", 1, open_op("A"))];
        cmds.extend((0..3).map(|i| cmd(&format!("p{i}"), 10 + i, pay_op("A", i))));
        apply_cached(&sm, 1, &cmds);
        assert_eq!(cached_balance(&sm, "A"), rust_decimal::Decimal::new(300, 2));
        assert!(
            !sm.cache.lock().unwrap().is_empty(),
            "the account was read, so cached"
        );
        let (meta, handle) = build_snapshot_blocking(&sm).unwrap();
        let path = handle.materialize().unwrap().path;

        // More payments: the cached account follows each write.
        let more: Vec<Command> = (3..8)
            .map(|i| cmd(&format!("p{i}"), 10 + i, pay_op("A", i)))
            .collect();
        apply_cached(&sm, 10, &more);
        assert_eq!(cached_balance(&sm, "A"), rust_decimal::Decimal::new(800, 2));
        let uncached = domain::get_account(&RocksTxn::new(&sm.db), "A")
            .unwrap()
            .unwrap();
        assert_eq!(uncached.balance, rust_decimal::Decimal::new(800, 2));

        // Back to the snapshot (as a follower installing one would be).
        sm.load_snapshot_file(&path, &meta).unwrap();
        assert!(sm.cache.lock().unwrap().is_empty());
        assert_eq!(cached_balance(&sm, "A"), rust_decimal::Decimal::new(300, 2));
        // Replaying the later payments from the log gives the same state.
        apply_cached(&sm, 10, &more);
        assert_eq!(cached_balance(&sm, "A"), rust_decimal::Decimal::new(800, 2));
    }

    /// The RocksDB read view scans exactly like the in-memory one: bounds,
    /// direction, limits, paging and the segment cut.
    #[test]
    fn rocks_read_scans_like_mem_txn() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(dir.path()).unwrap();
        let mut mem = MemTxn::default();
        let mut cmds = Vec::new();
        for acct in ["A", "AB", "B"] {
            cmds.push(cmd(&format!("o{acct}"), 1, open_op(acct)));
            for i in 0..30i64 {
                cmds.push(cmd(
                    &format!("p{acct}{i}"),
                    1_000 + i * 1_000,
                    Op::Payment {
                        account_id: acct.into(),
                        amount: rust_decimal::Decimal::new(100 + i, 2),
                        bank_code: "BK".into(),
                        bank_ref: format!("{acct}-{i}"),
                    },
                ));
            }
        }
        cmds.push(cmd(
            "sb",
            100_000,
            Op::SetSegmentBoundary {
                boundary_ms: 20_500,
            },
        ));
        let mut txn = RocksTxn::new(&db);
        for (i, c) in cmds.iter().enumerate() {
            let a = domain::apply(&mut txn, i as u64 + 1, c).unwrap();
            let b = domain::apply(&mut mem, i as u64 + 1, c).unwrap();
            assert_eq!(a, b);
        }
        let mut batch = WriteBatch::default();
        txn.into_batch(&mut batch).unwrap();
        db.write(batch).unwrap();
        let rocks = RocksRead::new(&db);
        for family in FAMILIES {
            for reverse in [false, true] {
                for limit in [1, 7, 1000, usize::MAX] {
                    assert_eq!(
                        rocks.scan(*family, b"", b"", reverse, limit).unwrap(),
                        mem.scan(*family, b"", b"", reverse, limit).unwrap(),
                        "{family:?}"
                    );
                }
            }
        }
        for account in ["A", "AB", "B", "C"] {
            for segment in [Segment::Recent, Segment::History, Segment::All] {
                for descending in [false, true] {
                    let mut token = None;
                    loop {
                        let q = RecordQuery {
                            account_id: account.into(),
                            segment,
                            from_ms: Some(3_000),
                            to_ms: Some(28_000),
                            limit: 4,
                            page_token: token.clone(),
                            descending,
                        };
                        let a = domain::list_records(&rocks, &q).unwrap().unwrap();
                        let b = domain::list_records(&mem, &q).unwrap().unwrap();
                        assert_eq!(a, b);
                        token = a.next_page_token;
                        if token.is_none() {
                            break;
                        }
                    }
                }
            }
        }
        let recent = domain::list_records(
            &rocks,
            &RecordQuery {
                account_id: "AB".into(),
                segment: Segment::Recent,
                from_ms: None,
                to_ms: None,
                limit: 500,
                page_token: None,
                descending: true,
            },
        )
        .unwrap()
        .unwrap();
        // Payments at 1000..=30000 step 1000; boundary 20500: 21000..=30000.
        assert_eq!(recent.records.len(), 10);
        assert_eq!(recent.records[0].ts_ms, 30_000);
        assert!(recent.records.iter().all(|r| r.account_id == "AB"));
        let report = domain::bank_daily_report(&rocks, "1970-01-01", Some("BK")).unwrap();
        assert_eq!(report.lines[0].count, 90);
    }
}
