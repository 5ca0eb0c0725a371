//! A backup destination `DIR`, shared by `billdb backup …` and the node's
//! scheduled backups (`schedule`): its layout, the writer that stores one
//! backup, the locks that keep a writer and a prune apart, and `prune`.
//!
//! - `billdb-backup.json`: the marker (`{"format": 1}`); a directory without
//!   it that is not empty is refused as "not a billdb backup".
//! - `files/<sha256>`: every database file ever backed up, named by the
//!   SHA-256 of its content. RocksDB never changes an SST file once written,
//!   so a later backup finds most of its files here already and copies only
//!   the new ones (incremental); two backups share what they share.
//! - `backups/<id>/manifest.json` + `manifest.sig`: one backup: cluster id,
//!   applied log id, time, every file (name, size, SHA-256), the state
//!   digest and the business fingerprints; the signature is Ed25519 over the
//!   exact bytes of `manifest.json`.
//! - `locks/`: `write-<nonce>` while a backup is being written, `prune`
//!   while a prune runs; each renewed every [`LOCK_RENEW`] and void once
//!   older than [`LOCK_STALE`] (its holder died).
//! - `schedule/`: the scheduled backups' claims and records (`schedule`).
//!
//! Everything is written under a temporary name (`.…part`, `.…tmp`),
//! fsynced and renamed, so an interrupted run leaves nothing a later run
//! takes for a good file or backup; `prune` removes such leftovers.
//!
//! May touch: the destination directory it is given, nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{FileEntry, Fingerprints, Hold};
use crate::types::{LogId, NodeId};

/// Format of the destination layout and the manifest this build writes.
pub const BACKUP_FORMAT: u32 = 1;
pub const MARKER_FILE: &str = "billdb-backup.json";
pub const FILES_DIR: &str = "files";
pub const BACKUPS_DIR: &str = "backups";
pub const LOCKS_DIR: &str = "locks";
pub const SCHEDULE_DIR: &str = "schedule";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// How often a lock's holder renews it.
pub const LOCK_RENEW: Duration = Duration::from_secs(5);
/// A lock not renewed for this long is void (its holder died). Generous:
/// the destination is often a shared mount, and the clocks of the
/// machines that write it may differ by a little.
pub const LOCK_STALE: Duration = Duration::from_secs(120);
/// A verify's work directory (`.verify-…`) older than this is a leftover.
const VERIFY_LEFTOVER_AGE: Duration = Duration::from_secs(3600);
/// Most backups a retention rule may name per kind.
pub const KEEP_MAX: u32 = 100_000;

/// An error a script can act on: `code` is one of the `E_…` constants.
#[derive(Debug, Clone, Serialize)]
pub struct BackupError {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackupError {}

pub const E_NOT_A_BACKUP: &str = "NOT_A_BACKUP";
pub const E_NEWER_FORMAT: &str = "NEWER_FORMAT";
pub const E_NO_SUCH_BACKUP: &str = "NO_SUCH_BACKUP";
pub const E_BAD_KEY: &str = "BAD_KEY";
pub const E_INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
pub const E_BUSY: &str = "BUSY";
pub const E_MANIFEST_UNREADABLE: &str = "MANIFEST_UNREADABLE";
pub const E_NOT_EMPTY: &str = "NOT_EMPTY";
pub const E_VERIFY_FAILED: &str = "VERIFY_FAILED";
pub const E_NO_SPACE: &str = "NO_SPACE";

/// Room kept free beyond what a backup or restore writes (manifests,
/// directory entries, the filesystem's own needs).
pub const SPACE_MARGIN_BYTES: u64 = 16 << 20;

/// Refuses with NO_SPACE, before anything is written, when the filesystem
/// of `dir` (or of its nearest existing ancestor) has less free than
/// `need_bytes` plus [`SPACE_MARGIN_BYTES`].
pub fn ensure_space(dir: &Path, need_bytes: u64, what: &str) -> Result<()> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let (free, _) = crate::storage_guard::fs_space(existing)
        .map_err(|e| anyhow!("free space of {}: {e}", existing.display()))?;
    let want = need_bytes.saturating_add(SPACE_MARGIN_BYTES);
    if free < want {
        return Err(error(
            E_NO_SPACE,
            format!(
                "{what} needs {need_bytes} bytes (and {} MiB to spare) on the filesystem of {}, \
                 which has {free} bytes free: free some space or choose another place; nothing \
                 was written",
                SPACE_MARGIN_BYTES >> 20,
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// `e` as NO_SPACE when a write under `dir` found the disk full (the part
/// written is removed by the caller).
pub fn no_space(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    });
    if full && code_of(&e).is_none() {
        error(
            E_NO_SPACE,
            format!(
                "the filesystem of {} filled up: {e:#}; what this run wrote there was removed",
                dir.display()
            ),
        )
    } else {
        e
    }
}

/// An `anyhow` error carrying a [`BackupError`].
pub fn error(code: &'static str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BackupError {
        code,
        message: message.into(),
    })
}

/// The code of an error chain's [`BackupError`], if it has one.
pub fn code_of(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .find_map(|c| c.downcast_ref::<BackupError>())
        .map(|b| b.code)
}

/// One backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    /// The cluster id of the source (`None`: a cluster without TLS).
    pub cluster_id: Option<String>,
    /// The database's data format (`crate::store::DATA_FORMAT`).
    pub data_format: u32,
    pub source_node: NodeId,
    pub applied_log_id: LogId,
    /// When the hold was made (RFC 3339) and as Unix milliseconds.
    pub created_at: String,
    pub created_unix_ms: u64,
    pub files: Vec<FileEntry>,
    pub bytes_total: u64,
    /// `GET /v1/cluster/digest` of the state.
    pub digest: String,
    /// Per `branch/utility`: accounts, records, Σ amounts by kind, Σ balances.
    pub fingerprints: Fingerprints,
}

// ---- keys -------------------------------------------------------------------

fn read_hex_32(path: &Path, what: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        error(
            E_BAD_KEY,
            format!("reading the {what} {}: {e}", path.display()),
        )
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| {
        error(
            E_BAD_KEY,
            format!("{} is not a billdb backup {what} (not hex)", path.display()),
        )
    })?;
    bytes.try_into().map_err(|_| {
        error(
            E_BAD_KEY,
            format!(
                "{} is not a billdb backup {what} (not 32 bytes)",
                path.display()
            ),
        )
    })
}

/// The Ed25519 private key at `path` (hex, as `billdb backup keygen`
/// writes it). Errors name the file, never its content.
pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_hex_32(path, "private key")?))
}

pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    VerifyingKey::from_bytes(&read_hex_32(path, "public key")?).map_err(|e| {
        error(
            E_BAD_KEY,
            format!("{} is not a valid Ed25519 public key: {e}", path.display()),
        )
    })
}

// ---- the destination --------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Check that `dir` is a billdb backup destination this build reads.
pub fn check_marker(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        error(
            E_NOT_A_BACKUP,
            format!(
                "{} is not a billdb backup (no {MARKER_FILE})",
                dir.display()
            ),
        )
    })?;
    let m: Marker = serde_json::from_str(&text).map_err(|e| {
        error(
            E_NOT_A_BACKUP,
            format!("{} is not a billdb backup marker: {e}", path.display()),
        )
    })?;
    if m.format > BACKUP_FORMAT {
        return Err(error(
            E_NEWER_FORMAT,
            format!(
                "{} was written by a newer billdb (backup format {}; this build reads up to {BACKUP_FORMAT})",
                dir.display(),
                m.format
            ),
        ));
    }
    Ok(())
}

/// Open the destination, making it when it is new or empty.
pub fn open_destination(dir: &Path) -> Result<()> {
    if dir.join(MARKER_FILE).exists() {
        check_marker(dir)?;
        for sub in [FILES_DIR, BACKUPS_DIR] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        return Ok(());
    }
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            return Err(error(
                E_NOT_A_BACKUP,
                format!(
                    "{} is not empty and is not a billdb backup: choose an empty or new directory",
                    dir.display()
                ),
            ));
        }
    }
    std::fs::create_dir_all(dir.join(FILES_DIR))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join(BACKUPS_DIR))?;
    let tmp = dir.join(format!(".{MARKER_FILE}.{}.tmp", nonce()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&Marker {
            format: BACKUP_FORMAT,
        })?,
    )?;
    std::fs::rename(&tmp, dir.join(MARKER_FILE))?;
    fsync_dir(dir)
}

pub fn store_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(FILES_DIR).join(sha256)
}

/// Whether the store holds this file already (same size; its content was
/// checked when it was stored).
pub fn held(dir: &Path, f: &FileEntry) -> bool {
    std::fs::metadata(store_path(dir, &f.sha256)).is_ok_and(|m| m.is_file() && m.len() == f.size)
}

/// A writer that hashes and counts what goes through it.
pub struct Hashing<W: Write> {
    pub inner: W,
    pub h: Sha256,
    pub n: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            h: Sha256::new(),
            n: 0,
        }
    }

    pub fn hex(&self) -> String {
        hex::encode(self.h.clone().finalize())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Every backup id in `dir`, oldest first.
pub fn list_ids(dir: &Path) -> Result<Vec<String>> {
    check_marker(dir)?;
    let mut ids = Vec::new();
    let backups = dir.join(BACKUPS_DIR);
    if !backups.exists() {
        return Ok(ids);
    }
    for e in
        std::fs::read_dir(&backups).with_context(|| format!("reading {}", backups.display()))?
    {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}

/// A backup's manifest as written, WITHOUT checking its signature: what
/// `list` and `prune` read (verify and restore check it first).
pub fn read_manifest_unverified(dir: &Path, backup_id: &str) -> Result<Manifest> {
    let p = dir.join(BACKUPS_DIR).join(backup_id).join(MANIFEST_FILE);
    let bytes = std::fs::read(&p).map_err(|e| {
        error(
            E_MANIFEST_UNREADABLE,
            format!("backup {backup_id}: reading {}: {e}", p.display()),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            E_MANIFEST_UNREADABLE,
            format!(
                "backup {backup_id}: {} is not a billdb manifest: {e}",
                p.display()
            ),
        )
    })
}

/// The node the newest backup in `dir` was taken from (unsigned hint:
/// only a preference).
pub fn newest_source(dir: &Path) -> Option<NodeId> {
    let id = list_ids(dir).ok()?.pop()?;
    read_manifest_unverified(dir, &id)
        .ok()
        .map(|m| m.source_node)
}

/// 16 random hex digits (unique names for temporary files and locks).
pub fn nonce() -> String {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // No /dev/urandom: time and pid are unique enough for file names.
        let t = unix_ms().wrapping_mul(1_000_003) ^ u64::from(std::process::id());
        b = t.to_le_bytes();
    }
    hex::encode(b)
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `20261206T060312Z` from an RFC 3339 time.
fn compact_time(rfc3339: &str) -> String {
    let digits: String = rfc3339
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{digits}Z")
}

// ---- locks ------------------------------------------------------------------

/// A lock file in `DIR/locks/`, renewed by a thread until dropped (then
/// removed).
pub struct Lock {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Lock {
    fn make(path: PathBuf, create_new: bool) -> std::io::Result<Lock> {
        Self::make_renewed(path, create_new, LOCK_RENEW)
    }

    fn make_renewed(path: PathBuf, create_new: bool, renew: Duration) -> std::io::Result<Lock> {
        let body = format!(
            "{{\"pid\": {}, \"host_unix_ms\": {}}}\n",
            std::process::id(),
            unix_ms()
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .create_new(create_new)
            .truncate(true)
            .open(&path)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (path.clone(), stop.clone());
        let renewer = std::thread::Builder::new()
            .name("backup-lock".into())
            .spawn(move || {
                let mut last = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    if last.elapsed() >= renew {
                        last = Instant::now();
                        let _ = std::fs::File::options()
                            .write(true)
                            .open(&p)
                            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    }
                }
            })?;
        Ok(Lock {
            path,
            stop,
            renewer: Some(renewer),
        })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The live locks in `DIR/locks/` whose name starts with `prefix`
/// (renewed within [`LOCK_STALE`]), except `mine`.
fn live_locks(dir: &Path, prefix: &str, mine: Option<&Path>) -> Vec<String> {
    live_locks_within(dir, prefix, mine, LOCK_STALE)
}

fn live_locks_within(
    dir: &Path,
    prefix: &str,
    mine: Option<&Path>,
    stale: Duration,
) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join(LOCKS_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| mine != Some(e.path().as_path()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < stale);
            (name.starts_with(prefix) && fresh).then_some(name)
        })
        .collect()
}

const WRITE_LOCK_PREFIX: &str = "write-";
const PRUNE_LOCK: &str = "prune";

const ARCHIVE_LOCK: &str = "archive";

/// The one archiver of `dir` (`archive`): refused with BUSY while another
/// one's lock is live; a lock its holder stopped renewing is taken over.
pub fn lock_archive(dir: &Path) -> Result<Lock> {
    lock_archive_stale_after(dir, LOCK_STALE)
}

/// [`lock_archive`], renewed every second and void after `stale` without
/// renewal (the nodes' archiver: `backup.claim_stale_s`).
pub fn lock_archive_stale_after(dir: &Path, stale: Duration) -> Result<Lock> {
    let locks = dir.join(LOCKS_DIR);
    std::fs::create_dir_all(&locks).with_context(|| format!("creating {}", locks.display()))?;
    let path = locks.join(ARCHIVE_LOCK);
    if path.exists() && live_locks_within(dir, ARCHIVE_LOCK, None, stale).is_empty() {
        // Its holder died: void.
        let _ = std::fs::remove_file(&path);
    }
    let renew = Duration::from_secs(1)
        .min(stale / 3)
        .max(Duration::from_millis(200));
    Lock::make_renewed(path, true, renew).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            error(
                E_BUSY,
                format!(
                    "another billdb backup archive is writing {} (locks/{ARCHIVE_LOCK}); one archiver per destination",
                    dir.display()
                ),
            )
        } else {
            anyhow!("writing a lock in {}: {e}", locks.display())
        }
    })
}

/// Announce a writer in `dir`; refused while a prune runs.
pub fn lock_for_writing(dir: &Path) -> Result<Lock> {
    let locks = dir.join(LOCKS_DIR);
    std::fs::create_dir_all(&locks).with_context(|| format!("creating {}", locks.display()))?;
    let path = locks.join(format!("{WRITE_LOCK_PREFIX}{}", nonce()));
    let lock =
        Lock::make(path, true).with_context(|| format!("writing a lock in {}", locks.display()))?;
    // Announced first, then looked: a prune that starts now sees us.
    if !live_locks(dir, PRUNE_LOCK, None).is_empty() {
        return Err(error(
            E_BUSY,
            format!(
                "a prune is running in {} (locks/{PRUNE_LOCK}): try again when it is done",
                dir.display()
            ),
        ));
    }
    Ok(lock)
}

/// Take the prune lock of `dir`; refused while another prune or any
/// writer runs.
fn lock_for_pruning(dir: &Path) -> Result<Lock> {
    let locks = dir.join(LOCKS_DIR);
    std::fs::create_dir_all(&locks).with_context(|| format!("creating {}", locks.display()))?;
    let path = locks.join(PRUNE_LOCK);
    let lock = match Lock::make(path.clone(), true) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !live_locks(dir, PRUNE_LOCK, None).is_empty() {
                return Err(error(
                    E_BUSY,
                    format!("another prune is running in {}", dir.display()),
                ));
            }
            // Void (its holder died): set it aside under a unique name
            // (only one taker succeeds), then take it.
            let aside = locks.join(format!(".{PRUNE_LOCK}.{}.void", nonce()));
            if std::fs::rename(&path, &aside).is_ok() {
                let _ = std::fs::remove_file(&aside);
            }
            Lock::make(path, true).map_err(|_| {
                error(
                    E_BUSY,
                    format!("another prune is running in {}", dir.display()),
                )
            })?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("writing a lock in {}", locks.display()));
        }
    };
    let writers = live_locks(dir, WRITE_LOCK_PREFIX, None);
    if !writers.is_empty() {
        return Err(error(
            E_BUSY,
            format!(
                "a backup is being written into {} (locks/{}): prune when it is done",
                dir.display(),
                writers.join(", locks/")
            ),
        ));
    }
    Ok(lock)
}

// ---- writing a backup ---------------------------------------------------------

/// Where a hold's files come from: the node's own hold directory
/// (scheduled backups) or its HTTP route (`billdb backup create`).
pub trait HoldSource {
    /// Write file `f` of the hold into `out`, calling `progress` with each
    /// piece's size.
    fn copy(
        &mut self,
        f: &FileEntry,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()>;
}

/// Copies from a hold directory on this machine.
pub struct LocalHold(pub PathBuf);

impl HoldSource for LocalHold {
    fn copy(
        &mut self,
        f: &FileEntry,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        use std::io::Read;
        ensure!(super::safe_name(&f.name), "bad file name {:?}", f.name);
        let p = self.0.join(&f.name);
        let mut input =
            std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input
                .read(&mut buf)
                .with_context(|| format!("reading {}", p.display()))?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])?;
            progress(n as u64);
        }
    }
}

/// What a writer reports as it goes (the CLI draws a bar).
pub trait Progress {
    fn begin(&mut self, _bytes_to_copy: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn end(&mut self) {}
}

impl Progress for () {}

/// The hold to back up and where it came from.
pub struct Source<'a> {
    pub hold: &'a Hold,
    pub node: NodeId,
    pub cluster_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Written {
    pub backup_id: String,
    pub source_node: NodeId,
    pub applied_index: u64,
    pub created_unix_ms: u64,
    pub files: usize,
    pub files_copied: usize,
    pub bytes_total: u64,
    pub bytes_copied: u64,
    pub digest: String,
}

/// Store one backup of `src.hold` in `dir`: the files `dir` does not hold
/// yet (each checked against its size and SHA-256), then the signed
/// manifest. `before_commit` runs just before the manifest is put in place
/// (an error there leaves no backup). Holds a writer lock throughout.
pub fn write_backup(
    dir: &Path,
    src: Source<'_>,
    files: &mut dyn HoldSource,
    key: &SigningKey,
    progress: &mut dyn Progress,
    before_commit: &mut dyn FnMut() -> Result<()>,
) -> Result<Written> {
    let hold = src.hold;
    ensure!(
        hold.data_format == crate::store::DATA_FORMAT,
        "node {} runs data format {}, this billdb reads format {}: use the billdb of the cluster's release",
        src.node,
        hold.data_format,
        crate::store::DATA_FORMAT
    );
    let applied = hold
        .summary
        .applied
        .context("the node has applied nothing yet: nothing to back up")?;
    open_destination(dir)?;
    // Room for what is not held yet, before anything is written (the lock
    // included); a writer running meanwhile can only lower the need.
    let need: u64 = hold
        .files
        .iter()
        .filter(|f| !held(dir, f))
        .map(|f| f.size)
        .sum();
    ensure_space(dir, need, "the backup")?;
    let _lock = lock_for_writing(dir)?;
    let created_unix_ms = unix_ms();
    let created_at = crate::api::validate::to_rfc3339(created_unix_ms as i64);
    let missing: Vec<&FileEntry> = hold.files.iter().filter(|f| !held(dir, f)).collect();
    let bytes_copied: u64 = missing.iter().map(|f| f.size).sum();
    progress.begin(bytes_copied);
    for f in &missing {
        store_file(dir, f, files, progress).map_err(|e| no_space(e, dir))?;
    }
    progress.end();
    fsync_dir(&dir.join(FILES_DIR))?;
    let mut backup_id = format!("{}-{:012}", compact_time(&created_at), applied.index);
    let mut n = 2;
    while dir.join(BACKUPS_DIR).join(&backup_id).exists() {
        backup_id = format!("{}-{:012}-{n}", compact_time(&created_at), applied.index);
        n += 1;
    }
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        backup_id: backup_id.clone(),
        cluster_id: src.cluster_id,
        data_format: hold.data_format,
        source_node: src.node,
        applied_log_id: applied,
        created_at,
        created_unix_ms,
        bytes_total: hold.files.iter().map(|f| f.size).sum(),
        files: hold.files.clone(),
        digest: hold.summary.digest.clone(),
        fingerprints: hold.summary.fingerprints.clone(),
    };
    before_commit()?;
    write_manifest(dir, &manifest, key).map_err(|e| no_space(e, dir))?;
    Ok(Written {
        backup_id,
        source_node: src.node,
        applied_index: applied.index,
        created_unix_ms,
        files: manifest.files.len(),
        files_copied: missing.len(),
        bytes_total: manifest.bytes_total,
        bytes_copied,
        digest: manifest.digest,
    })
}

/// Store one file: `.…part`, checked against its size and SHA-256,
/// fsynced, renamed to its hash.
fn store_file(
    dir: &Path,
    f: &FileEntry,
    files: &mut dyn HoldSource,
    progress: &mut dyn Progress,
) -> Result<()> {
    ensure!(
        f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
        "the node named file {} with a bad hash {:?}",
        f.name,
        f.sha256
    );
    let dest = store_path(dir, &f.sha256);
    let part = dir
        .join(FILES_DIR)
        .join(format!(".{}.{}.part", f.sha256, nonce()));
    let file =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut w = Hashing::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let got = files.copy(f, &mut w, &mut |n| progress.advance(n));
    let check = (|| -> Result<()> {
        got.with_context(|| format!("copying {}", f.name))?;
        let sha = w.hex();
        ensure!(
            w.n == f.size && sha == f.sha256,
            "{}: received {} bytes with SHA-256 {sha}, the node announced {} bytes, {}",
            f.name,
            w.n,
            f.size,
            f.sha256
        );
        let file = w
            .inner
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {}", part.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", part.display()))?;
        std::fs::rename(&part, &dest).with_context(|| format!("renaming to {}", dest.display()))
    })();
    if check.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    check
}

fn write_manifest(dir: &Path, m: &Manifest, key: &SigningKey) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(m)?;
    let sig = key.sign(&bytes);
    let backups = dir.join(BACKUPS_DIR);
    let tmp = backups.join(format!(".{}.{}.tmp", m.backup_id, nonce()));
    std::fs::create_dir_all(&tmp)?;
    let write = |name: &str, content: &[u8]| -> Result<()> {
        let p = tmp.join(name);
        let mut f =
            std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        f.write_all(content)?;
        f.sync_all()?;
        Ok(())
    };
    let done = (|| -> Result<()> {
        write(MANIFEST_FILE, &bytes)?;
        write(
            SIGNATURE_FILE,
            format!("{}\n", hex::encode(sig.to_bytes())).as_bytes(),
        )?;
        fsync_dir(&tmp)?;
        std::fs::rename(&tmp, backups.join(&m.backup_id))?;
        fsync_dir(&backups)
    })();
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done
}

// ---- prune ----------------------------------------------------------------------

/// Which backups a prune keeps (the union of the rules): the `keep_last`
/// newest; the newest of each of the `keep_daily` most recent days that
/// have a backup; the newest of each of the `keep_monthly` most recent
/// months that have one (UTC days and months of the manifest's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: 0,
            keep_daily: 7,
            keep_monthly: 12,
        }
    }
}

impl Retention {
    /// A rule that keeps nothing is refused (it would delete every backup).
    pub fn validate(&self) -> Result<()> {
        if self.keep_last == 0 && self.keep_daily == 0 && self.keep_monthly == 0 {
            return Err(error(
                E_INVALID_ARGUMENT,
                "the retention keeps nothing (keep-last, keep-daily and keep-monthly are all 0): \
                 refusing to delete every backup",
            ));
        }
        for (name, v) in [
            ("keep-last", self.keep_last),
            ("keep-daily", self.keep_daily),
            ("keep-monthly", self.keep_monthly),
        ] {
            if v > KEEP_MAX {
                return Err(error(
                    E_INVALID_ARGUMENT,
                    format!("{name} {v}: at most {KEEP_MAX}"),
                ));
            }
        }
        Ok(())
    }

    /// The ids to keep among `backups` (id, created Unix ms).
    pub fn select(&self, backups: &[(String, u64)]) -> BTreeSet<String> {
        let mut newest_first: Vec<&(String, u64)> = backups.iter().collect();
        newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let mut keep = BTreeSet::new();
        for (id, _) in newest_first.iter().take(self.keep_last as usize) {
            keep.insert(id.clone());
        }
        // RFC 3339: the first 10 characters are the UTC day, 7 the month.
        for (len, n) in [(10, self.keep_daily), (7, self.keep_monthly)] {
            let mut periods = BTreeSet::new();
            for (id, ms) in &newest_first {
                if periods.len() >= n as usize {
                    break;
                }
                let t = crate::api::validate::to_rfc3339(*ms as i64);
                if periods.insert(t[..len].to_string()) {
                    keep.insert(id.clone());
                }
            }
        }
        keep
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dir: PathBuf,
    pub dry_run: bool,
    pub retention: Retention,
    /// Backups kept, oldest first.
    pub kept: Vec<String>,
    /// Backups deleted (or, in a dry run, that would be), oldest first.
    pub deleted_backups: Vec<String>,
    /// Content files no kept backup references, deleted.
    pub deleted_files: Vec<String>,
    /// Half-written leftovers of interrupted runs, removed.
    pub leftovers: Vec<String>,
    /// Log archive segments no kept backup can replay from (all their
    /// entries at or before the oldest kept backup's applied index).
    pub archive_segments: Vec<String>,
    /// Bytes freed (files, segments and leftovers).
    pub bytes_freed: u64,
    pub ms: u64,
}

fn size_of(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p)
        .map(|es| es.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

fn remove_any(p: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(p).with_context(|| format!("reading {}", p.display()))?;
    if m.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
    .with_context(|| format!("removing {}", p.display()))
}

/// Delete the backups `retention` does not keep, then every content file
/// no kept backup references, and the leftovers of interrupted runs. A
/// file a kept backup references is never deleted. Refused (nothing
/// deleted) while a backup is being written or another prune runs, and
/// when a manifest cannot be read (its files' references are unknown).
/// `dry_run`: report what would go, change nothing, take no lock.
pub fn prune(dir: &Path, retention: &Retention, dry_run: bool) -> Result<PruneReport> {
    let started = Instant::now();
    retention.validate()?;
    check_marker(dir)?;
    let _lock = if dry_run {
        None
    } else {
        Some(lock_for_pruning(dir)?)
    };
    let ids = list_ids(dir)?;
    let mut manifests = BTreeMap::new();
    for id in &ids {
        manifests.insert(id.clone(), read_manifest_unverified(dir, id)?);
    }
    let times: Vec<(String, u64)> = manifests
        .iter()
        .map(|(id, m)| (id.clone(), m.created_unix_ms))
        .collect();
    let keep = retention.select(&times);
    let referenced: BTreeSet<&str> = manifests
        .iter()
        .filter(|(id, _)| keep.contains(*id))
        .flat_map(|(_, m)| m.files.iter().map(|f| f.sha256.as_str()))
        .collect();
    let deleted_backups: Vec<String> = ids
        .iter()
        .filter(|id| !keep.contains(*id))
        .cloned()
        .collect();
    let mut report = PruneReport {
        dir: dir.to_path_buf(),
        dry_run,
        retention: *retention,
        kept: ids
            .iter()
            .filter(|id| keep.contains(*id))
            .cloned()
            .collect(),
        deleted_backups: deleted_backups.clone(),
        deleted_files: Vec::new(),
        leftovers: Vec::new(),
        archive_segments: Vec::new(),
        bytes_freed: 0,
        ms: 0,
    };
    // Backups first (each set aside under a dot name, then removed: an
    // interrupted prune leaves a leftover, never a backup without files).
    let backups = dir.join(BACKUPS_DIR);
    for id in &deleted_backups {
        let p = backups.join(id);
        report.bytes_freed += size_of(&p);
        if !dry_run {
            let aside = backups.join(format!(".{id}.{}.deleting", nonce()));
            std::fs::rename(&p, &aside)
                .with_context(|| format!("setting {} aside", p.display()))?;
            remove_any(&aside)?;
        }
    }
    if !dry_run && !deleted_backups.is_empty() {
        fsync_dir(&backups)?;
    }
    let files = dir.join(FILES_DIR);
    let mut names: Vec<(String, PathBuf)> = std::fs::read_dir(&files)
        .with_context(|| format!("reading {}", files.display()))?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    names.sort();
    for (name, p) in &names {
        if name.starts_with('.') {
            // A writer's `.…part`: no writer runs (we hold the prune lock).
            if !dry_run || live_locks(dir, WRITE_LOCK_PREFIX, None).is_empty() {
                report.bytes_freed += size_of(p);
                report.leftovers.push(format!("{FILES_DIR}/{name}"));
                if !dry_run {
                    remove_any(p)?;
                }
            }
        } else if !referenced.contains(name.as_str()) {
            report.bytes_freed += size_of(p);
            report.deleted_files.push(name.clone());
            if !dry_run {
                remove_any(p)?;
            }
        }
    }
    // Manifests being written (`.…tmp`) or backups being deleted
    // (`.…deleting`) by runs that died.
    for e in std::fs::read_dir(&backups)
        .with_context(|| format!("reading {}", backups.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && (!dry_run || live_locks(dir, WRITE_LOCK_PREFIX, None).is_empty())
        {
            report.bytes_freed += size_of(&e.path());
            report.leftovers.push(format!("{BACKUPS_DIR}/{name}"));
            if !dry_run {
                remove_any(&e.path())?;
            }
        }
    }
    // The destination's own temporary files and old verify work directories.
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > VERIFY_LEFTOVER_AGE);
        let leftover = (name.starts_with(&format!(".{MARKER_FILE}.")) && name.ends_with(".tmp"))
            || (name.starts_with(".verify-") && old);
        if leftover {
            report.bytes_freed += size_of(&e.path());
            report.leftovers.push(name.clone());
            if !dry_run {
                remove_any(&e.path())?;
            }
        }
    }
    if !dry_run {
        fsync_dir(&files)?;
    }
    // The log archive: what no kept backup can replay from goes.
    if let Some(oldest) = manifests
        .iter()
        .filter(|(id, _)| keep.contains(*id))
        .map(|(_, m)| m.applied_log_id.index)
        .min()
    {
        let archiver_live = !live_locks(dir, ARCHIVE_LOCK, None).is_empty();
        let a = super::archive::prune_before(dir, oldest, dry_run, archiver_live)?;
        report.bytes_freed += a.bytes;
        report.archive_segments = a.segments;
        report.leftovers.extend(a.leftovers);
    }
    report.ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// The text form of a prune report.
pub fn render_prune(r: &PruneReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mut s = String::new();
    for id in &r.deleted_backups {
        s += &format!("{verb} backup {id}\n");
    }
    for f in &r.deleted_files {
        s += &format!("{verb} file {FILES_DIR}/{f}\n");
    }
    for a in &r.archive_segments {
        s += &format!("{verb} log archive segment {a}\n");
    }
    for l in &r.leftovers {
        s += &format!("{verb} leftover {l}\n");
    }
    s += &format!(
        "{}: kept {} backups, {verb} {} backups, {} files, {} archive segments and {} leftovers; {} bytes {}\n",
        r.dir.display(),
        r.kept.len(),
        r.deleted_backups.len(),
        r.deleted_files.len(),
        r.archive_segments.len(),
        r.leftovers.len(),
        r.bytes_freed,
        if r.dry_run { "would be freed" } else { "freed" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn retention_keeps_the_newest_of_each_day_and_month() {
        // 2026-01-01 is 20454 days after the epoch.
        let jan1 = 20_454 * DAY;
        let b = |id: &str, ms: u64| (id.to_string(), ms);
        let all = vec![
            b("a", jan1 + 1000),         // Jan 1, early
            b("b", jan1 + 2000),         // Jan 1, newest of the day
            b("c", jan1 + DAY + 10),     // Jan 2
            b("d", jan1 + 40 * DAY),     // Feb 10
            b("e", jan1 + 40 * DAY + 5), // Feb 10, newest
            b("f", jan1 + 41 * DAY),     // Feb 11 (the newest)
        ];
        let r = |l, d, m| Retention {
            keep_last: l,
            keep_daily: d,
            keep_monthly: m,
        };
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(r(0, 2, 0).select(&all), set(&["e", "f"]));
        assert_eq!(r(0, 0, 2).select(&all), set(&["c", "f"]));
        assert_eq!(r(0, 3, 2).select(&all), set(&["c", "e", "f"]));
        assert_eq!(r(2, 0, 0).select(&all), set(&["e", "f"]));
        assert_eq!(r(0, 10, 0).select(&all), set(&["b", "c", "e", "f"]));
        assert!(r(0, 0, 0).validate().is_err());
        assert!(r(0, KEEP_MAX + 1, 0).validate().is_err());
        assert!(r(1, 0, 0).validate().is_ok());
    }
}
