//! A node whose storage failed under it: the Raft core stopped on a storage
//! error (a full disk, a write or an fsync that returned an error). The
//! guard notices, fences the node (not ready, every client request refused
//! with UNAVAILABLE and the reason, shown in status and `/metrics`), and
//! brings it back by itself: once a probe write with fsync succeeds in the
//! data directory and the filesystem has `storage.recover_free_bytes_min`
//! free, it re-executes the node (same process id, same arguments), which
//! reopens RocksDB, replays its log and catches up from the leader like any
//! restarted node.
//!
//! A checksum failure (`Corruption`, found by a read, by the Raft core or
//! by the background scrub) is different: the data on disk cannot be
//! vouched for, so reopening it would not help. The node is fenced the
//! same way, hands its leadership over, stops its Raft core (no votes, no
//! acknowledgements) and is repaired from its peers (`repair`).
//!
//! Why a restart and not a retry: an fsync that failed must never be
//! retried as if the data were safe (the kernel may already have dropped
//! the dirty pages: "fsyncgate"), and openraft's core does not resume after
//! a storage error. Reopening from what is on disk is the one recovery that
//! needs no trust in the process's memory. Nothing acknowledged is at risk:
//! a write is acknowledged only after a majority fsynced it.
//!
//! May touch: the Raft metrics (read), a probe file in the data directory,
//! the filesystem's free space, and the process image (exec); on
//! corruption, what `repair` touches.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::types::Raft;

/// How often the guard looks at the Raft core's running state.
const WATCH_INTERVAL_MS: u64 = 200;
/// How often a fenced node probes its data directory.
const PROBE_INTERVAL_MS: u64 = 1_000;
/// Bytes the probe writes and fsyncs.
const PROBE_BYTES: usize = 1 << 20;
/// The probe file, in the data directory (removed after each probe).
const PROBE_FILE: &str = "storage-probe.tmp";

/// Why a node's storage failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The filesystem is full (ENOSPC).
    DiskFull,
    /// Any other I/O error: a write or an fsync that failed.
    IoError,
    /// A checksum did not match: data on this node's disk is damaged.
    Corruption,
    /// A Raft log entry failed its own CRC (or is missing or misplaced)
    /// while RocksDB's checksums passed: the node restarts, cuts its log
    /// there and fetches the rest again (`log_store::truncate_damaged_tail`).
    LogDamaged,
    /// An operator asked for this node to be rebuilt from its peers
    /// (`POST /v1/node/repair`, `billdb node repair`): handled like
    /// corruption, though no checksum failed.
    RepairRequested,
}

/// The text every operator's repair request carries (see [`FailureKind::of`]).
pub const OPERATOR_REPAIR_TEXT: &str = "repair requested by an operator";

impl FailureKind {
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::DiskFull => "disk_full",
            FailureKind::IoError => "io_error",
            FailureKind::Corruption => "corruption",
            FailureKind::LogDamaged => "log_damaged",
            FailureKind::RepairRequested => "repair_requested",
        }
    }

    /// Whether the node is rebuilt from its peers (`repair`), rather than
    /// restarted on the data it has.
    pub fn repairs_from_peers(self) -> bool {
        matches!(self, FailureKind::Corruption | FailureKind::RepairRequested)
    }

    /// From the error's text: RocksDB reports ENOSPC as "No space left on
    /// device" inside its own error type, so the kind is not available.
    pub fn of(error: &str) -> FailureKind {
        let e = error.to_ascii_lowercase();
        let log_damage = crate::store::log_store::LOG_DAMAGE_TEXT.to_ascii_lowercase();
        if e.contains(OPERATOR_REPAIR_TEXT) {
            FailureKind::RepairRequested
        } else if e.contains(&log_damage) && e.contains("is damaged") && !e.contains("corruption") {
            FailureKind::LogDamaged
        } else if e.contains("corruption") || e.contains("checksum mismatch") {
            FailureKind::Corruption
        } else if e.contains("no space left") || e.contains("nospace") || e.contains("storage full")
        {
            FailureKind::DiskFull
        } else {
            FailureKind::IoError
        }
    }
}

/// What status shows about a failed storage.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// The storage error as openraft reported it.
    pub error: String,
    pub since_unix_ms: u64,
    /// Probes made since, and the last one's error.
    pub probes: u64,
    pub last_probe_error: Option<String>,
    /// Corruption: where the repair from peers stands (why it waits).
    pub repair: Option<String>,
}

/// How the node gets back, for messages: a restart once the disk is usable,
/// or a repair from peers.
pub fn recovery_note(f: &Failure) -> String {
    match f.kind {
        FailureKind::Corruption | FailureKind::RepairRequested => format!(
            "it repairs itself from its peers ({})",
            f.repair.as_deref().unwrap_or("starting")
        ),
        FailureKind::LogDamaged => {
            "it restarts, cuts its Raft log at the damaged entry and fetches the rest again \
             from the leader"
                .into()
        }
        _ => "it restarts itself when its disk is usable again".into(),
    }
}

/// What the background scrub (`scrub`) has done, for status and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubStatus {
    pub interval_s: u64,
    pub passes: u64,
    pub bytes_verified: u64,
    pub last_pass_unix_ms: Option<u64>,
    pub last_pass_ms: Option<u64>,
}

/// Shared by the API (refuse, report), the scrub (report) and the guard
/// task (detect, recover).
#[derive(Default)]
pub struct StorageGuard {
    failure: Mutex<Option<Failure>>,
    /// Wakes the guard task when a read or the scrub reports corruption.
    reported: tokio::sync::Notify,
    /// After a repair: this node grants no vote until its log holds this
    /// index (0: no fence). See `repair`.
    vote_fence: AtomicU64,
    scrub: Mutex<ScrubStatus>,
    /// When the WAL fsync in progress started (set once at start).
    fsync: std::sync::OnceLock<crate::store::log_store::FsyncWatch>,
    /// An fsync in progress longer than this makes the node degraded.
    fsync_stall_ms: AtomicU64,
    /// The Raft log cut this start made at a damaged entry, if any.
    log_truncation: Mutex<Option<LogTruncation>>,
    /// The repair from peers this start completed, if any.
    last_repair: Mutex<Option<LastRepair>>,
}

/// What status shows of the repair this start finished (the database was
/// moved aside and a new one made): why, who granted it, when.
#[derive(Debug, Clone, Serialize)]
pub struct LastRepair {
    pub reason: String,
    pub leader_id: crate::types::NodeId,
    pub granted_unix_ms: u64,
    pub vote_fence_index: u64,
}

/// What status shows of a Raft log cut at start
/// (`log_store::truncate_damaged_tail`).
#[derive(Debug, Clone, Serialize)]
pub struct LogTruncation {
    pub from_index: u64,
    pub last_index_before: u64,
    pub reason: String,
    pub at_unix_ms: u64,
}

impl StorageGuard {
    /// The failure, when this node's storage failed.
    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Sets the failure unless one is set already; true when this call set it.
    fn set(&self, f: Failure) -> bool {
        match self.failure.lock() {
            Ok(mut g) if g.is_none() => {
                *g = Some(f);
                true
            }
            _ => false,
        }
    }

    /// A read or the scrub met a checksum failure (`error` is RocksDB's
    /// message, naming the file and offset). The first report fences the
    /// node and wakes the guard; later ones only count.
    pub fn report_corruption(&self, error: &str) {
        metrics::counter!("billdb_corruption_reports_total").increment(1);
        if self.set(Failure {
            kind: FailureKind::Corruption,
            error: error.to_string(),
            since_unix_ms: unix_ms(),
            probes: 0,
            last_probe_error: None,
            repair: Some("starting".into()),
        }) {
            self.reported.notify_one();
        }
    }

    /// True when `error` (any error text from storage) is a checksum
    /// failure: it was reported and fences this node.
    pub fn check_corruption(&self, error: &str) -> bool {
        match FailureKind::of(error) {
            FailureKind::Corruption => {
                self.report_corruption(error);
                true
            }
            FailureKind::LogDamaged => {
                self.report_log_damage(error);
                true
            }
            _ => false,
        }
    }

    /// The scrub found a Raft log entry that fails its CRC (`error` names
    /// it; the index is already recorded for the next start). Fences the
    /// node and wakes the guard, which restarts it.
    pub fn report_log_damage(&self, error: &str) {
        metrics::counter!("billdb_raft_log_damaged_reports_total").increment(1);
        if self.set(Failure {
            kind: FailureKind::LogDamaged,
            error: error.to_string(),
            since_unix_ms: unix_ms(),
            probes: 0,
            last_probe_error: None,
            repair: None,
        }) {
            self.reported.notify_one();
        }
    }

    /// An operator asked for this node's repair from its peers (`reason`
    /// contains [`OPERATOR_REPAIR_TEXT`]). Fences the node and wakes the
    /// guard, which runs the repair; false when the node was already
    /// fenced for another reason.
    pub fn request_repair(&self, reason: &str) -> bool {
        debug_assert!(reason.contains(OPERATOR_REPAIR_TEXT));
        let set = self.set(Failure {
            kind: FailureKind::RepairRequested,
            error: reason.to_string(),
            since_unix_ms: unix_ms(),
            probes: 0,
            last_probe_error: None,
            repair: Some("starting".into()),
        });
        if set {
            self.reported.notify_one();
        }
        set
    }

    pub(crate) fn note_repair(&self, state: String) {
        if let Ok(mut g) = self.failure.lock()
            && let Some(f) = g.as_mut()
        {
            f.repair = Some(state);
        }
    }

    /// The index this node's log must hold before it votes again (0: none).
    pub fn vote_fence(&self) -> u64 {
        self.vote_fence.load(Ordering::Acquire)
    }

    pub(crate) fn set_vote_fence(&self, index: u64) {
        self.vote_fence.store(index, Ordering::Release);
        metrics::gauge!("billdb_vote_fence_index").set(index as f64);
    }

    /// Watch the log store's fsyncs: one in progress for longer than
    /// `stall_ms` makes this node degraded (`degraded`).
    pub fn watch_fsyncs(&self, watch: crate::store::log_store::FsyncWatch, stall_ms: u64) {
        let _ = self.fsync.set(watch);
        self.fsync_stall_ms.store(stall_ms, Ordering::Release);
    }

    /// How long the WAL fsync in progress has been running, when longer
    /// than `storage.fsync_stall_ms`: this node's disk stalls (it still
    /// serves, but its acknowledgements lag; on a leader, writes commit on
    /// the followers' fsyncs meanwhile).
    pub fn degraded(&self) -> Option<u64> {
        let started = (*self.fsync.get()?.lock().ok()?)?;
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        (ms > self.fsync_stall_ms.load(Ordering::Acquire)).then_some(ms)
    }

    /// Records the Raft log cut made at this start.
    pub fn note_log_truncation(&self, t: &crate::store::log_store::Truncation) {
        metrics::counter!("billdb_raft_log_truncations_total").increment(1);
        if let Ok(mut g) = self.log_truncation.lock() {
            *g = Some(LogTruncation {
                from_index: t.from_index,
                last_index_before: t.last_index_before,
                reason: t.reason.clone(),
                at_unix_ms: unix_ms(),
            });
        }
    }

    pub fn note_rebuilt(&self, r: LastRepair) {
        if let Ok(mut g) = self.last_repair.lock() {
            *g = Some(r);
        }
    }

    pub fn last_repair(&self) -> Option<LastRepair> {
        self.last_repair.lock().ok().and_then(|g| g.clone())
    }

    pub fn log_truncation(&self) -> Option<LogTruncation> {
        self.log_truncation.lock().ok().and_then(|g| g.clone())
    }

    pub fn scrub(&self) -> ScrubStatus {
        self.scrub.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn update_scrub(&self, f: impl FnOnce(&mut ScrubStatus)) {
        if let Ok(mut s) = self.scrub.lock() {
            f(&mut s);
        }
    }

    fn note_probe(&self, error: Option<String>) {
        if let Ok(mut g) = self.failure.lock()
            && let Some(f) = g.as_mut()
        {
            f.probes += 1;
            f.last_probe_error = error;
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the guard task needs.
pub struct Guarded {
    pub raft: Raft,
    pub guard: std::sync::Arc<StorageGuard>,
    pub data_dir: PathBuf,
    pub free_min: u64,
    pub self_id: crate::types::NodeId,
    pub channels: crate::raft_net::Channels,
}

/// Watches the Raft core and corruption reports; on a storage error fences
/// the node and probes until it can restart itself, on corruption repairs
/// it from its peers. Never returns once it fenced (the process is
/// replaced).
pub fn spawn(g: Guarded) {
    tokio::spawn(async move {
        let Guarded {
            raft,
            guard,
            data_dir,
            free_min,
            self_id,
            channels,
        } = g;
        let error = tokio::select! {
            e = storage_error(&raft, &guard) => match e {
                Some(e) => e,
                None => return,
            },
            _ = guard.reported.notified() => match guard.failure() {
                Some(f) => f.error,
                None => return,
            },
        };
        let kind = FailureKind::of(&error);
        metrics::gauge!("billdb_storage_failed").set(1.0);
        metrics::counter!("billdb_storage_failures_total", "kind" => kind.name()).increment(1);
        guard.set(Failure {
            kind,
            error: error.clone(),
            since_unix_ms: unix_ms(),
            probes: 0,
            last_probe_error: None,
            repair: kind.repairs_from_peers().then(|| "starting".to_string()),
        });
        if kind.repairs_from_peers() {
            if kind == FailureKind::Corruption {
                tracing::error!(
                    kind = kind.name(),
                    error = %error,
                    "storage corruption: a checksum did not match; this node is fenced (not \
                     ready, refusing requests, not voting) and repairs itself from its peers"
                );
            } else {
                tracing::warn!(
                    kind = kind.name(),
                    reason = %error,
                    "an operator asked for this node's repair: it is fenced (not ready, refusing \
                     requests, not voting) and rebuilds itself from its peers"
                );
            }
            let never = crate::repair::run(crate::repair::Damaged {
                raft,
                guard,
                data_dir,
                self_id,
                channels,
                error,
            })
            .await;
            match never {}
        }
        if kind == FailureKind::LogDamaged {
            // The index is recorded in the database; the start cuts the
            // log there (`log_store::truncate_damaged_tail`). Nothing to
            // wait for: the disk itself works.
            tracing::error!(
                kind = kind.name(),
                error = %error,
                "a Raft log entry failed its checksum; this node is fenced and restarts to cut \
                 its log there and fetch the rest again from the leader"
            );
            restart();
        }
        tracing::error!(
            kind = kind.name(),
            error = %error,
            "storage failed: the Raft core stopped; this node is fenced (not ready, refusing \
             requests) and restarts itself once its data directory is writable again"
        );
        let started = Instant::now();
        let mut logged_probe_error = false;
        loop {
            tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
            let dir = data_dir.clone();
            let probe = tokio::task::spawn_blocking(move || probe(&dir, free_min))
                .await
                .unwrap_or_else(|e| Err(format!("probe task failed: {e}")));
            match probe {
                Ok(()) => {
                    guard.note_probe(None);
                    tracing::warn!(
                        failed_ms =
                            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "storage writable again; restarting this node to recover (RocksDB \
                         reopens from disk, the node catches up from the leader)"
                    );
                    restart();
                }
                Err(e) => {
                    if !logged_probe_error {
                        tracing::warn!(error = %e, "storage still unusable; probing every second");
                        logged_probe_error = true;
                    }
                    guard.note_probe(Some(e));
                }
            }
        }
    });
}

/// Waits until the Raft core stops; its storage error's text, or `None`
/// when it stopped for another reason (a shutdown, a panic). Polls: the
/// full metrics change with every append, too often to wake for.
async fn storage_error(raft: &Raft, guard: &StorageGuard) -> Option<String> {
    use openraft::async_runtime::WatchReceiver;
    let rx = raft.metrics();
    let mut was_degraded = false;
    loop {
        let degraded = guard.degraded();
        if degraded.is_some() != was_degraded {
            was_degraded = degraded.is_some();
            metrics::gauge!("billdb_storage_degraded").set(if was_degraded { 1.0 } else { 0.0 });
            match degraded {
                Some(ms) => tracing::warn!(
                    fsync_ms = ms,
                    "storage degraded: a WAL fsync has not returned for {ms} ms (a stalled disk)"
                ),
                None => tracing::info!("storage no longer degraded: WAL fsyncs return again"),
            }
        }
        {
            let m = rx.borrow_watched();
            match &m.running_state {
                Ok(()) => {}
                Err(openraft::errors::Fatal::StorageError(e)) => return Some(e.to_string()),
                Err(_) => return None,
            }
        }
        tokio::time::sleep(Duration::from_millis(WATCH_INTERVAL_MS)).await;
    }
}

/// Writes and fsyncs `PROBE_BYTES` in `dir`, removes the file, and checks
/// that the filesystem has `free_min` bytes available.
pub fn probe(dir: &Path, free_min: u64) -> Result<(), String> {
    use std::io::Write;
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| format!("probe write in {}: {e}", dir.display()))?;
    let free = free_bytes(dir)?;
    if free < free_min {
        return Err(format!(
            "{free} bytes free in {}, under storage.recover_free_bytes_min ({free_min})",
            dir.display()
        ));
    }
    Ok(())
}

/// Bytes available to this process on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, String> {
    fs_space(dir).map(|(free, _)| free)
}

/// Bytes available to this process, and the size in bytes, of the
/// filesystem holding `dir`.
pub fn fs_space(dir: &Path) -> Result<(u64, u64), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by
    // statvfs before it is read, and only read on success.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(format!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    let frsize = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// Replaces this process with a fresh start of the same binary and
/// arguments (the process id stays, so supervisors see no exit). Every
/// descriptor the node opened is close-on-exec: listeners and the RocksDB
/// lock go with the old image. When exec fails, exits with 75 (EX_TEMPFAIL)
/// for the supervisor (systemd `Restart=on-failure`) to restart it.
pub(crate) fn restart() -> ! {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe).args(args).exec(),
        Err(e) => e,
    };
    tracing::error!(error = %err, "could not re-execute this node; exiting for the supervisor to restart it");
    std::process::exit(75)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_error_text() {
        assert_eq!(
            FailureKind::of("IO error: No space left on device: While appending to file"),
            FailureKind::DiskFull
        );
        assert_eq!(
            FailureKind::of("fault point: fsync returned EIO"),
            FailureKind::IoError
        );
        assert_eq!(
            FailureKind::of(
                "Corruption: block checksum mismatch: stored = 1, computed = 2, type = 1 \
                 in /d/db/000123.sst offset 4096 size 3900"
            ),
            FailureKind::Corruption
        );
        let damaged = crate::store::log_store::damaged_error(
            42,
            "its CRC-32 does not match (stored 0x00000001, computed 0x00000002)",
        );
        assert_eq!(
            FailureKind::of(&damaged.to_string()),
            FailureKind::LogDamaged
        );
        let asked = format!("{OPERATOR_REPAIR_TEXT}: the disk was replaced");
        assert_eq!(FailureKind::of(&asked), FailureKind::RepairRequested);
        assert!(FailureKind::RepairRequested.repairs_from_peers());
        assert!(!FailureKind::LogDamaged.repairs_from_peers());
    }

    #[test]
    fn probe_checks_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(probe(dir.path(), 0).is_ok());
        assert!(!dir.path().join(PROBE_FILE).exists());
        let e = probe(dir.path(), u64::MAX).expect_err("no filesystem has u64::MAX free");
        assert!(e.contains("recover_free_bytes_min"), "{e}");
        assert!(probe(&dir.path().join("missing"), 0).is_err());
    }
}
