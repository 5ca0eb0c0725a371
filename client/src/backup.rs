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
use billdb_node::backup::store::{self, HoldSource, check_marker, fsync_dir, store_path};
use billdb_node::backup::{FileEntry, Fingerprints, Hold, fingerprint_differences};
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
    let entry = client(&o.endpoint, o, o.timeout);
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
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup_id: String,
    pub source_cluster_id: Option<String>,
    pub cluster_id: String,
    pub applied_index: u64,
    pub manifest_digest: String,
    pub fingerprints: Fingerprints,
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
    let (v, m) = verify(&VerifyOpts {
        dir: o.from.clone(),
        backup_id: o.backup_id.clone(),
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
    // Room for every node's copy, per filesystem, before anything is written.
    let mut per_fs: BTreeMap<u64, (PathBuf, u64)> = BTreeMap::new();
    for d in o.data_dirs.values() {
        use std::os::unix::fs::MetadataExt;
        let existing = d.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        let dev = std::fs::metadata(existing)
            .with_context(|| format!("reading {}", existing.display()))?
            .dev();
        let e = per_fs.entry(dev).or_insert_with(|| (d.clone(), 0));
        e.1 = e.1.saturating_add(m.bytes_total);
    }
    for (d, need) in per_fs.values() {
        store::ensure_space(d, *need, "the restore")?;
    }
    let mut nodes = Vec::new();
    for (id, data_dir) in &o.data_dirs {
        match restore_one(o, &m, *id, data_dir) {
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
    let ok = nodes
        .iter()
        .all(|n| n.digest_equal && n.fingerprint_differences.is_empty());
    Ok(RestoreReport {
        backup_id: m.backup_id.clone(),
        source_cluster_id: m.cluster_id.clone(),
        cluster_id: o.cluster_id.clone(),
        applied_index: m.applied_log_id.index,
        manifest_digest: m.digest.clone(),
        fingerprints: m.fingerprints.clone(),
        nodes,
        ok,
        ms: started.elapsed().as_millis() as u64,
    })
}

fn restore_one(o: &RestoreOpts, m: &Manifest, id: NodeId, data_dir: &Path) -> Result<NodeRestore> {
    if o.force && data_dir.exists() {
        for e in std::fs::read_dir(data_dir)? {
            let p = e?.path();
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
        let pb = bytes_bar(m.bytes_total, &format!("node {id}"), o.progress);
        for f in &m.files {
            let src = store_path(&o.from, &f.sha256);
            let dst = work.join(&f.name);
            let mut input =
                std::fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
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
            digest_equal: check.digest == m.digest,
            digest: check.digest,
            fingerprint_differences: fingerprint_differences(&m.fingerprints, &check.fingerprints),
        })
    })();
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    done
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
    for n in &r.nodes {
        s += &format!(
            "  node {} ({}): digest {}, fingerprints {}\n",
            n.node,
            n.data_dir.display(),
            if n.digest_equal { "equal" } else { "DIFFERENT" },
            if n.fingerprint_differences.is_empty() {
                "equal to the cent".to_string()
            } else {
                n.fingerprint_differences.join("; ")
            }
        );
    }
    s += "  branch/utility: accounts, records, Σ balances, Σ amounts by kind\n";
    for (k, f) in &r.fingerprints {
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
