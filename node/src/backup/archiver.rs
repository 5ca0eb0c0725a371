//! The cluster archiving its own committed log entries (`[backup]
//! archive_interval_s`): what `billdb backup archive --follow` does, run by
//! the nodes, so a point-in-time restore needs no extra service.
//!
//! Every node with it configured looks at the archive's end in the shared
//! destination every `archive_interval_s` and holds its own log from there
//! (`log_purge::ArchiveReads`), so whichever node archives next finds the
//! entries. One node writes: the follower (hearing its leader, storage
//! sound; the leader only in a one-node cluster) that holds the archive
//! lock (`locks/archive`, renewed every second, void after `claim_stale_s`
//! without renewal: a node that died is replaced by the next one to look).
//! It reads its own log (`store::log_store::read_stored`) and writes
//! segments with `backup::archive`. A node that leads or stops hearing its
//! leader lets the lock go.
//!
//! Shown: metrics `billdb_archive_*`, and the log (who writes, gaps).
//!
//! May touch: the destination's `archive/` and `locks/archive`, this
//! node's log (read) and its archive hold.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;

use super::archive;
use super::store;
use crate::app::App;
use crate::config::BackupConfig;

/// Entries read from the log per segment.
const ENTRIES_PER_SEGMENT_MAX: usize = 10_000;
/// About the most entry bytes per segment.
const SEGMENT_BYTES_MAX: usize = 32 << 20;

/// Whether this node may write the archive now.
fn candidate(app: &App) -> bool {
    if app.storage.failure().is_some() || app.cut_off() {
        return false;
    }
    let m = app.metrics();
    let Some(leader) = m.current_leader else {
        return false;
    };
    let voters = m.membership_config.membership().voter_ids().count();
    leader != app.id || voters == 1
}

/// Where the archive continues: its end, else the oldest backup's start.
fn next_index(dir: &Path) -> Result<Option<u64>> {
    if let Some(n) = archive::next_index(dir)? {
        return Ok(Some(n));
    }
    Ok(archive::backup_starts(dir)?.first().copied())
}

/// One pass as the writer: archive everything this node has applied.
/// Returns the entries written.
fn write_pass(app: &App, dir: &Path, key: &SigningKey) -> Result<u64> {
    let Some(mut next) = next_index(dir)? else {
        return Ok(0); // no backup yet: nothing to continue from
    };
    let cluster_id = app.config.tls.as_ref().map(|t| t.cluster_id.clone());
    let mut written = 0u64;
    loop {
        let applied = app.metrics().last_applied.map_or(0, |l| l.index);
        if next > applied {
            return Ok(written);
        }
        let read = crate::store::log_store::read_stored(
            &app.db,
            next,
            applied,
            ENTRIES_PER_SEGMENT_MAX,
            SEGMENT_BYTES_MAX,
        )?;
        let Some(stored) = read else {
            // Purged here: continue from the first backup after the hole.
            let first = crate::store::log_store::first_held_index(&app.db)?;
            let Some(resume) = archive::resume_after(dir, next, first)? else {
                return Err(store::error(
                    archive::E_ARCHIVE_GAP,
                    format!(
                        "log entry {next} is no longer held (first held: {first:?}) and no backup starts after it: take a backup"
                    ),
                ));
            };
            tracing::error!(
                from = next,
                to = resume - 1,
                "log archive: entries no longer held; a gap in the archive, continued from the first backup after it"
            );
            metrics::counter!("billdb_archive_gaps_total").increment(1);
            next = resume;
            continue;
        };
        // Each entry was verified and decoded by `read_stored`.
        let entries = stored;
        let n = entries.len();
        if entries.is_empty() {
            return Ok(written);
        }
        let r = archive::write_segment(dir, key, cluster_id.clone(), app.id, &entries)?;
        written += r.entries;
        next = r.last_index + 1;
        metrics::gauge!("billdb_archive_last_index").set(r.last_index as f64);
        metrics::counter!("billdb_archive_entries_total").increment(r.entries);
        metrics::counter!("billdb_archive_bytes_total").increment(r.bytes);
        metrics::gauge!("billdb_archive_last_success_timestamp_seconds")
            .set(store::unix_ms() as f64 / 1000.0);
        if n < ENTRIES_PER_SEGMENT_MAX {
            return Ok(written);
        }
    }
}

/// Start the node's archiver when `[backup] archive_interval_s` is set.
pub fn spawn(app: &App, key: Option<Arc<SigningKey>>) {
    let (Some(cfg), Some(key)) = (app.config.backup.clone(), key) else {
        return;
    };
    let Some(interval_s) = cfg.archive_interval_s else {
        return;
    };
    metrics::gauge!("billdb_archive_interval_seconds").set(interval_s as f64);
    tracing::info!(dir = %cfg.dir.display(), interval_s, "log archive on");
    let app = app.clone();
    tokio::spawn(async move {
        let mut lock: Option<store::Lock> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(interval_s)).await;
            let (a, c, k) = (app.clone(), cfg.clone(), key.clone());
            let held = lock.take();
            let step = tokio::task::spawn_blocking(move || step(&a, &c, &k, held)).await;
            match step {
                Ok((held, Ok(()))) => lock = held,
                Ok((held, Err(e))) => {
                    lock = held;
                    metrics::counter!("billdb_archive_failures_total").increment(1);
                    tracing::warn!(error = %format!("{e:#}"), "log archive: pass failed");
                }
                Err(e) => tracing::error!(error = %e, "log archive: task failed"),
            }
        }
    });
}

/// One look: hold the log from the archive's end; take or keep the lock
/// when a candidate, let it go otherwise; write when holding it.
fn step(
    app: &App,
    cfg: &BackupConfig,
    key: &SigningKey,
    held: Option<store::Lock>,
) -> (Option<store::Lock>, Result<()>) {
    let dir = &cfg.dir;
    if let Err(e) = store::check_marker(dir) {
        return (held, Err(e.context("the backup destination")));
    }
    match next_index(dir) {
        Ok(Some(n)) => app.archive_reads.read_from(n),
        Ok(None) => return (held, Ok(())), // no backup yet
        Err(e) => return (held, Err(e)),
    }
    if !candidate(app) {
        if held.is_some() {
            tracing::info!(
                "log archive: not a follower hearing its leader; letting another node write"
            );
        }
        return (None, Ok(())); // dropping the lock removes it
    }
    let lock = match held {
        Some(l) => l,
        None => {
            match store::lock_archive_stale_after(dir, Duration::from_secs(cfg.claim_stale_s)) {
                Ok(l) => {
                    tracing::info!("log archive: this node writes the archive");
                    l
                }
                Err(e) if store::code_of(&e) == Some(store::E_BUSY) => return (None, Ok(())),
                Err(e) => return (None, Err(e)),
            }
        }
    };
    let r = write_pass(app, dir, key).context("writing the log archive");
    (Some(lock), r.map(|_| ()))
}
