//! Snapshots as RocksDB checkpoints. Building a snapshot flushes the
//! memtables and hard-links the live SST files into
//! `snapshots/ckpt-<name>/`: no copy of the state is made. The transferable
//! snapshot file (`snapshot.rs`: checksummed, compressed) is written from
//! the checkpoint, opened read-only, only when a peer needs it, once per
//! checkpoint, by whichever transfer asks first. A full copy at every build
//! cost every node minutes of CPU and as much disk as the state itself at
//! full scale, although most snapshots are never sent.
//!
//! May touch only the node's `snapshots/` directory (and read the live
//! database to checkpoint it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{DB, IteratorMode, Options};

use super::snapshot::{SnapshotFile, SnapshotWriter};
use super::{CF_SM_META, cf, decode, io_err};
use crate::domain::FAMILIES;
use crate::types::{LogId, SnapshotMeta, StoredMembership};

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";

/// Directory-name prefix of a checkpoint (`ckpt-<snapshot name>`).
pub const CHECKPOINT_PREFIX: &str = "ckpt-";

/// A snapshot's data as openraft carries it: the snapshot file, present
/// already (received from a peer, or written earlier) or written from the
/// checkpoint on first use. Clones share the one file.
#[derive(Debug, Clone)]
pub struct SnapshotHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    file_path: PathBuf,
    checkpoint: Option<PathBuf>,
    /// The opened file once it exists; the lock also keeps two transfers
    /// from writing the file at once.
    ready: Mutex<Option<SnapshotFile>>,
}

impl SnapshotHandle {
    /// A complete snapshot file.
    pub fn of_file(file: SnapshotFile) -> Self {
        SnapshotHandle {
            inner: Arc::new(HandleInner {
                file_path: file.path.clone(),
                checkpoint: None,
                ready: Mutex::new(Some(file)),
            }),
        }
    }

    /// The snapshot at `file_path`, written from `checkpoint` if the file
    /// does not exist yet.
    pub fn of_checkpoint(checkpoint: PathBuf, file_path: PathBuf) -> Self {
        SnapshotHandle {
            inner: Arc::new(HandleInner {
                file_path,
                checkpoint: Some(checkpoint),
                ready: Mutex::new(None),
            }),
        }
    }

    /// Whether anything besides the state machine's own reference holds
    /// this snapshot (a transfer in progress).
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.inner) > 1
    }

    /// Where the snapshot file is (or will be).
    pub fn file_path(&self) -> &Path {
        &self.inner.file_path
    }

    /// The snapshot file, writing it from the checkpoint first when it is
    /// not there yet. Blocking; at full scale this takes minutes, so run it
    /// off the async runtime.
    pub fn materialize(&self) -> Result<SnapshotFile, std::io::Error> {
        let mut ready = self.inner.ready.lock().map_err(io_err)?;
        if let Some(f) = ready.as_ref() {
            return Ok(f.clone());
        }
        let path = &self.inner.file_path;
        if !path.exists() {
            let Some(dir) = &self.inner.checkpoint else {
                return Err(io_err(format!(
                    "snapshot file {} is gone and has no checkpoint",
                    path.display()
                )));
            };
            let started = std::time::Instant::now();
            let ckpt = open_read_only(dir)?;
            let tmp = path.with_extension("snap.tmp");
            let items = write_snapshot_file(&ckpt, &tmp)?;
            drop(ckpt);
            std::fs::rename(&tmp, path)?;
            fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
            metrics::histogram!("billdb_snapshot_file_write_seconds")
                .record(started.elapsed().as_secs_f64());
            tracing::info!(snapshot = %path.display(), items, ms = started.elapsed().as_millis() as u64, "snapshot file written from its checkpoint");
        }
        let f = SnapshotFile::open(path)?;
        *ready = Some(f.clone());
        Ok(f)
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), std::io::Error> {
    std::fs::File::open(dir)?.sync_all()
}

/// What a state (live database or checkpoint) has applied: the snapshot
/// meta describing it.
pub(crate) fn meta_of(db: &DB) -> Result<SnapshotMeta, std::io::Error> {
    let meta_cf = cf(db, CF_SM_META)?;
    let last_log_id = match db.get_cf(meta_cf, KEY_APPLIED).map_err(io_err)? {
        Some(v) => decode::<Option<LogId>>(&v)?,
        None => None,
    };
    let last_membership = match db.get_cf(meta_cf, KEY_MEMBERSHIP).map_err(io_err)? {
        Some(v) => decode(&v)?,
        None => StoredMembership::default(),
    };
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
    })
}

/// Write every domain family of `db` (a checkpoint: nothing writes it) to
/// a snapshot file at `dest`. Returns the number of items.
pub(crate) fn write_snapshot_file(db: &DB, dest: &Path) -> Result<u64, std::io::Error> {
    let mut w = SnapshotWriter::create(dest)?;
    for (i, family) in FAMILIES.iter().enumerate() {
        for item in db.iterator_cf(cf(db, family.name())?, IteratorMode::Start) {
            let (k, v) = item.map_err(io_err)?;
            w.add(i as u8, &k, &v)?;
        }
    }
    w.finish()
}

/// Open a checkpoint read-only with all its column families. Every table
/// file is opened up front (`max_open_files = -1`), so removing the
/// directory later (a newer snapshot replacing it) cannot break a reader
/// that is already open.
pub fn open_read_only(dir: &Path) -> Result<DB, std::io::Error> {
    let mut opts = Options::default();
    opts.set_max_open_files(-1);
    let names = DB::list_cf(&opts, dir).map_err(io_err)?;
    DB::open_cf_for_read_only(&opts, dir, names, false).map_err(io_err)
}

/// Checkpoint `db` into `snap_dir/ckpt-<name>` and return its meta and
/// directory. A checkpoint of the same applied state already there is
/// kept and the new one dropped.
pub(crate) fn create(
    db: &DB,
    snap_dir: &Path,
    name_of: impl Fn(&SnapshotMeta) -> String,
) -> Result<(SnapshotMeta, PathBuf), std::io::Error> {
    static BUILD_NO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILD_NO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = snap_dir.join(format!("building-{}-{n}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(&tmp))
        .map_err(io_err)?;
    let meta = meta_of(&open_read_only(&tmp)?)?;
    let dest = snap_dir.join(format!("{CHECKPOINT_PREFIX}{}", name_of(&meta)));
    if dest.exists() {
        std::fs::remove_dir_all(&tmp)?;
    } else {
        std::fs::rename(&tmp, &dest)?;
        fsync_dir(snap_dir)?;
    }
    Ok((meta, dest))
}
