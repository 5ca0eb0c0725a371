//! Backups, CLI side: `billdb backup keygen | create | verify | list |
//! prune` and `billdb restore` (the node side is `billdb_node::backup`).
//!
//! The destination's layout, the writer (shared with the node's scheduled
//! backups) and `prune` are `billdb_node::backup::store`; here are the
//! keys, the choice of the node to back up from and the download of its
//! hold over HTTP, verify and restore.
//!
//! May touch: the destination directory, the key files it is given, and
//! the data directories a restore is given.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use billdb_node::backup::archive::{self, Until};
use billdb_node::backup::store::{self, HoldSource, check_marker, fsync_dir, store_path};
use billdb_node::backup::{
    AccountDifference, FileEntry, Fingerprints, Hold, StateSummary, account_differences,
    account_fingerprints, fingerprint_differences,
};
use billdb_node::types::{NodeId, NodeInfo, Nodes};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::admin::AdminClient;
use crate::tls::ClientTls;

pub use billdb_node::backup::store::{
    BACKUP_FORMAT, BACKUPS_DIR, BackupError, FILES_DIR, MANIFEST_FILE, MARKER_FILE, Manifest,
    PruneReport, Retention, SIGNATURE_FILE, code_of, list_ids, prune, render_prune,
};

/// Longest wait for a node to make a hold (a flush and hashing every file).
const HOLD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bound on one file's download.
const FILE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

// ---- keys -------------------------------------------------------------------

fn random_32() -> Result<[u8; 32]> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b)
}

/// Write a new key pair: `<prefix>.key` (the private key, hex, mode 0600,
/// never overwritten) and `<prefix>.pub` (the public key, hex).
pub fn keygen(prefix: &Path) -> Result<(PathBuf, PathBuf)> {
    let private = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    if private.exists() {
        return Err(store::error(
            store::E_INVALID_ARGUMENT,
            format!(
                "{} already exists: a key is never overwritten",
                private.display()
            ),
        ));
    }
    let key = SigningKey::from_bytes(&random_32()?);
    crate::certs::write_file(
        &private,
        format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
        0o600,
    )?;
    crate::certs::write_file(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().to_bytes())).as_bytes(),
        0o644,
    )?;
    Ok((private, public))
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    store::read_signing_key(path)
}

pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    store::read_verifying_key(path)
}

// ---- progress ---------------------------------------------------------------

/// A bytes progress bar on stderr (drawn only on a terminal), or a hidden one.
pub fn bytes_bar(total: u64, what: &str, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// The writer's progress as a bar.
struct Bar {
    pb: Option<ProgressBar>,
    show: bool,
}

impl store::Progress for Bar {
    fn begin(&mut self, bytes: u64) {
        self.pb = Some(bytes_bar(bytes, "copy", self.show));
    }
    fn advance(&mut self, bytes: u64) {
        if let Some(pb) = &self.pb {
            pb.inc(bytes);
        }
    }
    fn end(&mut self) {
        if let Some(pb) = self.pb.take() {
            pb.finish_and_clear();
        }
    }
}

// ---- create -----------------------------------------------------------------

pub struct CreateOpts {
    /// Any node's HTTP endpoint.
    pub endpoint: String,
    pub tls: Option<ClientTls>,
    /// An ops token.
    pub token: Option<String>,
    pub to: PathBuf,
    pub private_key: PathBuf,
    /// Take the backup from the leader instead of a follower.
    pub from_leader: bool,
    pub progress: bool,
    /// Bound on the small requests (status).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    pub backup_id: String,
    pub dir: PathBuf,
    pub source_node: NodeId,
    pub source_was_leader: bool,
    pub applied_index: u64,
    pub files: usize,
    pub files_copied: usize,
    pub bytes_total: u64,
    pub bytes_copied: u64,
    pub digest: String,
    pub ms: u64,
}

fn client(endpoint: &str, o: &CreateOpts, timeout: Duration) -> AdminClient {
    AdminClient::with_tls(endpoint, timeout, o.tls.as_ref()).with_token(o.token.clone())
}

/// The node to take the backup from: the follower the destination's
/// newest backup came from when it still follows and answers (each
/// replica compacts on its own, so only the same node's files repeat:
/// that is what makes the next backup incremental); else the follower
/// with the highest applied index; else the leader.
fn pick_source(o: &CreateOpts, prefer: Option<NodeId>) -> Result<(NodeId, String, bool)> {
    pick_source_via(o, &o.endpoint, prefer)
}

/// [`pick_source`], asking the node at `entry` for the cluster's status.
pub(crate) fn pick_source_via(
    o: &CreateOpts,
    entry: &str,
    prefer: Option<NodeId>,
) -> Result<(NodeId, String, bool)> {
    let entry = client(entry, o, o.timeout);
    let status = entry
        .status()
        .with_context(|| format!("asking {} for the cluster status", entry.endpoint()))?;
    let nodes: BTreeMap<NodeId, NodeInfo> = serde_json::from_value(status["nodes"].clone())
        .context("the status answer has no node list")?;
    let voters: Vec<NodeId> = serde_json::from_value(status["voters"].clone())
        .context("the status answer has no voters")?;
    let leader = status["leader_id"].as_u64();
    let addr = |id: NodeId| -> Result<String> {
        Ok(nodes
            .get(&id)
            .with_context(|| format!("node {id} has no address in the membership"))?
            .http_addr
            .clone())
    };
    if !o.from_leader {
        let mut best: Option<(u64, NodeId)> = None;
        for id in voters.iter().copied().filter(|id| Some(*id) != leader) {
            let Ok(a) = addr(id) else { continue };
            let Ok(s) = client(&a, o, o.timeout.min(Duration::from_secs(3))).status() else {
                continue;
            };
            if prefer == Some(id) {
                return Ok((id, a, false));
            }
            let applied = s["applied_index"].as_u64().unwrap_or(0);
            if best.is_none_or(|(b, _)| applied > b) {
                best = Some((applied, id));
            }
        }
        if let Some((_, id)) = best {
            return Ok((id, addr(id)?, false));
        }
    }
    let leader = leader.context("the cluster has no leader now; try again")?;
    Ok((leader, addr(leader)?, true))
}

/// Releases a hold when dropped (also when the backup failed half-way).
struct HoldGuard {
    client: AdminClient,
    hold_id: String,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let _ = self
            .client
            .delete(&format!("/v1/backup/holds/{}", self.hold_id));
    }
}

/// A hold's files, downloaded from its node's HTTP route.
struct HttpHold {
    dl: AdminClient,
    hold_id: String,
}

impl HoldSource for HttpHold {
    fn copy(
        &mut self,
        f: &FileEntry,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<()> {
        self.dl
            .download(
                &format!("/v1/backup/holds/{}/files/{}", self.hold_id, f.name),
                out,
                progress,
            )
            .map(|_| ())
            .map_err(|e| anyhow!("downloading {}: {e}", f.name))
    }
}

pub fn create(o: &CreateOpts) -> Result<CreateReport> {
    let started = Instant::now();
    let key = read_signing_key(&o.private_key)?;
    store::open_destination(&o.to)?;
    let prefer = store::newest_source(&o.to);
    let (source_node, source_addr, source_was_leader) = pick_source(o, prefer)?;
    let hold_client = client(&source_addr, o, HOLD_TIMEOUT);
    let v = hold_client
        .post("/v1/backup/holds", &serde_json::json!({}))
        .with_context(|| format!("asking node {source_node} for a backup hold"))?;
    let hold: Hold = serde_json::from_value(v.clone()).context("decoding the hold")?;
    let _guard = HoldGuard {
        client: client(&source_addr, o, o.timeout),
        hold_id: hold.hold_id.clone(),
    };
    let w = store::write_backup(
        &o.to,
        store::Source {
            hold: &hold,
            node: source_node,
            cluster_id: v["cluster_id"].as_str().map(str::to_string),
        },
        &mut HttpHold {
            dl: client(&source_addr, o, FILE_TIMEOUT),
            hold_id: hold.hold_id.clone(),
        },
        &key,
        &mut Bar {
            pb: None,
            show: o.progress,
        },
        &mut || Ok(()),
    )?;
    Ok(CreateReport {
        backup_id: w.backup_id,
        dir: o.to.clone(),
        source_node,
        source_was_leader,
        applied_index: w.applied_index,
        files: w.files,
        files_copied: w.files_copied,
        bytes_total: w.bytes_total,
        bytes_copied: w.bytes_copied,
        digest: w.digest,
        ms: started.elapsed().as_millis() as u64,
    })
}

// ---- verify -----------------------------------------------------------------

pub struct VerifyOpts {
    pub dir: PathBuf,
    /// Default: the newest backup.
    pub backup_id: Option<String>,
    pub public_key: PathBuf,
    /// Also open the backup's database and recompute digest and fingerprints.
    pub deep: bool,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub backup_id: String,
    pub ok: bool,
    pub signature_ok: bool,
    pub files: usize,
    pub bytes: u64,
    /// Each problem found, naming the file (missing, truncated, altered).
    pub problems: Vec<String>,
    pub applied_index: Option<u64>,
    pub digest_manifest: Option<String>,
    pub digest_recomputed: Option<String>,
    pub fingerprints_checked: bool,
    pub ms: u64,
}

/// Read and check a backup's manifest: the signature over its bytes first.
/// `Ok(Err(problem))`: the signature does not verify.
fn read_manifest(
    dir: &Path,
    backup_id: &str,
    key: &VerifyingKey,
) -> Result<std::result::Result<Manifest, String>> {
    let bdir = dir.join(BACKUPS_DIR).join(backup_id);
    if !(billdb_node::backup::safe_name(backup_id) && bdir.is_dir()) {
        return Err(store::error(
            store::E_NO_SUCH_BACKUP,
            format!("{} holds no backup {backup_id:?}", dir.display()),
        ));
    }
    let bytes = std::fs::read(bdir.join(MANIFEST_FILE))
        .with_context(|| format!("reading the manifest of backup {backup_id}"))?;
    // The format first, for a clear message on a newer backup.
    let loose: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!("backup {backup_id}: {MANIFEST_FILE} is not a billdb manifest: {e}")
    })?;
    let format = loose["format"].as_u64().unwrap_or(0);
    if format > BACKUP_FORMAT as u64 {
        return Err(store::error(
            store::E_NEWER_FORMAT,
            format!(
                "backup {backup_id} was written by a newer billdb (manifest format {format}; this build reads up to {BACKUP_FORMAT})"
            ),
        ));
    }
    let sig_text = std::fs::read_to_string(bdir.join(SIGNATURE_FILE)).unwrap_or_default();
    let sig = hex::decode(sig_text.trim())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let Some(sig) = sig else {
        return Ok(Err(format!(
            "{SIGNATURE_FILE}: missing or not an Ed25519 signature"
        )));
    };
    if key.verify(&bytes, &sig).is_err() {
        return Ok(Err(format!(
            "{MANIFEST_FILE}: the signature does not verify with this public key (the manifest was changed, or signed by another key)"
        )));
    }
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow!("backup {backup_id}: signed manifest does not decode: {e}"))?;
    ensure!(
        m.backup_id == backup_id,
        "backup {backup_id}: the manifest names backup {}",
        m.backup_id
    );
    Ok(Ok(m))
}

/// Check every file's size and SHA-256; one problem per bad file.
fn check_files(dir: &Path, m: &Manifest, pb: &ProgressBar) -> Vec<String> {
    let mut problems = Vec::new();
    for f in &m.files {
        let p = store_path(dir, &f.sha256);
        if !billdb_node::backup::safe_name(&f.name)
            || f.sha256.len() != 64
            || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            problems.push(format!("{}: not a valid file entry", f.name));
            continue;
        }
        match std::fs::metadata(&p) {
            Err(_) => {
                problems.push(format!("{} ({}): missing", f.name, p.display()));
                pb.inc(f.size);
                continue;
            }
            Ok(meta) if meta.len() != f.size => {
                problems.push(format!(
                    "{} ({}): {} bytes, the manifest says {} (truncated or altered)",
                    f.name,
                    p.display(),
                    meta.len(),
                    f.size
                ));
                pb.inc(f.size);
                continue;
            }
            Ok(_) => {}
        }
        match billdb_node::backup::hash_file(&p) {
            Ok((sha, _)) if sha == f.sha256 => {}
            Ok((sha, _)) => problems.push(format!(
                "{} ({}): SHA-256 {sha}, the manifest says {} (altered)",
                f.name,
                p.display(),
                f.sha256
            )),
            Err(e) => problems.push(format!("{} ({}): unreadable: {e}", f.name, p.display())),
        }
        pb.inc(f.size);
    }
    problems
}

/// A directory of the backup's files under their database names; removed
/// when dropped.
struct Assembled {
    path: PathBuf,
}

impl Drop for Assembled {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn assemble(dir: &Path, m: &Manifest) -> Result<Assembled> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".verify-{}-{n}", std::process::id()));
    if path.exists() {
        std::fs::remove_dir_all(&path)?;
    }
    std::fs::create_dir_all(&path)?;
    let a = Assembled { path };
    for f in &m.files {
        let src = store_path(dir, &f.sha256);
        let dst = a.path.join(&f.name);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(a)
}

/// Pick the backup: the one named, or the newest.
fn choose(dir: &Path, backup_id: Option<&str>) -> Result<String> {
    match backup_id {
        Some(id) => {
            check_marker(dir)?;
            Ok(id.to_string())
        }
        None => list_ids(dir)?.pop().ok_or_else(|| {
            store::error(
                store::E_NO_SUCH_BACKUP,
                format!("{} holds no backup yet", dir.display()),
            )
        }),
    }
}

/// Verify a backup. `Err`: it cannot be checked at all (not a billdb
/// backup, no such backup, a newer format); otherwise the report, `ok`
/// only when the signature, every file and (deep) the recomputed digest
/// and fingerprints agree with the manifest.
pub fn verify(o: &VerifyOpts) -> Result<(VerifyReport, Option<Manifest>)> {
    let started = Instant::now();
    let key = read_verifying_key(&o.public_key)?;
    let backup_id = choose(&o.dir, o.backup_id.as_deref())?;
    let mut report = VerifyReport {
        backup_id: backup_id.clone(),
        ok: false,
        signature_ok: false,
        files: 0,
        bytes: 0,
        problems: Vec::new(),
        applied_index: None,
        digest_manifest: None,
        digest_recomputed: None,
        fingerprints_checked: false,
        ms: 0,
    };
    let m = match read_manifest(&o.dir, &backup_id, &key)? {
        Ok(m) => m,
        Err(problem) => {
            report.problems.push(problem);
            report.ms = started.elapsed().as_millis() as u64;
            return Ok((report, None));
        }
    };
    report.signature_ok = true;
    report.files = m.files.len();
    report.bytes = m.bytes_total;
    report.applied_index = Some(m.applied_log_id.index);
    report.digest_manifest = Some(m.digest.clone());
    if m.data_format != billdb_node::store::DATA_FORMAT {
        report.problems.push(format!(
            "the backup holds data format {}, this billdb reads format {}: use the billdb of that release",
            m.data_format,
            billdb_node::store::DATA_FORMAT
        ));
    }
    let pb = bytes_bar(m.bytes_total, "verify", o.progress);
    report.problems.extend(check_files(&o.dir, &m, &pb));
    pb.finish_and_clear();
    if o.deep && report.problems.is_empty() {
        match recompute(&o.dir, &m) {
            Ok(s) => {
                report.digest_recomputed = Some(s.digest.clone());
                if s.applied != Some(m.applied_log_id) {
                    report.problems.push(format!(
                        "the database has applied {:?}, the manifest says {}",
                        s.applied.map(|l| l.index),
                        m.applied_log_id.index
                    ));
                }
                if s.digest != m.digest {
                    report.problems.push(format!(
                        "state digest {} != the manifest's {}",
                        s.digest, m.digest
                    ));
                }
                report.fingerprints_checked = true;
                report
                    .problems
                    .extend(fingerprint_differences(&m.fingerprints, &s.fingerprints));
            }
            Err(e) => report
                .problems
                .push(format!("the backup's database does not open: {e:#}")),
        }
    }
    report.ok = report.problems.is_empty();
    report.ms = started.elapsed().as_millis() as u64;
    Ok((report, Some(m)))
}

fn recompute(dir: &Path, m: &Manifest) -> Result<billdb_node::backup::StateSummary> {
    let a = assemble(dir, m)?;
    let db = billdb_node::store::checkpoint::open_read_only(&a.path)
        .map_err(|e| anyhow!("opening read-only: {e}"))?;
    let s = billdb_node::backup::summarize(&db).map_err(|e| anyhow!("reading: {e}"))?;
    drop(db);
    Ok(s)
}

/// The text form of a verify report.
pub fn render_verify(r: &VerifyReport) -> String {
    let mut s = format!(
        "backup {}: {}\n  signature: {}\n  files: {} ({} bytes)\n",
        r.backup_id,
        if r.ok { "OK" } else { "FAILED" },
        if r.signature_ok { "ok" } else { "FAILED" },
        r.files,
        r.bytes
    );
    if let Some(a) = r.applied_index {
        s += &format!("  applied index: {a}\n");
    }
    if let (Some(m), Some(c)) = (&r.digest_manifest, &r.digest_recomputed) {
        s += &format!("  digest: manifest {m}, recomputed {c}\n");
    }
    if r.fingerprints_checked {
        s += "  fingerprints recomputed and compared\n";
    }
    for p in &r.problems {
        s += &format!("  PROBLEM: {p}\n");
    }
    s
}

// ---- restore ----------------------------------------------------------------

pub struct RestoreOpts {
    pub from: PathBuf,
    pub backup_id: Option<String>,
    pub public_key: PathBuf,
    /// The NEW cluster's id (must differ from the backup's).
    pub cluster_id: String,
    /// Every member of the new cluster (all voters).
    pub members: Nodes,
    /// The data directories to write on this machine, by member.
    pub data_dirs: BTreeMap<NodeId, PathBuf>,
    /// Replace what a data directory holds.
    pub force: bool,
    pub progress: bool,
    /// Point in time: replay the archive on top of the newest backup before
    /// this point (`None`: the backup as it is).
    pub until: Option<Until>,
    /// With `until`: also replay the rest of the archive on a scratch copy
    /// and itemise, per account, what the entries after the point change.
    pub diff_after: bool,
}

/// Most accounts a report itemises (the total is always given).
pub const ACCOUNTS_LISTED_MAX: usize = 1_000;

/// What a point-in-time restore replayed, and what it left out.
#[derive(Debug, Clone, Serialize)]
pub struct PointInTime {
    pub until: Until,
    /// The backup's applied index: the replay starts after it.
    pub backup_applied_index: u64,
    pub replayed_entries: u64,
    pub replayed_commands: u64,
    pub last_replayed_index: u64,
    /// Latest command time replayed (RFC 3339).
    pub last_replayed_time: Option<String>,
    /// The first archived entry NOT replayed, when the archive holds one.
    pub first_not_replayed: Option<EntrySummary>,
    /// Archived entries after the point (not replayed), their commands by
    /// operation, and their time range.
    pub not_replayed_entries: u64,
    pub not_replayed_ops: BTreeMap<String, u64>,
    pub archive_last_index: Option<u64>,
    /// The state the replay produced: what every node is checked against.
    pub replayed_digest: String,
    pub replayed_fingerprints: Fingerprints,
    /// With `--diff-after`: the accounts the entries after the point change.
    pub changes_after: Option<AccountChanges>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntrySummary {
    pub index: u64,
    pub first_time: Option<String>,
    pub commands: u64,
    pub ops: BTreeMap<String, u64>,
}

/// Accounts that differ between two states: how many, and the first
/// [`ACCOUNTS_LISTED_MAX`] itemised.
#[derive(Debug, Clone, Serialize)]
pub struct AccountChanges {
    pub accounts_total: u64,
    pub accounts: Vec<AccountDifference>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRestore {
    pub node: NodeId,
    pub data_dir: PathBuf,
    pub applied_index: Option<u64>,
    pub digest: String,
    pub digest_equal: bool,
    /// Every fingerprint difference (empty: equal to the cent).
    pub fingerprint_differences: Vec<String>,
    /// When the node differs: per account, against the state it was
    /// restored from (the backup, or the replay).
    pub account_differences: Option<AccountChanges>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub source_cluster_id: Option<String>,
    pub cluster_id: String,
    pub applied_index: u64,
    pub manifest_digest: String,
    pub fingerprints: Fingerprints,
    pub point_in_time: Option<PointInTime>,
    pub nodes: Vec<NodeRestore>,
    pub ok: bool,
    pub ms: u64,
}

fn is_empty_dir(p: &Path) -> Result<bool> {
    if !p.exists() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(p)
        .with_context(|| format!("reading {}", p.display()))?
        .next()
        .is_none())
}

/// Write data directories for a NEW cluster from a verified backup, then
/// check each against the manifest. Nothing is written unless the backup
/// verifies completely.
pub fn restore(o: &RestoreOpts) -> Result<RestoreReport> {
    let started = Instant::now();
    let bad = |code: &'static str, msg: String| -> Result<()> { Err(store::error(code, msg)) };
    let invalid = store::E_INVALID_ARGUMENT;
    if billdb_api::identity::check_name(&o.cluster_id).is_err() {
        bad(
            invalid,
            format!(
                "--to-cluster {:?}: a cluster id is a-z, 0-9 and '-'",
                o.cluster_id
            ),
        )?;
    }
    if o.members.is_empty() {
        bad(invalid, "no --member given".into())?;
    }
    if o.data_dirs.is_empty() {
        bad(invalid, "no --data-dir given".into())?;
    }
    for id in o.data_dirs.keys() {
        if !o.members.contains_key(id) {
            bad(
                invalid,
                format!("--data-dir for node {id}, which is not a --member"),
            )?;
        }
    }
    for (id, d) in &o.data_dirs {
        if !(o.force || is_empty_dir(d)?) {
            bad(
                store::E_NOT_EMPTY,
                format!(
                    "the data directory of node {id} ({}) is not empty: refusing to restore over it (--force replaces it)",
                    d.display()
                ),
            )?;
        }
    }
    if o.diff_after && o.until.is_none() {
        bad(invalid, "--diff-after needs --until".into())?;
    }
    let backup_id = match (&o.backup_id, o.until) {
        (None, Some(until)) => Some(backup_before(&o.from, until)?),
        (id, _) => id.clone(),
    };
    let (v, m) = verify(&VerifyOpts {
        dir: o.from.clone(),
        backup_id,
        public_key: o.public_key.clone(),
        deep: true,
        progress: o.progress,
    })?;
    let m = match (v.ok, m) {
        (true, Some(m)) => m,
        _ => {
            return Err(store::error(
                store::E_VERIFY_FAILED,
                format!(
                    "backup {} does not verify; nothing restored:\n{}",
                    v.backup_id,
                    v.problems.join("\n")
                ),
            ));
        }
    };
    if m.cluster_id.as_deref() == Some(o.cluster_id.as_str()) {
        bad(
            invalid,
            format!(
                "--to-cluster {} is the backup's own cluster id: a restore makes a NEW cluster, give it a new id",
                o.cluster_id
            ),
        )?;
    }
    // Room for every node's copy, per filesystem, before anything is
    // written (and a replay's working copy).
    let mut per_fs: BTreeMap<u64, (PathBuf, u64)> = BTreeMap::new();
    let extra_copies = match (o.until.is_some(), o.diff_after) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    for (i, d) in o.data_dirs.values().enumerate() {
        use std::os::unix::fs::MetadataExt;
        let existing = d.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        let dev = std::fs::metadata(existing)
            .with_context(|| format!("reading {}", existing.display()))?
            .dev();
        let e = per_fs.entry(dev).or_insert_with(|| (d.clone(), 0));
        let copies = if i == 0 { 1 + extra_copies } else { 1 };
        e.1 = e.1.saturating_add(m.bytes_total.saturating_mul(copies));
    }
    for (d, need) in per_fs.values() {
        store::ensure_space(d, *need, "the restore")?;
    }
    // A point in time: the backup replayed up to it, once, in a working
    // directory beside the first node's; every node is copied from that.
    let work_parent = o
        .data_dirs
        .values()
        .next()
        .ok_or_else(|| anyhow!("no --data-dir given"))?
        .clone();
    let mut replayed: Option<(Replay, PointInTime)> = None;
    if let Some(until) = o.until {
        let r = replay_to(o, &m, until, &work_parent)?;
        replayed = Some(r);
    }
    let (expected, source) = match &replayed {
        Some((r, p)) => (
            StateSummary {
                applied: None,
                digest: p.replayed_digest.clone(),
                fingerprints: p.replayed_fingerprints.clone(),
            },
            FilesFrom::Dir(&r.dir),
        ),
        None => (
            StateSummary {
                applied: None,
                digest: m.digest.clone(),
                fingerprints: m.fingerprints.clone(),
            },
            FilesFrom::Backup(&m),
        ),
    };
    let mut nodes = Vec::new();
    for (id, data_dir) in &o.data_dirs {
        match restore_one(o, &source, &expected, *id, data_dir) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                // No half-restored cluster: the nodes this run restored
                // are taken back (their directories were empty, or
                // given up with --force).
                for n in &nodes {
                    let _ = std::fs::remove_dir_all(n.data_dir.join("db"));
                }
                return Err(store::no_space(e, data_dir));
            }
        }
    }
    // A node that differs: itemised per account against what it was
    // restored from.
    if nodes
        .iter()
        .any(|n| !(n.digest_equal && n.fingerprint_differences.is_empty()))
    {
        let reference = match &replayed {
            Some((r, _)) => open_and_fingerprint(&r.dir)?,
            None => {
                let a = assemble(&o.from, &m)?;
                open_and_fingerprint(&a.path)?
            }
        };
        for n in nodes.iter_mut() {
            if n.digest_equal && n.fingerprint_differences.is_empty() {
                continue;
            }
            let found = open_and_fingerprint(&n.data_dir.join("db"))?;
            let (total, accounts) = account_differences(&reference, &found, ACCOUNTS_LISTED_MAX);
            n.account_differences = Some(AccountChanges {
                accounts_total: total,
                accounts,
            });
        }
    }
    let ok = nodes
        .iter()
        .all(|n| n.digest_equal && n.fingerprint_differences.is_empty());
    let applied_index = nodes
        .first()
        .and_then(|n| n.applied_index)
        .unwrap_or(m.applied_log_id.index);
    Ok(RestoreReport {
        backup_id: m.backup_id.clone(),
        source_cluster_id: m.cluster_id.clone(),
        cluster_id: o.cluster_id.clone(),
        applied_index,
        manifest_digest: m.digest.clone(),
        fingerprints: m.fingerprints.clone(),
        point_in_time: replayed.map(|(_, p)| p),
        nodes,
        ok,
        ms: started.elapsed().as_millis() as u64,
    })
}

/// Every account's fingerprint of the database in `dir` (opened read-only).
fn open_and_fingerprint(
    dir: &Path,
) -> Result<BTreeMap<String, billdb_node::backup::AccountFingerprint>> {
    let db = billdb_node::store::checkpoint::open_read_only(dir)
        .map_err(|e| anyhow!("opening {}: {e}", dir.display()))?;
    account_fingerprints(&db).map_err(|e| anyhow!("reading {}: {e}", dir.display()))
}

/// The newest backup in `dir` a restore to `until` can start from: taken
/// at or before the point (by index: applied at or before it; by time:
/// made at or before it).
fn backup_before(dir: &Path, until: Until) -> Result<String> {
    for id in list_ids(dir)?.into_iter().rev() {
        let Ok(m) = store::read_manifest_unverified(dir, &id) else {
            continue;
        };
        let fits = match until {
            Until::Index(i) => m.applied_log_id.index <= i,
            Until::Time(t) => (m.created_unix_ms as i64) <= t,
        };
        if fits {
            return Ok(id);
        }
    }
    Err(store::error(
        store::E_NO_SUCH_BACKUP,
        format!(
            "{} holds no backup from before {}: a point-in-time restore starts from a backup taken before the point",
            dir.display(),
            render_until(until)
        ),
    ))
}

pub fn render_until(u: Until) -> String {
    match u {
        Until::Index(i) => format!("log index {i}"),
        Until::Time(t) => billdb_node::api::validate::to_rfc3339(t),
    }
}

/// A replayed state in a working directory; removed when dropped.
struct Replay {
    dir: PathBuf,
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies every file of `from` (a database directory) into `to`.
fn copy_db_files(from: &Path, to: &Path, pb: &ProgressBar) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let dst = to.join(e.file_name());
        let n = std::fs::copy(e.path(), &dst)
            .with_context(|| format!("copying {} to {}", e.path().display(), dst.display()))?;
        std::fs::File::open(&dst)?.sync_all()?;
        pb.inc(n);
    }
    fsync_dir(to)
}

fn ops_of(entries: &[billdb_node::types::Entry]) -> (u64, BTreeMap<String, u64>) {
    let mut ops = BTreeMap::new();
    let mut n = 0;
    for e in entries {
        for c in archive::commands(e) {
            n += 1;
            *ops.entry(c.op.name().to_string()).or_insert(0) += 1;
        }
    }
    (n, ops)
}

/// The backup's files copied to a working directory (never linked: a
/// database opened for writing must not touch the backup's own files),
/// the archive replayed on it up to `until`, and what was and was not
/// replayed.
fn replay_to(
    o: &RestoreOpts,
    m: &Manifest,
    until: Until,
    beside: &Path,
) -> Result<(Replay, PointInTime)> {
    let key = read_verifying_key(&o.public_key)?;
    let check = archive::verify(&o.from, &key)?;
    if check.segments == 0 {
        return Err(store::error(
            archive::E_ARCHIVE_GAP,
            format!(
                "{} has no log archive: a point-in-time restore replays archived entries (billdb backup archive)",
                o.from.display()
            ),
        ));
    }
    if !check.problems.is_empty() {
        return Err(store::error(
            store::E_VERIFY_FAILED,
            format!(
                "the log archive does not verify; nothing restored:\n{}",
                check.problems.join("\n")
            ),
        ));
    }
    let records = archive::read_records(&o.from)?;
    if let Some(r) = records.iter().find(|r| r.record.cluster_id != m.cluster_id) {
        return Err(store::error(
            store::E_VERIFY_FAILED,
            format!(
                "archive segment {} is of cluster {:?}, the backup of cluster {:?}",
                r.name, r.record.cluster_id, m.cluster_id
            ),
        ));
    }
    let applied = m.applied_log_id.index;
    let (entries, first_not) = archive::entries_until(&o.from, applied, until)?;
    std::fs::create_dir_all(beside).with_context(|| format!("creating {}", beside.display()))?;
    let replay = Replay {
        dir: beside.join(format!("db.replay-{}", store::nonce())),
    };
    let pb = bytes_bar(m.bytes_total, "copy", o.progress);
    let a = assemble(&o.from, m)?;
    copy_db_files(&a.path, &replay.dir, &pb)?;
    drop(a);
    pb.finish_and_clear();
    let (commands, _) = ops_of(&entries);
    let last_time = entries
        .iter()
        .filter_map(archive::entry_times)
        .map(|t| t.1)
        .max();
    let replay_bar = if o.progress {
        let pb = ProgressBar::new(entries.len() as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} entries ETA {eta}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message("replay");
        pb
    } else {
        ProgressBar::hidden()
    };
    let n_entries = entries.len() as u64;
    let summary = {
        let db = billdb_node::store::open_db(&replay.dir)
            .map_err(|e| anyhow!("opening the backup's copy to replay on: {e}"))?;
        // In steps, so the bar moves.
        let mut it = entries.into_iter().peekable();
        while it.peek().is_some() {
            let step: Vec<_> = it.by_ref().take(4096).collect();
            let n = step.len() as u64;
            billdb_node::store::state_machine::replay(
                &db,
                step,
                billdb_node::domain::levels::BUILD_OP_LEVEL,
                Default::default(),
            )
            .map_err(|e| anyhow!("replaying the archive: {e}"))?;
            replay_bar.inc(n);
        }
        db.flush_wal(true).map_err(|e| anyhow!("{e}"))?;
        billdb_node::backup::summarize(&db).map_err(|e| anyhow!("{e}"))?
    };
    replay_bar.finish_and_clear();
    let last_replayed_index = summary.applied.map_or(applied, |l| l.index);
    // What the archive holds after the point.
    let archive_last_index = records.last().map(|r| r.record.last_index);
    let mut after = Vec::new();
    if let Some(end) = archive_last_index
        && end > last_replayed_index
    {
        after = archive::entries_until(&o.from, last_replayed_index, Until::Index(end))?.0;
    }
    let (_, not_replayed_ops) = ops_of(&after);
    let first_not_replayed = first_not.map(|e| {
        let (commands, ops) = ops_of(std::slice::from_ref(&e));
        EntrySummary {
            index: archive::entry_index(&e),
            first_time: archive::entry_times(&e)
                .map(|t| billdb_node::api::validate::to_rfc3339(t.0)),
            commands,
            ops,
        }
    });
    let changes_after = if o.diff_after && !after.is_empty() {
        let scratch = Replay {
            dir: beside.join(format!("db.after-{}", store::nonce())),
        };
        let pb = bytes_bar(m.bytes_total, "copy", o.progress);
        copy_db_files(&replay.dir, &scratch.dir, &pb)?;
        pb.finish_and_clear();
        {
            let db = billdb_node::store::open_db(&scratch.dir)
                .map_err(|e| anyhow!("opening the scratch copy: {e}"))?;
            billdb_node::store::state_machine::replay(
                &db,
                after.clone(),
                billdb_node::domain::levels::BUILD_OP_LEVEL,
                Default::default(),
            )
            .map_err(|e| anyhow!("replaying the rest of the archive: {e}"))?;
            db.flush_wal(true).map_err(|e| anyhow!("{e}"))?;
        }
        let before = open_and_fingerprint(&replay.dir)?;
        let later = open_and_fingerprint(&scratch.dir)?;
        let (total, accounts) = account_differences(&before, &later, ACCOUNTS_LISTED_MAX);
        Some(AccountChanges {
            accounts_total: total,
            accounts,
        })
    } else {
        None
    };
    let point = PointInTime {
        until,
        backup_applied_index: applied,
        replayed_entries: n_entries,
        replayed_commands: commands,
        last_replayed_index,
        last_replayed_time: last_time.map(billdb_node::api::validate::to_rfc3339),
        first_not_replayed,
        not_replayed_entries: after.len() as u64,
        not_replayed_ops,
        archive_last_index,
        replayed_digest: summary.digest,
        replayed_fingerprints: summary.fingerprints,
        changes_after,
    };
    Ok((replay, point))
}

/// Where a node's database files come from.
enum FilesFrom<'a> {
    /// The backup's files (by the manifest, each re-hashed as copied).
    Backup(&'a Manifest),
    /// A replayed state's directory.
    Dir(&'a Path),
}

fn restore_one(
    o: &RestoreOpts,
    source: &FilesFrom<'_>,
    expected: &StateSummary,
    id: NodeId,
    data_dir: &Path,
) -> Result<NodeRestore> {
    if o.force && data_dir.exists() {
        for e in std::fs::read_dir(data_dir)? {
            let p = e?.path();
            if p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("db.replay-")
                    || n.to_string_lossy().starts_with("db.after-")
            }) {
                continue; // this run's own working copy
            }
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("removing {}", p.display()))?;
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let work = data_dir.join("db.restoring");
    let done = (|| -> Result<NodeRestore> {
        std::fs::create_dir_all(&work)?;
        match source {
            FilesFrom::Backup(m) => {
                let pb = bytes_bar(m.bytes_total, &format!("node {id}"), o.progress);
                for f in &m.files {
                    let src = store_path(&o.from, &f.sha256);
                    let dst = work.join(&f.name);
                    let mut input = std::fs::File::open(&src)
                        .with_context(|| format!("opening {}", src.display()))?;
                    let out = std::fs::File::create(&dst)
                        .with_context(|| format!("creating {}", dst.display()))?;
                    let mut w = store::Hashing::new(out);
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        use std::io::Read;
                        let n = input.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        w.write_all(&buf[..n])?;
                        pb.inc(n as u64);
                    }
                    ensure!(
                        w.hex() == f.sha256 && w.n == f.size,
                        "{} changed while it was being restored",
                        f.name
                    );
                    w.inner.sync_all()?;
                }
                pb.finish_and_clear();
            }
            FilesFrom::Dir(dir) => {
                let pb = bytes_bar(0, &format!("node {id}"), o.progress);
                copy_db_files(dir, &work, &pb)?;
                pb.finish_and_clear();
            }
        }
        fsync_dir(&work)?;
        let s = billdb_node::backup::rewrite_for_new_cluster(&work, id, &o.members, &o.cluster_id)
            .map_err(|e| anyhow!("preparing node {id}'s database: {e}"))?;
        // Read back what the node will start from.
        let check = {
            let db = billdb_node::store::checkpoint::open_read_only(&work)
                .map_err(|e| anyhow!("reopening node {id}'s database: {e}"))?;
            billdb_node::backup::summarize(&db).map_err(|e| anyhow!("{e}"))?
        };
        ensure!(
            s.digest == check.digest,
            "node {id}: the digest changed on reopening"
        );
        std::fs::rename(&work, data_dir.join("db"))?;
        fsync_dir(data_dir)?;
        Ok(NodeRestore {
            node: id,
            data_dir: data_dir.to_path_buf(),
            applied_index: check.applied.map(|l| l.index),
            digest_equal: check.digest == expected.digest,
            digest: check.digest,
            fingerprint_differences: fingerprint_differences(
                &expected.fingerprints,
                &check.fingerprints,
            ),
            account_differences: None,
        })
    })();
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    done
}

fn render_account(s: &mut String, d: &AccountDifference) {
    let show = |f: &Option<billdb_node::backup::AccountFingerprint>| match f {
        None => "absent".to_string(),
        Some(f) => {
            let kinds: Vec<String> = f
                .amounts_by_kind
                .iter()
                .map(|(k, a)| format!("{k} {a}"))
                .collect();
            format!(
                "balance {}, {} records ({})",
                f.balance,
                f.records,
                kinds.join(", ")
            )
        }
    };
    *s += &format!(
        "      {}: {} -> {}\n",
        d.account_id,
        show(&d.expected),
        show(&d.found)
    );
}

fn render_changes(s: &mut String, c: &AccountChanges) {
    for d in &c.accounts {
        render_account(s, d);
    }
    if c.accounts_total > c.accounts.len() as u64 {
        *s += &format!(
            "      … and {} more accounts (--json lists the first {})\n",
            c.accounts_total - c.accounts.len() as u64,
            c.accounts.len()
        );
    }
}

/// The text form of a restore report.
pub fn render_restore(r: &RestoreReport) -> String {
    let mut s = format!(
        "restore of backup {} (cluster {}) at applied index {} into NEW cluster {}: {}\n",
        r.backup_id,
        r.source_cluster_id.as_deref().unwrap_or("(no TLS)"),
        r.applied_index,
        r.cluster_id,
        if r.ok { "VERIFIED" } else { "MISMATCH" }
    );
    s += &format!("  manifest digest {}\n", r.manifest_digest);
    if let Some(p) = &r.point_in_time {
        s += &format!(
            "  point in time {}: backup at index {} + {} archived entries replayed ({} commands), through index {} (last command at {})\n",
            render_until(p.until),
            p.backup_applied_index,
            p.replayed_entries,
            p.replayed_commands,
            p.last_replayed_index,
            p.last_replayed_time.as_deref().unwrap_or("-")
        );
        s += &format!("  replayed digest {}\n", p.replayed_digest);
        match &p.first_not_replayed {
            Some(e) => {
                let ops: Vec<String> = e.ops.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
                s += &format!(
                    "  NOT replayed: entry {} on (first at {}: {}); {} archived entries after the point, commands: {}\n",
                    e.index,
                    e.first_time.as_deref().unwrap_or("-"),
                    ops.join(", "),
                    p.not_replayed_entries,
                    p.not_replayed_ops
                        .iter()
                        .map(|(k, n)| format!("{k} ×{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            None => s += "  the archive holds nothing after the point\n",
        }
        if let Some(c) = &p.changes_after {
            s += &format!(
                "  the entries after the point change {} accounts:\n",
                c.accounts_total
            );
            render_changes(&mut s, c);
        }
    }
    let against = if r.point_in_time.is_some() {
        "the replay"
    } else {
        "the manifest"
    };
    for n in &r.nodes {
        s += &format!(
            "  node {} ({}): digest {} to {against}'s, fingerprints {}\n",
            n.node,
            n.data_dir.display(),
            if n.digest_equal { "equal" } else { "DIFFERENT" },
            if n.fingerprint_differences.is_empty() {
                "equal to the cent".to_string()
            } else {
                n.fingerprint_differences.join("; ")
            }
        );
        if let Some(c) = &n.account_differences {
            s += &format!("    {} accounts differ:\n", c.accounts_total);
            render_changes(&mut s, c);
        }
    }
    let fps = match &r.point_in_time {
        Some(p) => &p.replayed_fingerprints,
        None => &r.fingerprints,
    };
    s += "  branch/utility: accounts, records, Σ balances, Σ amounts by kind\n";
    for (k, f) in fps {
        let kinds: Vec<String> = f
            .amounts_by_kind
            .iter()
            .map(|(kind, a)| format!("{kind} {a}"))
            .collect();
        s += &format!(
            "    {k}: {} accounts, {} records, Σ balances {}, {}\n",
            f.accounts,
            f.records,
            f.balances,
            kinds.join(", ")
        );
    }
    s
}

/// `id=1,raft=H:P,grpc=H:P,http=H:P` → the member.
pub fn member_of(addrs: &crate::admin::NodeAddrs) -> (NodeId, NodeInfo) {
    (
        addrs.id,
        NodeInfo {
            raft_addr: addrs.raft_addr.clone(),
            grpc_addr: addrs.grpc_addr.clone(),
            http_addr: addrs.http_addr.clone(),
        },
    )
}

/// The hex Ed25519 signature of `bytes` with the private key at `key`
/// (what `manifest.sig` holds).
pub fn sign_hex(key: &Path, bytes: &[u8]) -> Result<String> {
    Ok(hex::encode(read_signing_key(key)?.sign(bytes).to_bytes()))
}
