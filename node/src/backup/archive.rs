//! The archive of committed Raft log entries in a backup destination, for
//! point-in-time restore (`billdb backup archive`, `billdb restore
//! --until`): like PostgreSQL's WAL archive, next to the base backups.
//!
//! - `archive/<first index, 20 digits>.seg`: one segment, the entries
//!   `first..=last` as frames `index (u64 BE) ‖ length (u32 BE) ‖ the
//!   entry as the node's log stores it` (CRC-32 ‖ encoding,
//!   `store::log_store`), so every entry is checked again when read back.
//! - `archive/<first>.json` + `.json.sig`: the segment's record: its index
//!   and time range, size and SHA-256, and `prev`, the SHA-256 of the
//!   previous record's bytes; Ed25519 over the exact record bytes with the
//!   backup key. The records form one chain: a segment removed, replaced
//!   or reordered breaks it, and a gap in the indexes (entries purged
//!   before they were archived) is visible and named.
//!
//! A segment is written under a temporary name, fsynced and renamed; its
//! record last (signature first), so a record present means its segment
//! is complete. One archiver per destination (`locks/archive`).
//!
//! May touch: the `archive/` directory of the destination it is given.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{self, error, fsync_dir};
use crate::store::log_store::{StoredEntry, decode_stored};
use crate::types::{Entry, NodeId};

pub const ARCHIVE_DIR: &str = "archive";
/// Format of the segment records this build writes.
pub const ARCHIVE_FORMAT: u32 = 1;
/// Bytes of a frame's header: index (8) and length (4).
const FRAME_HEADER_BYTES: usize = 12;
/// Largest stored entry a frame may carry (a log entry is at most 1 MiB
/// of commands; far above any real one, far below memory trouble).
pub const FRAME_BYTES_MAX: usize = 64 << 20;

pub const E_ARCHIVE_DAMAGED: &str = "ARCHIVE_DAMAGED";
pub const E_ARCHIVE_GAP: &str = "ARCHIVE_GAP";

/// One segment's record (`archive/<first>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRecord {
    pub format: u32,
    /// The source cluster's id (`None`: a cluster without TLS).
    pub cluster_id: Option<String>,
    /// The node the entries were read from (all committed, so any node
    /// holds the same entries).
    pub source_node: NodeId,
    pub first_index: u64,
    pub last_index: u64,
    pub entries: u64,
    /// Client commands in the entries.
    pub commands: u64,
    /// Earliest and latest command time (leader-fixed `ts_ms`) in the
    /// segment; `None` when it holds no command.
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
    pub bytes: u64,
    pub sha256: String,
    /// SHA-256 of the previous record's bytes (`None`: the first segment).
    pub prev: Option<String>,
    pub written_unix_ms: u64,
}

/// The frames of `entries`, as a segment file holds them.
pub fn encode_frames<'a>(entries: impl Iterator<Item = (u64, &'a [u8])> + Clone) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        entries
            .clone()
            .map(|(_, v)| v.len() + FRAME_HEADER_BYTES)
            .sum(),
    );
    for (index, raw) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        out.extend_from_slice(raw);
    }
    out
}

/// The stored entries in `bytes` (frames), each checked (CRC-32,
/// encoding, index) and consecutive; the error names the first bad one.
pub fn decode_frames(bytes: &[u8]) -> Result<Vec<(StoredEntry, Entry)>> {
    let mut out: Vec<(StoredEntry, Entry)> = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<FRAME_HEADER_BYTES>() else {
            return Err(anyhow!(
                "a frame header is cut short ({} bytes)",
                rest.len()
            ));
        };
        let index = u64::from_be_bytes(head[..8].try_into().unwrap_or([0; 8]));
        let len = u32::from_be_bytes(head[8..].try_into().unwrap_or([0; 4])) as usize;
        if len > FRAME_BYTES_MAX || len > tail.len() {
            return Err(anyhow!(
                "entry {index}: a frame of {len} bytes, {} left",
                tail.len()
            ));
        }
        let (raw, next) = tail.split_at(len);
        if let Some(((prev, _), _)) = out.last()
            && index != prev + 1
        {
            return Err(anyhow!("entry {index} follows entry {prev}"));
        }
        let entry = decode_stored(index, raw).map_err(|why| anyhow!("entry {index}: {why}"))?;
        out.push(((index, raw.to_vec()), entry));
        rest = next;
    }
    Ok(out)
}

/// Earliest and latest command time in `entry`.
pub fn entry_times(entry: &Entry) -> Option<(i64, i64)> {
    match &entry.payload {
        openraft::EntryPayload::Normal(b) => {
            let ts = b.commands.iter().map(|c| c.ts_ms);
            Some((ts.clone().min()?, ts.max()?))
        }
        _ => None,
    }
}

fn commands_in(entry: &Entry) -> u64 {
    commands(entry).len() as u64
}

/// The client commands in `entry` (none in a blank or membership entry).
pub fn commands(entry: &Entry) -> &[crate::types::Command] {
    match &entry.payload {
        openraft::EntryPayload::Normal(b) => &b.commands,
        _ => &[],
    }
}

/// `entry`'s log index.
pub fn entry_index(entry: &Entry) -> u64 {
    entry.log_id.index
}

fn segment_name(first: u64) -> String {
    format!("{first:020}")
}

/// A record as read from `archive/`, with its exact bytes (what the
/// signature and the next record's `prev` cover).
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub name: String,
    pub record: SegmentRecord,
    pub bytes: Vec<u8>,
}

impl ReadRecord {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
    pub fn segment_path(&self, dir: &Path) -> PathBuf {
        dir.join(ARCHIVE_DIR).join(format!("{}.seg", self.name))
    }
}

/// The names (first index, 20 digits) of every record in `dir`'s archive,
/// in index order: a directory listing, no record is read.
fn record_names(dir: &Path) -> Result<Vec<String>> {
    let a = dir.join(ARCHIVE_DIR);
    let mut names = Vec::new();
    if !a.exists() {
        return Ok(names);
    }
    for e in std::fs::read_dir(&a).with_context(|| format!("reading {}", a.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".json")
            && stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The record named `name` (see [`record_names`]), format checked.
fn read_record(dir: &Path, name: String) -> Result<ReadRecord> {
    let p = dir.join(ARCHIVE_DIR).join(format!("{name}.json"));
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let record: SegmentRecord = serde_json::from_slice(&bytes).map_err(|e| {
        error(
            E_ARCHIVE_DAMAGED,
            format!("{} is not a billdb archive record: {e}", p.display()),
        )
    })?;
    if record.format > ARCHIVE_FORMAT {
        return Err(error(
            store::E_NEWER_FORMAT,
            format!(
                "{} has archive format {}; this build reads {ARCHIVE_FORMAT}: use a newer billdb",
                p.display(),
                record.format
            ),
        ));
    }
    Ok(ReadRecord {
        name,
        record,
        bytes,
    })
}

/// Every record in `dir`'s archive, in index order, WITHOUT checking
/// signatures (see [`verify`]). An unreadable record is an error naming it.
/// Reads them all: for the archive's end, [`last_record`] reads one.
pub fn read_records(dir: &Path) -> Result<Vec<ReadRecord>> {
    record_names(dir)?
        .into_iter()
        .map(|name| read_record(dir, name))
        .collect()
}

/// The newest record of `dir`'s archive (signature not checked), reading
/// that record only: what every segment write and every archiver pass
/// needs, so their cost does not grow with the archive.
pub fn last_record(dir: &Path) -> Result<Option<ReadRecord>> {
    match record_names(dir)?.pop() {
        Some(name) => read_record(dir, name).map(Some),
        None => Ok(None),
    }
}

/// The index the archive continues at (its last entry + 1), if it holds any.
pub fn next_index(dir: &Path) -> Result<Option<u64>> {
    Ok(last_record(dir)?.map(|r| r.record.last_index + 1))
}

/// Writes `entries` (consecutive, verified) as the next segment of
/// `dir`'s archive and returns its record. The caller holds the archive
/// lock ([`store::lock_archive`]).
pub fn write_segment(
    dir: &Path,
    key: &SigningKey,
    cluster_id: Option<String>,
    source_node: NodeId,
    entries: &[(StoredEntry, Entry)],
) -> Result<SegmentRecord> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(anyhow!("an empty segment is not written"));
    };
    let prev_record = last_record(dir)?;
    if let Some(prev) = &prev_record
        && first.0.0 <= prev.record.last_index
    {
        return Err(anyhow!(
            "the archive already holds up to entry {}; a segment from {} would overlap it",
            prev.record.last_index,
            first.0.0
        ));
    }
    let a = dir.join(ARCHIVE_DIR);
    std::fs::create_dir_all(&a).with_context(|| format!("creating {}", a.display()))?;
    let frames = encode_frames(entries.iter().map(|((i, raw), _)| (*i, raw.as_slice())));
    let times: Vec<(i64, i64)> = entries.iter().filter_map(|(_, e)| entry_times(e)).collect();
    let record = SegmentRecord {
        format: ARCHIVE_FORMAT,
        cluster_id,
        source_node,
        first_index: first.0.0,
        last_index: last.0.0,
        entries: entries.len() as u64,
        commands: entries.iter().map(|(_, e)| commands_in(e)).sum(),
        first_ts_ms: times.iter().map(|t| t.0).min(),
        last_ts_ms: times.iter().map(|t| t.1).max(),
        bytes: frames.len() as u64,
        sha256: hex::encode(Sha256::digest(&frames)),
        prev: prev_record.as_ref().map(ReadRecord::sha256),
        written_unix_ms: store::unix_ms(),
    };
    let name = segment_name(record.first_index);
    let write = |file: &str, bytes: &[u8]| -> Result<()> {
        let tmp = a.join(format!(".{file}.{}.tmp", store::nonce()));
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, a.join(file)).with_context(|| format!("renaming {}", tmp.display()))
    };
    write(&format!("{name}.seg"), &frames)?;
    let record_bytes = serde_json::to_vec_pretty(&record)?;
    let sig = hex::encode(key.sign(&record_bytes).to_bytes());
    write(&format!("{name}.json.sig"), sig.as_bytes())?;
    write(&format!("{name}.json"), &record_bytes)?;
    fsync_dir(&a)?;
    Ok(record)
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveCheck {
    pub segments: usize,
    pub entries: u64,
    pub bytes: u64,
    /// Index ranges held without a gap, in order.
    pub spans: Vec<(u64, u64)>,
    pub first_ts_ms: Option<i64>,
    pub last_ts_ms: Option<i64>,
    /// Every problem found (empty: the archive verifies).
    pub problems: Vec<String>,
}

/// Checks every record's signature, every segment's size and SHA-256, that
/// every entry in it decodes (CRC-32, index) and the chain of `prev`
/// hashes from the first record present (older segments are removed by
/// `backup prune` once no kept backup needs them). Gaps are reported as
/// spans, not problems (entries purged before they were archived; a
/// restore across one is refused).
pub fn verify(dir: &Path, public: &VerifyingKey) -> Result<ArchiveCheck> {
    let records = read_records(dir)?;
    let mut c = ArchiveCheck::default();
    let mut prev: Option<&ReadRecord> = None;
    for r in &records {
        let name = format!("{ARCHIVE_DIR}/{}.json", r.name);
        c.segments += 1;
        match check_signature(dir, r, public) {
            Ok(()) => {}
            Err(e) => c.problems.push(format!("{name}: {e}")),
        }
        // The first record present may follow segments a prune removed
        // (their entries are older than every kept backup): its `prev`
        // names a record no longer here. Every later one must chain.
        let want_prev = prev.map(ReadRecord::sha256);
        if prev.is_some() && r.record.prev != want_prev {
            c.problems.push(format!(
                "{name}: the chain is broken: it does not follow {} (a segment was removed, replaced or reordered)",
                prev.map_or("nothing".to_string(), |p| format!("{ARCHIVE_DIR}/{}.json", p.name))
            ));
        }
        if r.name != segment_name(r.record.first_index)
            || r.record.last_index < r.record.first_index
        {
            c.problems
                .push(format!("{name}: its name and index range disagree"));
        }
        match read_segment(dir, r) {
            Ok(entries) => {
                c.entries += entries.len() as u64;
                c.bytes += r.record.bytes;
            }
            Err(e) => c.problems.push(format!("{e:#}")),
        }
        match c.spans.last_mut() {
            Some(s) if s.1 + 1 == r.record.first_index => s.1 = r.record.last_index,
            _ => c.spans.push((r.record.first_index, r.record.last_index)),
        }
        c.first_ts_ms = c.first_ts_ms.or(r.record.first_ts_ms);
        c.last_ts_ms = r.record.last_ts_ms.or(c.last_ts_ms);
        prev = Some(r);
    }
    Ok(c)
}

fn check_signature(dir: &Path, r: &ReadRecord, public: &VerifyingKey) -> Result<()> {
    let p = dir.join(ARCHIVE_DIR).join(format!("{}.json.sig", r.name));
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow!("its signature: {e}"))?;
    let bytes: [u8; 64] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("its signature is not 64 hex bytes"))?;
    public
        .verify(&r.bytes, &Signature::from_bytes(&bytes))
        .map_err(|_| anyhow!("the signature does not verify with this public key"))
}

/// The entries of `r`'s segment, checked against the record (size,
/// SHA-256, index range) and entry by entry.
pub fn read_segment(dir: &Path, r: &ReadRecord) -> Result<Vec<(StoredEntry, Entry)>> {
    let p = r.segment_path(dir);
    let shown = format!("{ARCHIVE_DIR}/{}.seg", r.name);
    let bytes = std::fs::read(&p).map_err(|e| error(E_ARCHIVE_DAMAGED, format!("{shown}: {e}")))?;
    if bytes.len() as u64 != r.record.bytes {
        return Err(error(
            E_ARCHIVE_DAMAGED,
            format!(
                "{shown}: {} bytes, its record says {}",
                bytes.len(),
                r.record.bytes
            ),
        ));
    }
    if hex::encode(Sha256::digest(&bytes)) != r.record.sha256 {
        return Err(error(
            E_ARCHIVE_DAMAGED,
            format!("{shown}: its SHA-256 differs from its record's"),
        ));
    }
    let entries =
        decode_frames(&bytes).map_err(|e| error(E_ARCHIVE_DAMAGED, format!("{shown}: {e:#}")))?;
    let (first, last) = (
        entries.first().map(|e| e.0.0),
        entries.last().map(|e| e.0.0),
    );
    if first != Some(r.record.first_index) || last != Some(r.record.last_index) {
        return Err(error(
            E_ARCHIVE_DAMAGED,
            format!(
                "{shown}: it holds entries {first:?}..{last:?}, its record says {}..{}",
                r.record.first_index, r.record.last_index
            ),
        ));
    }
    Ok(entries)
}

/// Applied index + 1 of every backup in `dir` with its cluster id, in
/// index order: where an archive may start (a restore replays from a
/// backup's applied index).
pub fn backup_starts_with_cluster(dir: &Path) -> Result<Vec<(u64, Option<String>)>> {
    let mut out = Vec::new();
    for id in store::list_ids(dir)? {
        if let Ok(m) = store::read_manifest_unverified(dir, &id) {
            out.push((m.applied_log_id.index + 1, m.cluster_id));
        }
    }
    out.sort();
    Ok(out)
}

/// [`backup_starts_with_cluster`] without the cluster ids.
pub fn backup_starts(dir: &Path) -> Result<Vec<u64>> {
    Ok(backup_starts_with_cluster(dir)?
        .into_iter()
        .map(|s| s.0)
        .collect())
}

/// Where the archive continues when entry `next` is no longer held (the
/// holder's first entry is `first_held`): the first backup start after
/// `next` that is still held, if any. The entries between are a gap.
pub fn resume_after(dir: &Path, next: u64, first_held: Option<u64>) -> Result<Option<u64>> {
    Ok(backup_starts(dir)?
        .into_iter()
        .find(|s| *s > next && first_held.is_none_or(|f| *s >= f)))
}

/// What [`prune_before`] removed (or would).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchivePrune {
    /// Segments (by their file stem) whose entries all lie at or before
    /// the oldest kept backup's applied index.
    pub segments: Vec<String>,
    pub leftovers: Vec<String>,
    pub bytes: u64,
}

/// Removes the segments no restore can use any more: every entry at or
/// before `applied` (the oldest kept backup's applied index), oldest
/// first, each record before its segment (an interrupted prune leaves a
/// file without a record, removed next time, never a record without its
/// segment). With `archiver_live`, temporary files are left alone.
pub fn prune_before(
    dir: &Path,
    applied: u64,
    dry_run: bool,
    archiver_live: bool,
) -> Result<ArchivePrune> {
    let mut out = ArchivePrune::default();
    let a = dir.join(ARCHIVE_DIR);
    if !a.exists() {
        return Ok(out);
    }
    let records = read_records(dir)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    for r in records.iter().filter(|r| r.record.last_index <= applied) {
        for ext in ["json", "json.sig", "seg"] {
            let p = a.join(format!("{}.{ext}", r.name));
            out.bytes += size(&p);
            if !dry_run {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        out.segments.push(r.name.clone());
    }
    // Files with no record: a segment or signature whose record an
    // interrupted prune removed, or a writer's temporary file.
    let recorded: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.name.as_str()).collect();
    let newest = records.last().map(|r| r.name.clone()).unwrap_or_default();
    for e in std::fs::read_dir(&a).with_context(|| format!("reading {}", a.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let orphan = name.split_once('.').is_some_and(|(stem, _)| {
            stem.len() == 20 && !recorded.contains(stem) && *stem < *newest.as_str()
        });
        let tmp = name.starts_with('.') && name.ends_with(".tmp") && !archiver_live;
        if orphan || tmp {
            out.bytes += size(&e.path());
            out.leftovers.push(format!("{ARCHIVE_DIR}/{name}"));
            if !dry_run {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    let changed = !(out.segments.is_empty() && out.leftovers.is_empty());
    if changed && !dry_run {
        fsync_dir(&a)?;
    }
    Ok(out)
}

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// Through this log index (inclusive).
    Index(u64),
    /// Before the first entry holding a command at or after this time
    /// (Unix ms, compared with the leader-fixed command times).
    Time(i64),
}

/// The entries to replay after `applied` up to `until`, read from the
/// verified archive (the caller verified it with [`verify`]), and the
/// first entry NOT replayed if the archive holds it. Refused with
/// `ARCHIVE_GAP` when the archive does not hold every entry from
/// `applied + 1` to the stop.
pub fn entries_until(
    dir: &Path,
    applied: u64,
    until: Until,
) -> Result<(Vec<Entry>, Option<Entry>)> {
    let mut out: Vec<Entry> = Vec::new();
    let mut next = applied + 1;
    for r in read_records(dir)? {
        if r.record.last_index < next {
            continue;
        }
        if let Until::Index(i) = until
            && next > i
        {
            break;
        }
        if r.record.first_index > next {
            return Err(error(
                E_ARCHIVE_GAP,
                format!(
                    "the archive does not hold entries {next}..{}: they were purged before they were archived; restore to a point before {next} or from a later backup",
                    r.record.first_index - 1
                ),
            ));
        }
        for ((index, _), entry) in read_segment(dir, &r)? {
            if index < next {
                continue;
            }
            let stop = match until {
                Until::Index(i) => index > i,
                Until::Time(t) => entry_times(&entry).is_some_and(|(_, last)| last >= t),
            };
            if stop {
                return Ok((out, Some(entry)));
            }
            out.push(entry);
            next = index + 1;
        }
    }
    if let Until::Index(i) = until
        && next <= i
    {
        return Err(error(
            E_ARCHIVE_GAP,
            format!(
                "the archive ends at entry {}; entry {i} is not archived yet (run billdb backup archive first)",
                next - 1
            ),
        ));
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Op;
    use crate::types::{Batch, Command};
    use openraft::entry::RaftEntry;

    fn entry(index: u64, ts_ms: Option<i64>) -> (StoredEntry, Entry) {
        let log_id = openraft::testing::log_id::<crate::types::TypeConfig>(1, 1, index);
        let e = match ts_ms {
            Some(ts) => Entry::new_normal(
                log_id,
                Batch::of(vec![Command {
                    request_id: format!("r{index}"),
                    ts_ms: ts,
                    operator: "t".into(),
                    branch: String::new(),
                    channel: String::new(),
                    op: Op::SetClusterLevel { level: 1 },
                }]),
            ),
            None => Entry::new_blank(log_id),
        };
        let raw = crate::store::log_store::encode_entry(&e).unwrap();
        ((index, raw), e)
    }

    fn keys() -> (SigningKey, VerifyingKey) {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let v = k.verifying_key();
        (k, v)
    }

    #[test]
    fn segments_chain_verify_and_replay_stops_where_asked() {
        let d = tempfile::tempdir().unwrap();
        let (k, v) = keys();
        let s1: Vec<_> = (11..=20)
            .map(|i| entry(i, Some(1_000 * i as i64)))
            .collect();
        let s2: Vec<_> = (21..=30)
            .map(|i| entry(i, (i != 25).then_some(1_000 * i as i64)))
            .collect();
        write_segment(d.path(), &k, None, 2, &s1).unwrap();
        let r2 = write_segment(d.path(), &k, None, 2, &s2).unwrap();
        assert_eq!(r2.entries, 10);
        assert_eq!(r2.commands, 9);
        assert_eq!(
            (r2.first_ts_ms, r2.last_ts_ms),
            (Some(21_000), Some(30_000))
        );
        let c = verify(d.path(), &v).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.spans, vec![(11, 30)]);
        assert_eq!(next_index(d.path()).unwrap(), Some(31));
        // The newest record, read alone, is the chain's last; a record's
        // `prev` is the hash of the one before it.
        let all = read_records(d.path()).unwrap();
        let last = last_record(d.path()).unwrap().unwrap();
        assert_eq!(last.record, r2);
        assert_eq!(last.bytes, all[1].bytes);
        assert_eq!(r2.prev, Some(all[0].sha256()));
        // An overlapping segment is refused.
        assert!(write_segment(d.path(), &k, None, 2, &s2).is_err());

        let (got, stop) = entries_until(d.path(), 14, Until::Index(22)).unwrap();
        assert_eq!(got.first().map(|e| e.log_id().index), Some(15));
        assert_eq!(got.last().map(|e| e.log_id().index), Some(22));
        assert_eq!(stop.map(|e| e.log_id().index), Some(23));
        // Time: the entry at 24 s is the first at or after 23.5 s.
        let (got, stop) = entries_until(d.path(), 10, Until::Time(23_500)).unwrap();
        assert_eq!(got.last().map(|e| e.log_id().index), Some(23));
        assert_eq!(stop.map(|e| e.log_id().index), Some(24));
        // Before the archive's start, or past its end: refused.
        let e = entries_until(d.path(), 5, Until::Index(12)).unwrap_err();
        assert_eq!(store::code_of(&e), Some(E_ARCHIVE_GAP));
        let e = entries_until(d.path(), 10, Until::Index(31)).unwrap_err();
        assert_eq!(store::code_of(&e), Some(E_ARCHIVE_GAP));
        // Everything, when the time is after the last entry.
        let (got, stop) = entries_until(d.path(), 10, Until::Time(99_000)).unwrap();
        assert_eq!(got.len(), 20);
        assert!(stop.is_none());
    }

    #[test]
    fn prune_removes_segments_no_backup_needs_and_the_rest_still_verifies() {
        let d = tempfile::tempdir().unwrap();
        let (k, v) = keys();
        for first in [1u64, 11, 21] {
            let s: Vec<_> = (first..first + 10)
                .map(|i| entry(i, Some(i as i64)))
                .collect();
            write_segment(d.path(), &k, None, 1, &s).unwrap();
        }
        // The oldest kept backup applied 15: segment 1..10 goes, 11..20 stays.
        let dry = prune_before(d.path(), 15, true, false).unwrap();
        assert_eq!(dry.segments, vec![segment_name(1)]);
        assert_eq!(
            read_records(d.path()).unwrap().len(),
            3,
            "a dry run changes nothing"
        );
        let p = prune_before(d.path(), 15, false, false).unwrap();
        assert_eq!(p.segments, vec![segment_name(1)]);
        assert!(p.bytes > 0);
        let c = verify(d.path(), &v).unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.spans, vec![(11, 30)]);
        let (got, _) = entries_until(d.path(), 15, Until::Index(30)).unwrap();
        assert_eq!(got.len(), 15);
        // A leftover of an interrupted prune (a segment without its record).
        std::fs::write(
            d.path()
                .join(ARCHIVE_DIR)
                .join(format!("{}.seg", segment_name(5))),
            b"x",
        )
        .unwrap();
        let p = prune_before(d.path(), 15, false, false).unwrap();
        assert!(p.segments.is_empty());
        assert_eq!(p.leftovers.len(), 1, "{p:?}");
    }

    #[test]
    fn damage_forgery_and_removal_are_named() {
        let d = tempfile::tempdir().unwrap();
        let (k, v) = keys();
        for first in [1u64, 11, 21] {
            let s: Vec<_> = (first..first + 10)
                .map(|i| entry(i, Some(i as i64)))
                .collect();
            write_segment(d.path(), &k, Some("c".into()), 1, &s).unwrap();
        }
        let a = d.path().join(ARCHIVE_DIR);
        // A flipped byte in the middle segment.
        let seg = a.join(format!("{}.seg", segment_name(11)));
        let mut bytes = std::fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        let c = verify(d.path(), &v).unwrap();
        assert!(
            c.problems
                .iter()
                .any(|p| p.contains("00000000000000000011.seg") && p.contains("SHA-256")),
            "{:?}",
            c.problems
        );
        bytes[n - 3] ^= 1;
        std::fs::write(&seg, &bytes).unwrap();
        assert!(verify(d.path(), &v).unwrap().problems.is_empty());
        // Another key.
        let other = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        assert_eq!(verify(d.path(), &other).unwrap().problems.len(), 3);
        // The middle segment removed: the chain names the break, and the
        // gap is a span boundary.
        for ext in ["seg", "json", "json.sig"] {
            std::fs::remove_file(a.join(format!("{}.{ext}", segment_name(11)))).unwrap();
        }
        let c = verify(d.path(), &v).unwrap();
        assert_eq!(c.spans, vec![(1, 10), (21, 30)]);
        assert!(
            c.problems.iter().any(|p| p.contains("chain is broken")),
            "{:?}",
            c.problems
        );
        let e = entries_until(d.path(), 0, Until::Index(25)).unwrap_err();
        assert_eq!(store::code_of(&e), Some(E_ARCHIVE_GAP));
    }
}
