//! `billdb backup archive`: committed Raft log entries copied from a node
//! into the backup destination's archive (`billdb_node::backup::archive`),
//! so `billdb restore --until` can replay them on top of a backup. Like
//! PostgreSQL's `pg_receivewal`: run it beside the scheduled backups
//! (`--follow`, e.g. as a service), or once before a point-in-time restore.
//!
//! It reads from a follower (the leader when none answers), the same one as
//! the archive's last segment when it still answers: the node holds its log
//! from where the archiver read last (`log_purge::ArchiveReads`). The
//! archive starts at the oldest backup's applied index + 1 that a node
//! still holds; entries a node no longer holds when the archive falls
//! behind are a named gap, and the archive continues from the first
//! backup after it whose start a node still holds.
//!
//! May touch: the destination directory and the key file it is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use billdb_node::backup::archive::{self, ArchiveCheck, SegmentRecord};
use billdb_node::backup::store;
use billdb_node::types::NodeId;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::admin::AdminError;
use crate::backup::{CreateOpts, pick_source_via, read_signing_key, read_verifying_key};

/// Entries asked for per request.
pub const READ_ENTRIES_MAX: u32 = 10_000;
/// Bound on one log read.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ArchiveOpts {
    /// Where to read from and write to (`to`, `private_key`, the endpoint
    /// and credentials, `from_leader`).
    pub conn: CreateOpts,
    /// Keep archiving, every `interval`, until stopped.
    pub follow: bool,
    pub interval: Duration,
    /// Stop following after this long (tests, a bounded run); `None`: never.
    pub follow_for: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    pub dir: PathBuf,
    pub segments_written: usize,
    pub entries_written: u64,
    pub bytes_written: u64,
    /// The archive's last entry after this run.
    pub last_index: Option<u64>,
    /// Gaps this run had to leave (entries no node held any more).
    pub gaps: Vec<(u64, u64)>,
    pub source_node: Option<NodeId>,
    pub ms: u64,
}

/// One read of a node's log.
struct Read {
    cluster_id: Option<String>,
    applied: u64,
    entries: Vec<(
        billdb_node::store::log_store::StoredEntry,
        billdb_node::types::Entry,
    )>,
}

enum ReadError {
    /// The node no longer holds `from`; the first index it holds.
    Purged(Option<u64>),
    Other(anyhow::Error),
}

/// The body of node `node`'s answer to `GET /v1/backup/log` from `from`
/// (at most `max_entries`): the one way both the archiver's reads and the
/// holder probe ask. A purged `from` is [`ReadError::Purged`].
fn fetch_log(
    o: &ArchiveOpts,
    addr: &str,
    node: NodeId,
    from: u64,
    max_entries: u32,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    let c = crate::admin::AdminClient::with_tls(addr, timeout, o.conn.tls.as_ref())
        .with_token(o.conn.token.clone());
    let mut body = Vec::new();
    match c.download(
        &format!("/v1/backup/log?from={from}&max_entries={max_entries}"),
        &mut body,
        &mut |_| {},
    ) {
        Ok(_) => Ok(body),
        Err(AdminError::Api { code, details, .. })
            if code == "NOT_FOUND" && details["reason"] == "log_purged" =>
        {
            Err(ReadError::Purged(details["first_held_index"].as_u64()))
        }
        Err(e) => Err(ReadError::Other(anyhow!("reading node {node}'s log: {e}"))),
    }
}

fn read_log(o: &ArchiveOpts, addr: &str, node: NodeId, from: u64) -> Result<Read, ReadError> {
    let body = fetch_log(o, addr, node, from, READ_ENTRIES_MAX, READ_TIMEOUT)?;
    let other = |e: anyhow::Error| ReadError::Other(e);
    let nl = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| other(anyhow!("node {node}'s log answer has no header line")))?;
    let header: serde_json::Value = serde_json::from_slice(&body[..nl])
        .map_err(|e| other(anyhow!("node {node}'s log answer header: {e}")))?;
    let entries = archive::decode_frames(&body[nl + 1..])
        .map_err(|e| other(anyhow!("node {node}'s log answer: {e:#}")))?;
    if let Some(first) = entries.first()
        && first.0.0 != from
    {
        return Err(other(anyhow!(
            "node {node} answered from entry {}, asked from {from}",
            first.0.0
        )));
    }
    Ok(Read {
        cluster_id: header["cluster_id"].as_str().map(str::to_string),
        applied: header["applied_index"].as_u64().unwrap_or(0),
        entries,
    })
}

fn entries_bar(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} entries {per_sec} ETA {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message("archive");
    pb
}

/// Archive what the cluster committed since the archive's end (and, with
/// `follow`, keep doing it).
pub fn run(o: &ArchiveOpts) -> Result<ArchiveReport> {
    let started = Instant::now();
    let dir = &o.conn.to;
    let key = read_signing_key(&o.conn.private_key)?;
    store::open_destination(dir)?;
    let _lock = store::lock_archive(dir)?;
    let last: Option<SegmentRecord> = archive::last_record(dir)?.map(|r| r.record);
    let starts = archive::backup_starts_with_cluster(dir)?;
    let mut next = match &last {
        Some(r) => r.last_index + 1,
        None => starts.first().map(|s| s.0).ok_or_else(|| {
            store::error(
                store::E_NO_SUCH_BACKUP,
                format!(
                    "{} holds no backup yet: the archive continues from a backup's applied index, take one first (billdb backup create)",
                    dir.display()
                ),
            )
        })?,
    };
    let cluster_id = last
        .as_ref()
        .map(|r| r.cluster_id.clone())
        .or_else(|| starts.first().map(|s| s.1.clone()));
    let mut report = ArchiveReport {
        dir: dir.clone(),
        segments_written: 0,
        entries_written: 0,
        bytes_written: 0,
        last_index: last.as_ref().map(|r| r.last_index),
        gaps: Vec::new(),
        source_node: None,
        ms: 0,
    };
    let pb = entries_bar(o.conn.progress);
    let mut source: Option<(NodeId, String)> = None;
    let prefer = last.as_ref().map(|r| r.source_node);
    // Every member's HTTP address, to ask another when the entry endpoint
    // is down (a --follow run outlives any one node).
    let mut known: Vec<String> = vec![o.conn.endpoint.clone()];
    loop {
        let (node, addr) = match &source {
            Some(s) => s.clone(),
            None => match pick_any(o, &known, prefer) {
                Ok((id, addr, members)) => {
                    for m in members {
                        if !known.contains(&m) {
                            known.push(m);
                        }
                    }
                    source = Some((id, addr.clone()));
                    (id, addr)
                }
                Err(e) if o.follow => {
                    eprintln!("billdb backup archive: {e:#}; trying again");
                    std::thread::sleep(o.interval);
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        report.source_node = Some(node);
        match read_log(o, &addr, node, next) {
            Ok(read) => {
                if cluster_id.is_some() && read.cluster_id != cluster_id.clone().flatten() {
                    return Err(store::error(
                        store::E_INVALID_ARGUMENT,
                        format!(
                            "node {node} is in cluster {:?}, the archive and backups in {} are of cluster {:?}: one destination per cluster",
                            read.cluster_id,
                            dir.display(),
                            cluster_id.clone().flatten()
                        ),
                    ));
                }
                pb.set_length(
                    read.applied
                        .saturating_sub(report.last_index.unwrap_or(next - 1))
                        .max(1),
                );
                let n = read.entries.len();
                if n > 0 {
                    let r = archive::write_segment(
                        dir,
                        &key,
                        read.cluster_id.clone(),
                        node,
                        &read.entries,
                    )?;
                    report.segments_written += 1;
                    report.entries_written += r.entries;
                    report.bytes_written += r.bytes;
                    report.last_index = Some(r.last_index);
                    next = r.last_index + 1;
                    pb.inc(r.entries);
                }
                if n < READ_ENTRIES_MAX as usize {
                    // Caught up with what the node has applied.
                    let stop = !o.follow || o.follow_for.is_some_and(|f| started.elapsed() >= f);
                    if stop {
                        break;
                    }
                    std::thread::sleep(o.interval);
                }
            }
            Err(ReadError::Purged(first)) => {
                // Entries are gone from this node. Another may hold them
                // (each purges on its own): ask the others once, then
                // continue from the first backup whose start is still held.
                if let Some(found) = other_holder(o, node, next)? {
                    source = Some(found);
                    continue;
                }
                let resume = archive::resume_after(dir, next, first)?;
                let Some(resume) = resume else {
                    return Err(store::error(
                        archive::E_ARCHIVE_GAP,
                        format!(
                            "no node holds log entry {next} any more (node {node} holds from {first:?}), and no backup in {} starts after it: take a backup now (billdb backup create), then run the archive again; the entries between are lost to point-in-time restore",
                            dir.display()
                        ),
                    ));
                };
                eprintln!(
                    "billdb backup archive: entries {next}..{} are no longer held by any node; a gap in the archive, continued from the first backup after it (entry {resume})",
                    resume - 1
                );
                report.gaps.push((next, resume - 1));
                next = resume;
            }
            Err(ReadError::Other(e)) => {
                if !o.follow {
                    return Err(e);
                }
                eprintln!("billdb backup archive: {e:#}; trying again with another node");
                source = None;
                std::thread::sleep(o.interval);
            }
        }
    }
    pb.finish_and_clear();
    report.ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A node to read from, asking each of `entries` in turn for the cluster's
/// status, and every member's HTTP address.
fn pick_any(
    o: &ArchiveOpts,
    entries: &[String],
    prefer: Option<NodeId>,
) -> Result<(NodeId, String, Vec<String>)> {
    let mut last_error = None;
    for entry in entries {
        match pick_source_via(&o.conn, entry, prefer) {
            Ok((id, addr, _)) => {
                let c =
                    crate::admin::AdminClient::with_tls(entry, o.conn.timeout, o.conn.tls.as_ref())
                        .with_token(o.conn.token.clone());
                let members: Vec<String> = c
                    .status()
                    .ok()
                    .and_then(|s| {
                        serde_json::from_value::<
                            std::collections::BTreeMap<NodeId, billdb_node::types::NodeInfo>,
                        >(s["nodes"].clone())
                        .ok()
                    })
                    .map(|n| n.into_values().map(|i| i.http_addr).collect())
                    .unwrap_or_default();
                return Ok((id, addr, members));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("no endpoint to ask")))
}

/// Another member that still holds entry `from`, if any.
fn other_holder(o: &ArchiveOpts, not: NodeId, from: u64) -> Result<Option<(NodeId, String)>> {
    let entry =
        crate::admin::AdminClient::with_tls(&o.conn.endpoint, o.conn.timeout, o.conn.tls.as_ref())
            .with_token(o.conn.token.clone());
    let status = entry
        .status()
        .with_context(|| format!("asking {} for the cluster status", entry.endpoint()))?;
    let nodes: std::collections::BTreeMap<NodeId, billdb_node::types::NodeInfo> =
        serde_json::from_value(status["nodes"].clone())
            .context("the status answer has no node list")?;
    for (id, info) in nodes {
        if id == not {
            continue;
        }
        if let Ok(r) = read_log_probe(o, &info.http_addr, id, from)
            && r
        {
            return Ok(Some((id, info.http_addr)));
        }
    }
    Ok(None)
}

/// Whether node `node` still holds entry `from`.
fn read_log_probe(o: &ArchiveOpts, addr: &str, node: NodeId, from: u64) -> Result<bool> {
    match fetch_log(o, addr, node, from, 1, o.conn.timeout) {
        Ok(_) => Ok(true),
        Err(ReadError::Purged(_)) => Ok(false),
        Err(ReadError::Other(e)) => Err(e),
    }
}

/// `billdb backup archive-verify`: every segment's signature, size,
/// SHA-256 and entries, and the chain.
pub fn verify(dir: &Path, public_key: &Path) -> Result<ArchiveCheck> {
    let key = read_verifying_key(public_key)?;
    store::check_marker(dir)?;
    archive::verify(dir, &key)
}

pub fn render_check(c: &ArchiveCheck) -> String {
    let time = |t: Option<i64>| t.map_or("-".to_string(), billdb_node::api::validate::to_rfc3339);
    let mut s = format!(
        "archive: {} — {} segments, {} entries, {} bytes, commands from {} to {}\n",
        if c.problems.is_empty() {
            "OK"
        } else {
            "FAILED"
        },
        c.segments,
        c.entries,
        c.bytes,
        time(c.first_ts_ms),
        time(c.last_ts_ms)
    );
    for (i, (a, b)) in c.spans.iter().enumerate() {
        if i > 0 {
            s += &format!(
                "  GAP: entries {}..{} are not archived\n",
                c.spans[i - 1].1 + 1,
                a - 1
            );
        }
        s += &format!("  entries {a}..{b}\n");
    }
    for p in &c.problems {
        s += &format!("  PROBLEM: {p}\n");
    }
    s
}
