//! Scheduled backups by the cluster itself (`[backup]` in the node config).
//!
//! Time is cut in slots of `interval_s` (slot `N` = Unix seconds /
//! `interval_s`). Every node runs this scheduler; the backup destination
//! (`dir`, the same directory on every node: a shared mount) holds, in
//! `schedule/`, what the nodes agree through:
//!
//! - `slot-N.claim`: a node is writing slot N's backup. It is made with an
//!   atomic link (only one node can make it) and renewed every
//!   [`CLAIM_RENEW`] (its `beat` counts up); a claim whose content has not
//!   changed for `claim_stale_s` is abandoned (its node died or hangs): it
//!   is set aside (a rename: one taker), recorded as a failure of its node,
//!   and the slot is open again. Staleness is judged by the content
//!   changing on the observer's own clock, not by file times, so clocks of
//!   the machines need not agree.
//! - `slot-N.done`: slot N's backup is written (which, by whom, size,
//!   duration). Written before the claim is removed, so a slot is never
//!   seen open after its backup.
//! - `slot-N.failed-<node>-<nonce>`: one failed attempt.
//!
//! Who takes an open slot: only a follower that hears its leader and whose
//! storage is sound (the leader only in a one-node cluster). The candidates
//! (the voters but the leader) are ranked: fewest failures at this slot
//! first, then the node of the newest backup (so the next backup repeats
//! its files: incremental), then by node id; the node ranked r waits
//! r × `stagger_s` after it saw the slot open before it tries to claim. A
//! dead rank-0 node thus costs one stagger; a failed attempt moves its node
//! to the end; each node tries a slot at most `attempts_per_node_max`
//! times. Whatever the ranking, the claim makes the taking exclusive, and
//! the writer checks it still holds the claim just before it puts the
//! manifest in place: one backup per slot.
//!
//! The backup itself is what `billdb backup create` does (`store`): a
//! read barrier (so it holds every write acknowledged before the slot was
//! taken), a hold on this node, its files stored by content, the manifest
//! signed; then a prune per `[backup.retention]`.
//!
//! The destination must exist (`billdb backup init`, or any `billdb backup
//! create`): a node never makes one, so an unmounted shared mount (its
//! empty mount point) is an error, not five separate destinations.
//!
//! May touch: `dir` (through `store`, and `dir/schedule/`), this node's
//! `data_dir/backup-holds/` (through `backup`); reads the signing key file
//! once at start (its content is never logged or shown).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use super::store::{self, SCHEDULE_DIR, nonce, unix_ms};
use crate::app::App;
use crate::config::BackupConfig;
use crate::types::NodeId;

/// How often the scheduler looks at the destination.
const TICK: Duration = Duration::from_millis(250);
/// How often a claim's holder renews it.
pub const CLAIM_RENEW: Duration = Duration::from_secs(1);
/// Slot records kept in `schedule/` behind the newest slot.
const RECORDS_KEPT_SLOTS: u64 = 64;

/// A claim on a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub slot: u64,
    pub node: NodeId,
    pub nonce: String,
    pub beat: u64,
    pub started_unix_ms: u64,
}

/// A slot's backup, written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub slot: u64,
    pub node: NodeId,
    pub backup_id: String,
    pub applied_index: u64,
    pub finished_unix_ms: u64,
    pub duration_ms: u64,
    pub bytes_total: u64,
    pub bytes_copied: u64,
    pub files_copied: usize,
}

/// One failed attempt at a slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failed {
    pub slot: u64,
    pub node: NodeId,
    /// `error` (the attempt failed), `claim_lost` (its claim was taken as
    /// abandoned while it ran), `abandoned` (its node stopped renewing the
    /// claim: died or hung; recorded by the node that took the slot over).
    pub reason: String,
    pub message: String,
    pub unix_ms: u64,
}

/// Where the scheduled backups stand, as this node sees them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct State {
    pub configured: bool,
    pub dir: Option<PathBuf>,
    pub interval_s: Option<u64>,
    pub retention: Option<store::Retention>,
    /// The slot this node is writing now.
    pub running_slot: Option<u64>,
    /// The newest scheduled backup in the destination (by any node).
    pub last_success: Option<Done>,
    /// This node's failed attempts and the abandoned claims it took over.
    pub failures_total: u64,
    pub successes_total: u64,
    /// The last failure this node saw (its own or an abandoned claim).
    pub last_failure: Option<Failed>,
    /// The destination could not be read at the last look.
    pub destination_error: Option<String>,
    /// The last prune this node ran: bytes freed, or its error.
    pub last_prune: Option<serde_json::Value>,
}

pub type Shared = Arc<Mutex<State>>;

fn with_state<T>(s: &Shared, f: impl FnOnce(&mut State) -> T) -> T {
    match s.lock() {
        Ok(mut g) => f(&mut g),
        Err(p) => f(&mut p.into_inner()),
    }
}

fn sched_dir(dir: &Path) -> PathBuf {
    dir.join(SCHEDULE_DIR)
}

fn slot_name(slot: u64, kind: &str) -> String {
    format!("slot-{slot:012}.{kind}")
}

/// Write `value` as JSON at `path` (temporary file, fsync, rename).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("a record path has a parent")?;
    let tmp = dir.join(format!(".{}.tmp", nonce()));
    let done = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.with_context(|| format!("writing {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// What the destination says about slot `slot`.
#[derive(Debug, Default)]
struct View {
    done: Option<Done>,
    claim: Option<Claim>,
    /// Claims left on earlier slots: their nodes died or hang (a live
    /// writer renews its claim past the end of its slot too).
    old_claims: Vec<Claim>,
    /// Failed attempts at this slot, per node.
    failures: BTreeMap<NodeId, u32>,
    newest_done: Option<Done>,
}

fn read_view(dir: &Path, slot: u64) -> Result<View> {
    let sd = sched_dir(dir);
    let mut v = View::default();
    let mut newest: Option<u64> = None;
    let prefix = format!("slot-{slot:012}.");
    for e in std::fs::read_dir(&sd).with_context(|| format!("reading {}", sd.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("slot-")
            .and_then(|r| r.strip_suffix(".done"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            newest = newest.max(Some(n));
        }
        if let Some(n) = name
            .strip_prefix("slot-")
            .and_then(|r| r.strip_suffix(".claim"))
            .and_then(|n| n.parse::<u64>().ok())
            && n < slot
            && let Some(c) = read_json::<Claim>(&sd.join(&name))
        {
            v.old_claims.push(c);
        }
        if let Some(kind) = name.strip_prefix(&prefix)
            && let Some(rest) = kind.strip_prefix("failed-")
            && let Some(node) = rest.split('-').next().and_then(|n| n.parse().ok())
        {
            *v.failures.entry(node).or_default() += 1;
        }
    }
    if let Some(n) = newest {
        v.newest_done = read_json(&sd.join(slot_name(n, "done")));
    }
    v.done = read_json(&sd.join(slot_name(slot, "done")));
    v.claim = read_json(&sd.join(slot_name(slot, "claim")));
    Ok(v)
}

/// Make the claim: only one node succeeds (a hard link fails when the
/// name exists, on local filesystems and NFS alike).
fn try_claim(dir: &Path, claim: &Claim) -> Result<bool> {
    let sd = sched_dir(dir);
    let tmp = sd.join(format!(".{}.claim.tmp", claim.nonce));
    write_json(&tmp, claim)?;
    let r = std::fs::hard_link(&tmp, sd.join(slot_name(claim.slot, "claim")));
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).context("making the claim"),
    }
}

/// Whether the slot's claim is still `nonce`'s.
fn holds_claim(dir: &Path, slot: u64, nonce: &str) -> bool {
    read_json::<Claim>(&sched_dir(dir).join(slot_name(slot, "claim")))
        .is_some_and(|c| c.nonce == nonce)
}

/// Renew the claim (beat + 1); false when it is no longer ours.
fn renew_claim(dir: &Path, claim: &mut Claim) -> Result<bool> {
    if !holds_claim(dir, claim.slot, &claim.nonce) {
        return Ok(false);
    }
    claim.beat += 1;
    write_json(&sched_dir(dir).join(slot_name(claim.slot, "claim")), claim)?;
    Ok(true)
}

fn remove_claim_if_ours(dir: &Path, slot: u64, nonce: &str) {
    if holds_claim(dir, slot, nonce) {
        let _ = std::fs::remove_file(sched_dir(dir).join(slot_name(slot, "claim")));
    }
}

fn record_failure(dir: &Path, f: &Failed) -> Result<()> {
    write_json(
        &sched_dir(dir).join(slot_name(f.slot, &format!("failed-{}-{}", f.node, nonce()))),
        f,
    )
}

/// Set an abandoned claim aside (one taker wins the rename) and record it
/// as its node's failure. True when this call took it.
fn break_claim(dir: &Path, stale: &Claim) -> Result<bool> {
    let sd = sched_dir(dir);
    let path = sd.join(slot_name(stale.slot, "claim"));
    let aside = sd.join(format!(
        ".{}.abandoned.{}",
        slot_name(stale.slot, "claim"),
        nonce()
    ));
    match std::fs::rename(&path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).context("setting an abandoned claim aside"),
    }
    let taken: Option<Claim> = read_json(&aside);
    if taken.as_ref() != Some(stale) {
        // Renewed (or replaced) just now: not abandoned after all. Put it
        // back unless a new claim was made meanwhile.
        let _ = std::fs::hard_link(&aside, &path);
        let _ = std::fs::remove_file(&aside);
        return Ok(false);
    }
    let _ = std::fs::remove_file(&aside);
    record_failure(
        dir,
        &Failed {
            slot: stale.slot,
            node: stale.node,
            reason: "abandoned".into(),
            message: format!(
                "node {} stopped renewing its claim on slot {} (died or hung)",
                stale.node, stale.slot
            ),
            unix_ms: unix_ms(),
        },
    )?;
    Ok(true)
}

/// Remove the records of slots older than [`RECORDS_KEPT_SLOTS`] behind
/// `slot` and temporary files of writers that died.
fn trim_records(dir: &Path, slot: u64) {
    let sd = sched_dir(dir);
    let Ok(entries) = std::fs::read_dir(&sd) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old_slot = name
            .strip_prefix("slot-")
            .and_then(|r| r.get(..12))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n + RECORDS_KEPT_SLOTS < slot);
        let old_tmp = name.starts_with('.')
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > store::LOCK_STALE);
        if old_slot || old_tmp {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The metrics of a configured scheduler exist from the start (the alert
/// reads them).
fn initialise_metrics(cfg: &BackupConfig) {
    metrics::gauge!("billdb_backup_interval_seconds").set(cfg.interval_s as f64);
    metrics::gauge!("billdb_backup_last_success_timestamp_seconds").set(0.0);
    metrics::gauge!("billdb_backup_running").set(0.0);
    for reason in ["error", "claim_lost", "abandoned"] {
        metrics::counter!("billdb_backup_failures_total", "reason" => reason).increment(0);
    }
    metrics::counter!("billdb_backup_successes_total").increment(0);
    metrics::counter!("billdb_backup_prune_failures_total").increment(0);
    metrics::counter!("billdb_backup_prune_freed_bytes_total").increment(0);
}

fn show_last_success(d: &Done) {
    metrics::gauge!("billdb_backup_last_success_timestamp_seconds")
        .set(d.finished_unix_ms as f64 / 1000.0);
    metrics::gauge!("billdb_backup_last_size_bytes").set(d.bytes_total as f64);
    metrics::gauge!("billdb_backup_last_copied_bytes").set(d.bytes_copied as f64);
    metrics::gauge!("billdb_backup_last_duration_seconds").set(d.duration_ms as f64 / 1000.0);
}

/// The signing key of `[backup]`, when configured, read at start before
/// the node touches its data: a key that cannot be read stops the node
/// (a misconfiguration better seen at once than at the first slot). The
/// error names the file, never its content.
pub fn load_key(config: &crate::config::Config) -> Result<Option<SigningKey>> {
    let Some(cfg) = &config.backup else {
        return Ok(None);
    };
    let key = store::read_signing_key(&cfg.signing_key_file).context("backup.signing_key_file")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(&cfg.signing_key_file)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %cfg.signing_key_file.display(),
                "backup.signing_key_file is readable by group or others: chmod 600 it"
            );
        }
    }
    Ok(Some(key))
}

/// Start the scheduler when `[backup]` is configured (`key` from
/// [`load_key`]). An unreachable destination does not stop the node: each
/// look and attempt reports it.
pub fn spawn(app: &App, key: Option<SigningKey>) {
    let (Some(cfg), Some(key)) = (app.config.backup.clone(), key) else {
        return;
    };
    with_state(&app.backup, |s| {
        s.configured = true;
        s.dir = Some(cfg.dir.clone());
        s.interval_s = Some(cfg.interval_s);
        s.retention = Some(cfg.retention);
    });
    initialise_metrics(&cfg);
    tracing::info!(
        dir = %cfg.dir.display(),
        interval_s = cfg.interval_s,
        keep_last = cfg.retention.keep_last,
        keep_daily = cfg.retention.keep_daily,
        keep_monthly = cfg.retention.keep_monthly,
        "scheduled backups on"
    );
    tokio::spawn(run(app.clone(), cfg, Arc::new(key)));
}

/// Count and show a claim this node found abandoned and set aside.
fn note_abandoned(app: &App, c: &Claim) {
    metrics::counter!("billdb_backup_failures_total", "reason" => "abandoned").increment(1);
    tracing::warn!(
        slot = c.slot,
        node = c.node,
        "scheduled backup abandoned by its node (it stopped renewing its claim)"
    );
    let f = Failed {
        slot: c.slot,
        node: c.node,
        reason: "abandoned".into(),
        message: format!(
            "node {} stopped renewing its claim on slot {} (died or hung)",
            c.node, c.slot
        ),
        unix_ms: unix_ms(),
    };
    with_state(&app.backup, |s| {
        s.failures_total += 1;
        s.last_failure = Some(f);
    });
}

/// This node's rank among the candidates for `slot` (None: not a
/// candidate now).
fn rank(app: &App, view: &View, prefer: Option<NodeId>) -> Option<usize> {
    if app.storage.failure().is_some() || app.cut_off() {
        return None;
    }
    let m = app.metrics();
    let leader = m.current_leader?;
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let mut candidates: Vec<NodeId> = if voters.len() == 1 {
        voters
    } else {
        voters.into_iter().filter(|id| *id != leader).collect()
    };
    candidates.sort_by_key(|id| {
        (
            view.failures.get(id).copied().unwrap_or(0),
            Some(*id) != prefer,
            *id,
        )
    });
    candidates.iter().position(|id| *id == app.id)
}

async fn run(app: App, cfg: BackupConfig, key: Arc<SigningKey>) {
    let dir = cfg.dir.clone();
    let stale_after = Duration::from_secs(cfg.claim_stale_s);
    let stagger = Duration::from_secs(cfg.stagger_s);
    // The claim being watched: (nonce, beat, since when unchanged).
    let mut watched: Option<(String, u64, Instant)> = None;
    // The same for claims on earlier slots, by nonce.
    let mut watched_old: std::collections::HashMap<String, (u64, Instant)> =
        std::collections::HashMap::new();
    // When this node saw the current slot open (no claim, no backup).
    let mut open_since: Option<(u64, Instant)> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let slot = unix_ms() / 1000 / cfg.interval_s;
        let d = dir.clone();
        let view = match tokio::task::spawn_blocking(move || {
            // Only inside a billdb backup destination the operator made
            // (`billdb backup init`): a node never makes one, so a shared
            // mount that is not mounted (an empty mount point on the local
            // disk) is refused instead of each node backing up on its own.
            store::check_marker(&d).map_err(|e| {
                anyhow!("{e:#} (is the shared mount mounted? make a new destination with `billdb backup init`)")
            })?;
            std::fs::create_dir_all(sched_dir(&d))
                .with_context(|| format!("creating {}", sched_dir(&d).display()))?;
            read_view(&d, slot)
        })
        .await
        {
            Ok(Ok(v)) => {
                with_state(&app.backup, |s| s.destination_error = None);
                v
            }
            Ok(Err(e)) => {
                let e = format!("{e:#}");
                tracing::warn!(dir = %dir.display(), error = %e, "backup destination unreadable");
                with_state(&app.backup, |s| s.destination_error = Some(e));
                continue;
            }
            Err(_) => continue,
        };
        if let Some(d) = &view.newest_done {
            show_last_success(d);
            with_state(&app.backup, |s| s.last_success = Some(d.clone()));
        }
        // Claims on earlier slots that stopped changing: their backups
        // were abandoned; record them (one node wins each).
        watched_old.retain(|nonce, _| view.old_claims.iter().any(|c| c.nonce == *nonce));
        for c in &view.old_claims {
            let w = watched_old
                .entry(c.nonce.clone())
                .or_insert((c.beat, Instant::now()));
            if w.0 != c.beat {
                *w = (c.beat, Instant::now());
            }
            if w.1.elapsed() >= stale_after && rank(&app, &view, None).is_some() {
                let (d, stale) = (dir.clone(), c.clone());
                if let Ok(Ok(true)) =
                    tokio::task::spawn_blocking(move || break_claim(&d, &stale)).await
                {
                    note_abandoned(&app, c);
                }
            }
        }
        if with_state(&app.backup, |s| s.running_slot.is_some()) {
            continue;
        }
        if view.done.is_some() {
            (watched, open_since) = (None, None);
            continue;
        }
        let prefer = view.newest_done.as_ref().map(|d| d.node);
        if let Some(c) = &view.claim {
            let since = match &watched {
                Some((n, b, t)) if *n == c.nonce && *b == c.beat => *t,
                _ => {
                    watched = Some((c.nonce.clone(), c.beat, Instant::now()));
                    open_since = None;
                    continue;
                }
            };
            if since.elapsed() < stale_after {
                continue;
            }
            // Abandoned: the candidates take it over in rank order.
            let Some(r) = rank(&app, &view, prefer) else {
                continue;
            };
            if since.elapsed() < stale_after + stagger * r as u32 {
                continue;
            }
            let (d, stale) = (dir.clone(), c.clone());
            match tokio::task::spawn_blocking(move || break_claim(&d, &stale)).await {
                Ok(Ok(true)) => note_abandoned(&app, c),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "breaking an abandoned backup claim")
                }
                Err(_) => {}
            }
            // Open again: this node's turn has come, it may claim at once.
            watched = None;
            let now = Instant::now();
            open_since = Some((slot, now.checked_sub(stagger * r as u32).unwrap_or(now)));
            continue;
        }
        watched = None;
        let since = match open_since {
            Some((s, t)) if s == slot => t,
            _ => {
                let now = Instant::now();
                open_since = Some((slot, now));
                now
            }
        };
        let Some(r) = rank(&app, &view, prefer) else {
            continue;
        };
        if since.elapsed() < stagger * r as u32 {
            continue;
        }
        if view.failures.get(&app.id).copied().unwrap_or(0) >= cfg.attempts_per_node_max {
            continue;
        }
        let claim = Claim {
            slot,
            node: app.id,
            nonce: nonce(),
            beat: 0,
            started_unix_ms: unix_ms(),
        };
        let (d, c) = (dir.clone(), claim.clone());
        match tokio::task::spawn_blocking(move || try_claim(&d, &c)).await {
            Ok(Ok(true)) => {
                with_state(&app.backup, |s| s.running_slot = Some(slot));
                metrics::gauge!("billdb_backup_running").set(1.0);
                tokio::spawn(execute(app.clone(), cfg.clone(), key.clone(), claim));
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "claiming a backup slot");
            }
            Err(_) => {}
        }
    }
}

/// The fault point of tests: while this file exists in the data
/// directory (and fault points are on), a claimed backup waits before it
/// starts, its claim renewed.
fn pause_file(data_dir: &Path) -> Option<PathBuf> {
    use billdb_api::failpoints;
    (std::env::var(failpoints::ENV).as_deref() == Ok("1"))
        .then(|| data_dir.join(failpoints::BACKUP_PAUSE_FILE))
}

/// Write slot `claim.slot`'s backup, renewing the claim meanwhile; record
/// the outcome; prune.
async fn execute(app: App, cfg: BackupConfig, key: Arc<SigningKey>, claim: Claim) {
    let started = Instant::now();
    let slot = claim.slot;
    let dir = cfg.dir.clone();
    let lost = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (dir, lost, stop, mut claim) = (dir.clone(), lost.clone(), stop.clone(), claim.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(CLAIM_RENEW).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (d, c) = (dir.clone(), claim.clone());
                match tokio::task::spawn_blocking(move || {
                    let mut c = c;
                    renew_claim(&d, &mut c).map(|ours| (ours, c))
                })
                .await
                {
                    Ok(Ok((true, c))) => claim = c,
                    Ok(Ok((false, _))) => {
                        lost.store(true, Ordering::Relaxed);
                        break;
                    }
                    // A failed renewal is tried again next second.
                    Ok(Err(_)) | Err(_) => {}
                }
            }
        })
    };
    tracing::info!(slot, "scheduled backup: this node took the slot");
    let outcome = write(&app, &cfg, key, &claim, lost.clone()).await;
    stop.store(true, Ordering::Relaxed);
    let _ = renewer.await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(w) => {
            let done = Done {
                slot,
                node: app.id,
                backup_id: w.backup_id.clone(),
                applied_index: w.applied_index,
                finished_unix_ms: unix_ms(),
                duration_ms,
                bytes_total: w.bytes_total,
                bytes_copied: w.bytes_copied,
                files_copied: w.files_copied,
            };
            let (d, rec, nonce) = (dir.clone(), done.clone(), claim.nonce.clone());
            let recorded = tokio::task::spawn_blocking(move || {
                let r = write_json(&sched_dir(&d).join(slot_name(slot, "done")), &rec);
                remove_claim_if_ours(&d, slot, &nonce);
                trim_records(&d, slot);
                r
            })
            .await;
            if let Ok(Err(e)) = &recorded {
                tracing::warn!(slot, error = %format!("{e:#}"), "recording a scheduled backup (the backup itself is written)");
            }
            metrics::counter!("billdb_backup_successes_total").increment(1);
            show_last_success(&done);
            tracing::info!(
                slot,
                backup_id = %w.backup_id,
                applied_index = w.applied_index,
                bytes_total = w.bytes_total,
                bytes_copied = w.bytes_copied,
                duration_ms,
                "scheduled backup written"
            );
            with_state(&app.backup, |s| {
                s.successes_total += 1;
                s.last_success = Some(done);
            });
            prune(&app, &cfg).await;
        }
        Err(e) => {
            let reason = if lost.load(Ordering::Relaxed) {
                "claim_lost"
            } else {
                "error"
            };
            let f = Failed {
                slot,
                node: app.id,
                reason: reason.into(),
                message: format!("{e:#}"),
                unix_ms: unix_ms(),
            };
            metrics::counter!("billdb_backup_failures_total", "reason" => reason).increment(1);
            tracing::warn!(slot, reason, error = %f.message, "scheduled backup failed; another attempt follows");
            let (d, rec, nonce) = (dir.clone(), f.clone(), claim.nonce.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let r = record_failure(&d, &rec);
                remove_claim_if_ours(&d, slot, &nonce);
                r
            })
            .await;
            with_state(&app.backup, |s| {
                s.failures_total += 1;
                s.last_failure = Some(f);
            });
        }
    }
    with_state(&app.backup, |s| s.running_slot = None);
    metrics::gauge!("billdb_backup_running").set(0.0);
}

async fn write(
    app: &App,
    cfg: &BackupConfig,
    key: Arc<SigningKey>,
    claim: &Claim,
    lost: Arc<AtomicBool>,
) -> Result<store::Written> {
    if let Some(p) = pause_file(&app.config.data_dir) {
        while p.exists() && !lost.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every write acknowledged before now is in the hold.
    app.linearize()
        .await
        .map_err(|e| anyhow!("read barrier: {}", e.message))?;
    let (db, data_dir) = (app.db.clone(), app.config.data_dir.clone());
    let hold = tokio::task::spawn_blocking(move || super::create_hold(&db, &data_dir))
        .await
        .map_err(|e| anyhow!("{e}"))?
        .map_err(|e| anyhow!("making the hold: {e}"))?;
    let data_dir = app.config.data_dir.clone();
    let dir = cfg.dir.clone();
    let node = app.id;
    let cluster_id = app.config.tls.as_ref().map(|t| t.cluster_id.clone());
    let (slot, nonce) = (claim.slot, claim.nonce.clone());
    tokio::task::spawn_blocking(move || {
        let hold_dir = data_dir.join(super::HOLDS_DIR).join(&hold.hold_id);
        let r = store::write_backup(
            &dir,
            store::Source {
                hold: &hold,
                node,
                cluster_id,
            },
            &mut store::LocalHold(hold_dir),
            &key,
            &mut (),
            &mut || {
                if lost.load(Ordering::Relaxed) || !holds_claim(&dir, slot, &nonce) {
                    lost.store(true, Ordering::Relaxed);
                    return Err(anyhow!(
                        "the claim on slot {slot} was taken over: this backup is dropped"
                    ));
                }
                Ok(())
            },
        );
        if let Err(e) = super::release_hold(&data_dir, &hold.hold_id) {
            tracing::warn!(hold = %hold.hold_id, error = %e, "releasing a backup hold");
        }
        r
    })
    .await
    .map_err(|e| anyhow!("{e}"))?
}

async fn prune(app: &App, cfg: &BackupConfig) {
    let (dir, retention) = (cfg.dir.clone(), cfg.retention);
    let r = tokio::task::spawn_blocking(move || store::prune(&dir, &retention, false)).await;
    let shown = match r {
        Ok(Ok(report)) => {
            metrics::counter!("billdb_backup_prune_freed_bytes_total")
                .increment(report.bytes_freed);
            tracing::info!(
                kept = report.kept.len(),
                deleted_backups = report.deleted_backups.len(),
                deleted_files = report.deleted_files.len(),
                leftovers = report.leftovers.len(),
                bytes_freed = report.bytes_freed,
                "backups pruned"
            );
            serde_json::json!({
                "unix_ms": unix_ms(),
                "kept": report.kept.len(),
                "deleted_backups": report.deleted_backups,
                "bytes_freed": report.bytes_freed,
            })
        }
        Ok(Err(e)) => {
            metrics::counter!("billdb_backup_prune_failures_total").increment(1);
            let e = format!("{e:#}");
            tracing::warn!(error = %e, "pruning the backups (the next success tries again)");
            serde_json::json!({"unix_ms": unix_ms(), "error": e})
        }
        Err(e) => serde_json::json!({"unix_ms": unix_ms(), "error": e.to_string()}),
    };
    with_state(&app.backup, |s| s.last_prune = Some(shown));
}
