//! Backups, node side (the CLI side is `billdb_client::backup`).
//!
//! A backup *hold* is a RocksDB checkpoint of this node's live database
//! (memtables flushed, SST files hard-linked: no copy, no write pause
//! beyond one flush) in `data_dir/backup-holds/<id>/`, so the files stay
//! as they were at one applied index while the CLI downloads them over
//! the HTTP port. The hold answers what the backup's manifest needs: the
//! applied log id, every file with its size and SHA-256, the state digest
//! and the business fingerprints, all computed from the checkpoint itself.
//! The CLI releases the hold when done; holds older than
//! [`HOLD_AGE_S_MAX`] are removed when the next one is made.
//!
//! Also here, because the CLI runs them on a backup's files: the
//! fingerprints of a state ([`summarize`]) and the rewrite that turns a
//! restored database into the first state of a NEW cluster
//! ([`rewrite_for_new_cluster`]).
//!
//! The destination a backup is written to, the writer both the CLI and
//! the node use, and `prune` live in [`store`]; the node's scheduled
//! backups in [`schedule`].
//!
//! May touch: `data_dir/backup-holds/` (and read the live database to
//! checkpoint it); the database directory it is given to rewrite.

pub mod archive;
pub mod archiver;
pub mod schedule;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::{Account, Family, Record};
use crate::store::checkpoint::{KEY_MEMBERSHIP, fsync_dir, open_read_only};
use crate::store::{CF_RAFT_LOG, CF_RAFT_META, CF_SM_META, cf, decode, encode, io_err, sync_opts};
use crate::types::{LogId, Membership, NodeId, Nodes, StoredMembership, Vote};

/// Directory of the holds, in the node's data directory.
pub const HOLDS_DIR: &str = "backup-holds";
/// A hold the CLI did not release (it died) is removed after this long.
pub const HOLD_AGE_S_MAX: u64 = 6 * 3600;
/// `sm_meta` key naming the cluster a restored database was made for.
pub const KEY_CLUSTER_ID: &[u8] = b"cluster_id";

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// The business fingerprint of one branch and utility: what an auditor
/// compares, to the cent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub accounts: u64,
    pub records: u64,
    /// Σ record amounts per record kind (purchase, payment, charge, …).
    pub amounts_by_kind: BTreeMap<String, Decimal>,
    /// Σ account balances.
    pub balances: Decimal,
}

/// Fingerprints keyed `branch/utility`.
pub type Fingerprints = BTreeMap<String, Fingerprint>;

/// What a state holds: its applied log id, digest and fingerprints, all
/// from one consistent view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSummary {
    pub applied: Option<LogId>,
    pub digest: String,
    pub fingerprints: Fingerprints,
}

/// The differences between two sets of fingerprints, one line each
/// (empty: equal to the cent).
pub fn fingerprint_differences(want: &Fingerprints, got: &Fingerprints) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let zero = Fingerprint::default();
    for k in keys {
        let (w, g) = (want.get(k).unwrap_or(&zero), got.get(k).unwrap_or(&zero));
        if w.accounts != g.accounts {
            out.push(format!("{k}: accounts {} != {}", g.accounts, w.accounts));
        }
        if w.records != g.records {
            out.push(format!("{k}: records {} != {}", g.records, w.records));
        }
        if w.balances != g.balances {
            out.push(format!("{k}: Σ balances {} != {}", g.balances, w.balances));
        }
        let kinds: BTreeSet<&String> = w
            .amounts_by_kind
            .keys()
            .chain(g.amounts_by_kind.keys())
            .collect();
        for kind in kinds {
            let wa = w.amounts_by_kind.get(kind).copied().unwrap_or_default();
            let ga = g.amounts_by_kind.get(kind).copied().unwrap_or_default();
            if wa != ga {
                out.push(format!("{k}: Σ {kind} {ga} != {wa}"));
            }
        }
    }
    out
}

/// Applied log id, digest and fingerprints of `db` from one RocksDB
/// snapshot (so a live database gives a consistent answer too).
pub fn summarize(db: &DB) -> Result<StateSummary, std::io::Error> {
    let snap = db.snapshot();
    let applied = crate::store::state_machine::applied_in(db, &snap)?;
    let digest = crate::store::state_machine::digest_in(db, &snap)?;
    // Accounts: branch and utility of each, counts and balances.
    let mut fps = Fingerprints::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for item in snap.iterator_cf(cf(db, Family::Accounts.name())?, IteratorMode::Start) {
        let (_, v) = item.map_err(io_err)?;
        let a: Account = decode(&v)?;
        let key = format!("{}/{}", a.branch, a.utility);
        let fp = fps.entry(key.clone()).or_default();
        fp.accounts += 1;
        fp.balances += a.balance;
        owner.insert(a.account_id, key);
    }
    for item in snap.iterator_cf(cf(db, Family::Records.name())?, IteratorMode::Start) {
        let (_, v) = item.map_err(io_err)?;
        let r: Record = decode(&v)?;
        let key = owner
            .get(&r.account_id)
            .cloned()
            .unwrap_or_else(|| "?/?".to_string());
        let fp = fps.entry(key).or_default();
        fp.records += 1;
        *fp.amounts_by_kind.entry(r.kind).or_default() += r.amount;
    }
    Ok(StateSummary {
        applied,
        digest,
        fingerprints: fps,
    })
}

/// One account's part of the fingerprints: what a per-account difference
/// names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountFingerprint {
    /// `branch/utility`.
    pub group: String,
    pub balance: Decimal,
    pub records: u64,
    pub amounts_by_kind: BTreeMap<String, Decimal>,
}

/// Every account's fingerprint in `db`, from one RocksDB snapshot.
pub fn account_fingerprints(
    db: &DB,
) -> Result<BTreeMap<String, AccountFingerprint>, std::io::Error> {
    let snap = db.snapshot();
    let mut out: BTreeMap<String, AccountFingerprint> = BTreeMap::new();
    for item in snap.iterator_cf(cf(db, Family::Accounts.name())?, IteratorMode::Start) {
        let (_, v) = item.map_err(io_err)?;
        let a: Account = decode(&v)?;
        let f = out.entry(a.account_id).or_default();
        f.group = format!("{}/{}", a.branch, a.utility);
        f.balance = a.balance;
    }
    for item in snap.iterator_cf(cf(db, Family::Records.name())?, IteratorMode::Start) {
        let (_, v) = item.map_err(io_err)?;
        let r: Record = decode(&v)?;
        let f = out.entry(r.account_id).or_default();
        f.records += 1;
        *f.amounts_by_kind.entry(r.kind).or_default() += r.amount;
    }
    Ok(out)
}

/// How one account differs between two states (`None`: the account is
/// not in that state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountDifference {
    pub account_id: String,
    pub expected: Option<AccountFingerprint>,
    pub found: Option<AccountFingerprint>,
}

/// The accounts whose fingerprint differs between `expected` and `found`,
/// in account order: the total count and at most `limit` of them.
pub fn account_differences(
    expected: &BTreeMap<String, AccountFingerprint>,
    found: &BTreeMap<String, AccountFingerprint>,
    limit: usize,
) -> (u64, Vec<AccountDifference>) {
    let ids: BTreeSet<&String> = expected.keys().chain(found.keys()).collect();
    let mut total = 0u64;
    let mut listed = Vec::new();
    for id in ids {
        let (e, f) = (expected.get(id), found.get(id));
        if e == f {
            continue;
        }
        total += 1;
        if listed.len() < limit {
            listed.push(AccountDifference {
                account_id: id.clone(),
                expected: e.cloned(),
                found: f.cloned(),
            });
        }
    }
    (total, listed)
}

/// A file name a hold may serve: a plain name, no path.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// SHA-256 (hex) and size of a file, read in 1 MiB blocks.
pub fn hash_file(path: &Path) -> Result<(String, u64), std::io::Error> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Every regular file of `dir`, sorted, with size and SHA-256.
pub fn list_files(dir: &Path) -> Result<Vec<FileEntry>, std::io::Error> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        // RocksDB's own info log, if a reader wrote one: not data.
        if name.starts_with("LOG") {
            continue;
        }
        names.push(name);
    }
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let (sha256, size) = hash_file(&dir.join(&name))?;
            Ok(FileEntry { name, size, sha256 })
        })
        .collect()
}

/// A hold made for one backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hold {
    pub hold_id: String,
    pub data_format: u32,
    pub summary: StateSummary,
    pub files: Vec<FileEntry>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Remove holds older than [`HOLD_AGE_S_MAX`] and unfinished ones.
fn remove_stale(holds: &Path) {
    let Ok(entries) = std::fs::read_dir(holds) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > HOLD_AGE_S_MAX);
        if (name.ends_with(".tmp") || old)
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(hold = %e.path().display(), %err, "removing a stale backup hold");
        }
    }
}

/// Checkpoint `db` into a new hold under `data_dir` and describe it.
/// Blocking: hashes every file.
pub fn create_hold(db: &DB, data_dir: &Path) -> Result<Hold, std::io::Error> {
    static HOLD_NO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let holds = data_dir.join(HOLDS_DIR);
    std::fs::create_dir_all(&holds)?;
    remove_stale(&holds);
    let n = HOLD_NO.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let hold_id = format!("{}-{}-{n}", unix_ms(), std::process::id());
    let tmp = holds.join(format!("{hold_id}.tmp"));
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(&tmp))
        .map_err(io_err)?;
    let dir = holds.join(&hold_id);
    std::fs::rename(&tmp, &dir)?;
    fsync_dir(&holds)?;
    let made = (|| {
        drop_raft_log(&dir)?;
        // The files first: opening the checkpoint may add RocksDB's LOG.
        let files = list_files(&dir)?;
        let ro = open_read_only(&dir)?;
        let summary = summarize(&ro)?;
        Ok::<_, std::io::Error>((files, summary))
    })();
    match made {
        Ok((files, summary)) => Ok(Hold {
            hold_id,
            data_format: crate::store::DATA_FORMAT,
            summary,
            files,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Empty the Raft log of the checkpoint at `dir` (its files are dropped):
/// a backup is the state at its applied index, and a restore starts a new
/// log anyway. The log's SST files are also the ones that change between
/// two backups most, so leaving them out keeps incremental backups small.
fn drop_raft_log(dir: &Path) -> Result<(), std::io::Error> {
    let db = crate::store::open_db(dir)?;
    let log = cf(&db, CF_RAFT_LOG)?;
    db.delete_range_cf(log, [0u8; 8], [0xffu8; 8])
        .map_err(io_err)?;
    db.delete_cf(log, [0xffu8; 8]).map_err(io_err)?;
    db.flush_cf(log).map_err(io_err)?;
    db.compact_range_cf(log, None::<&[u8]>, None::<&[u8]>);
    let mut wait = rocksdb::WaitForCompactOptions::default();
    wait.set_flush(true);
    db.wait_for_compact(&wait).map_err(io_err)?;
    Ok(())
}

/// The path of file `name` of hold `hold_id`, if both are plain names and
/// the file exists.
pub fn hold_file(data_dir: &Path, hold_id: &str, name: &str) -> Option<PathBuf> {
    if !safe_name(hold_id) || !safe_name(name) {
        return None;
    }
    let p = data_dir.join(HOLDS_DIR).join(hold_id).join(name);
    p.is_file().then_some(p)
}

/// Remove hold `hold_id`; false when there is none.
pub fn release_hold(data_dir: &Path, hold_id: &str) -> Result<bool, std::io::Error> {
    if !safe_name(hold_id) {
        return Ok(false);
    }
    let p = data_dir.join(HOLDS_DIR).join(hold_id);
    if !p.is_dir() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&p)?;
    Ok(true)
}

/// Turn the restored database at `db_dir` (a backup's files) into the first
/// state of a new cluster, as seen by member `self_id`: the Raft log is
/// emptied and marked purged up to the backup's applied log id, the
/// membership becomes `members` (all voters) at that log id, the vote is
/// this node's own in the backup's term (so the first election is in a
/// later term and new entries follow the backup's), and the database is
/// stamped with `cluster_id`. Returns the summary of the state (which the
/// rewrite does not change).
pub fn rewrite_for_new_cluster(
    db_dir: &Path,
    self_id: NodeId,
    members: &Nodes,
    cluster_id: &str,
) -> Result<StateSummary, std::io::Error> {
    if !members.contains_key(&self_id) {
        return Err(io_err(format!("node {self_id} is not among the members")));
    }
    let db = crate::store::open_db(db_dir)?;
    let summary = summarize(&db)?;
    let Some(applied) = summary.applied else {
        return Err(io_err("the backup has applied nothing"));
    };
    let mut batch = rocksdb::WriteBatch::default();
    let log = cf(&db, CF_RAFT_LOG)?;
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (k, _) = item.map_err(io_err)?;
        batch.delete_cf(log, k);
    }
    let meta = cf(&db, CF_RAFT_META)?;
    let vote = Vote::new(applied.leader_id.term, self_id);
    batch.put_cf(meta, b"vote", encode(&vote)?);
    batch.put_cf(meta, b"purged", encode(&applied)?);
    batch.put_cf(meta, b"committed", encode(&Some(applied))?);
    batch.delete_cf(meta, b"vote_fence");
    let sm = cf(&db, CF_SM_META)?;
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = Membership::new(vec![voters], members.clone())
        .map_err(|e| io_err(format!("membership: {e}")))?;
    let membership = StoredMembership::new(Some(applied), membership);
    batch.put_cf(sm, KEY_MEMBERSHIP, encode(&membership)?);
    batch.delete_cf(sm, b"installing");
    batch.put_cf(sm, KEY_CLUSTER_ID, cluster_id.as_bytes());
    db.write_opt(batch, &sync_opts()).map_err(io_err)?;
    db.flush_wal(true).map_err(io_err)?;
    Ok(summary)
}

/// The cluster id a restored database was stamped with, if any.
pub fn stamped_cluster_id(db: &DB) -> Result<Option<String>, std::io::Error> {
    Ok(db
        .get_cf(cf(db, CF_SM_META)?, KEY_CLUSTER_ID)
        .map_err(io_err)?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}
