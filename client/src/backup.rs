//! Backups, CLI side: `billdb backup keygen | create | verify | list` and
//! `billdb restore` (the node side is `billdb_node::backup`).
//!
//! A backup destination `DIR` holds:
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
//!
//! Everything is written under a temporary name (`.…part`, `.…tmp`),
//! fsynced and renamed, so an interrupted run leaves nothing a later run
//! takes for a good file or backup.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use billdb_node::backup::{FileEntry, Fingerprints, Hold, fingerprint_differences};
use billdb_node::types::{LogId, NodeId, NodeInfo, Nodes};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admin::AdminClient;
use crate::tls::ClientTls;

/// Format of the destination layout and the manifest this build writes.
pub const BACKUP_FORMAT: u32 = 1;
pub const MARKER_FILE: &str = "billdb-backup.json";
pub const FILES_DIR: &str = "files";
pub const BACKUPS_DIR: &str = "backups";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SIGNATURE_FILE: &str = "manifest.sig";
/// Longest wait for a node to make a hold (a flush and hashing every file).
const HOLD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Bound on one file's download.
const FILE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// One backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    /// The cluster id of the source (`None`: a cluster without TLS).
    pub cluster_id: Option<String>,
    /// The database's data format (`billdb_node::store::DATA_FORMAT`).
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
    ensure!(
        !private.exists(),
        "{} already exists: a key is never overwritten",
        private.display()
    );
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

fn read_hex_32(path: &Path, what: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .map_err(|_| anyhow!("{} is not a billdb backup {what} (not hex)", path.display()))?;
    bytes.try_into().map_err(|_| {
        anyhow!(
            "{} is not a billdb backup {what} (not 32 bytes)",
            path.display()
        )
    })
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_hex_32(path, "private key")?))
}

pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey> {
    VerifyingKey::from_bytes(&read_hex_32(path, "public key")?)
        .map_err(|e| anyhow!("{} is not a valid Ed25519 public key: {e}", path.display()))
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

// ---- the destination --------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Check that `dir` is a billdb backup destination this build reads.
fn check_marker(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow!(
            "{} is not a billdb backup (no {MARKER_FILE})",
            dir.display()
        )
    })?;
    let m: Marker = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not a billdb backup marker: {e}", path.display()))?;
    ensure!(
        m.format <= BACKUP_FORMAT,
        "{} was written by a newer billdb (backup format {}; this build reads up to {BACKUP_FORMAT})",
        dir.display(),
        m.format
    );
    Ok(())
}

/// Open the destination, making it when it is new or empty.
fn open_destination(dir: &Path) -> Result<()> {
    if dir.join(MARKER_FILE).exists() {
        return check_marker(dir);
    }
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty and is not a billdb backup: choose an empty or new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join(FILES_DIR))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join(BACKUPS_DIR))?;
    let tmp = dir.join(format!(".{MARKER_FILE}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec(&Marker {
            format: BACKUP_FORMAT,
        })?,
    )?;
    std::fs::rename(&tmp, dir.join(MARKER_FILE))?;
    fsync_dir(dir)
}

fn store_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(FILES_DIR).join(sha256)
}

/// Whether the store holds this file already (same size; its content was
/// checked when it was stored).
fn held(dir: &Path, f: &FileEntry) -> bool {
    std::fs::metadata(store_path(dir, &f.sha256)).is_ok_and(|m| m.is_file() && m.len() == f.size)
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W: Write> {
    inner: W,
    h: Sha256,
    n: u64,
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
    for e in std::fs::read_dir(dir.join(BACKUPS_DIR))
        .with_context(|| format!("reading {}", dir.join(BACKUPS_DIR).display()))?
    {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
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

/// The node the newest backup in `dir` was taken from (unsigned hint:
/// only a preference).
fn newest_source(dir: &Path) -> Option<NodeId> {
    let id = list_ids(dir).ok()?.pop()?;
    let bytes = std::fs::read(dir.join(BACKUPS_DIR).join(id).join(MANIFEST_FILE)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["source_node"].as_u64()
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

pub fn create(o: &CreateOpts) -> Result<CreateReport> {
    let started = Instant::now();
    let key = read_signing_key(&o.private_key)?;
    open_destination(&o.to)?;
    let prefer = newest_source(&o.to);
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
    ensure!(
        hold.data_format == billdb_node::store::DATA_FORMAT,
        "node {source_node} runs data format {}, this billdb reads format {}: use the billdb of the cluster's release",
        hold.data_format,
        billdb_node::store::DATA_FORMAT
    );
    let applied = hold
        .summary
        .applied
        .context("the node has applied nothing yet: nothing to back up")?;
    let created_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let created_at = billdb_node::api::validate::to_rfc3339(created_unix_ms as i64);

    let missing: Vec<&FileEntry> = hold.files.iter().filter(|f| !held(&o.to, f)).collect();
    let bytes_copied: u64 = missing.iter().map(|f| f.size).sum();
    let pb = bytes_bar(bytes_copied, "copy", o.progress);
    let dl = client(&source_addr, o, FILE_TIMEOUT);
    for f in &missing {
        fetch_file(&dl, &o.to, &hold.hold_id, f, &pb)?;
    }
    pb.finish_and_clear();
    fsync_dir(&o.to.join(FILES_DIR))?;

    let mut backup_id = format!("{}-{:012}", compact_time(&created_at), applied.index);
    let mut n = 2;
    while o.to.join(BACKUPS_DIR).join(&backup_id).exists() {
        backup_id = format!("{}-{:012}-{n}", compact_time(&created_at), applied.index);
        n += 1;
    }
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        backup_id: backup_id.clone(),
        cluster_id: v["cluster_id"].as_str().map(str::to_string),
        data_format: hold.data_format,
        source_node,
        applied_log_id: applied,
        created_at,
        created_unix_ms,
        bytes_total: hold.files.iter().map(|f| f.size).sum(),
        files: hold.files.clone(),
        digest: hold.summary.digest.clone(),
        fingerprints: hold.summary.fingerprints.clone(),
    };
    write_manifest(&o.to, &manifest, &key)?;
    Ok(CreateReport {
        backup_id,
        dir: o.to.clone(),
        source_node,
        source_was_leader,
        applied_index: applied.index,
        files: manifest.files.len(),
        files_copied: missing.len(),
        bytes_total: manifest.bytes_total,
        bytes_copied,
        digest: manifest.digest,
        ms: started.elapsed().as_millis() as u64,
    })
}

/// Download one file of a hold into the store: `.…part`, checked against
/// its size and SHA-256, fsynced, renamed to its hash.
fn fetch_file(
    dl: &AdminClient,
    dir: &Path,
    hold_id: &str,
    f: &FileEntry,
    pb: &ProgressBar,
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
        .join(format!(".{}.{}.part", f.sha256, std::process::id()));
    let file =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut w = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        h: Sha256::new(),
        n: 0,
    };
    let got = dl.download(
        &format!("/v1/backup/holds/{hold_id}/files/{}", f.name),
        &mut w,
        &mut |n| pb.inc(n),
    );
    let check = (|| -> Result<()> {
        got.with_context(|| format!("downloading {}", f.name))?;
        let sha = hex::encode(w.h.clone().finalize());
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
    let tmp = backups.join(format!(".{}.tmp", m.backup_id));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let write = |name: &str, content: &[u8]| -> Result<()> {
        let p = tmp.join(name);
        let mut f =
            std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        f.write_all(content)?;
        f.sync_all()?;
        Ok(())
    };
    write(MANIFEST_FILE, &bytes)?;
    write(
        SIGNATURE_FILE,
        format!("{}\n", hex::encode(sig.to_bytes())).as_bytes(),
    )?;
    fsync_dir(&tmp)?;
    std::fs::rename(&tmp, backups.join(&m.backup_id))?;
    fsync_dir(&backups)
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
    ensure!(
        billdb_node::backup::safe_name(backup_id) && bdir.is_dir(),
        "{} holds no backup {backup_id:?}",
        dir.display()
    );
    let bytes = std::fs::read(bdir.join(MANIFEST_FILE))
        .with_context(|| format!("reading the manifest of backup {backup_id}"))?;
    // The format first, for a clear message on a newer backup.
    let loose: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!("backup {backup_id}: {MANIFEST_FILE} is not a billdb manifest: {e}")
    })?;
    let format = loose["format"].as_u64().unwrap_or(0);
    ensure!(
        format <= BACKUP_FORMAT as u64,
        "backup {backup_id} was written by a newer billdb (manifest format {format}; this build reads up to {BACKUP_FORMAT})"
    );
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
        None => list_ids(dir)?
            .pop()
            .ok_or_else(|| anyhow!("{} holds no backup yet", dir.display())),
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
    ensure!(
        billdb_api::identity::check_name(&o.cluster_id).is_ok(),
        "--to-cluster {:?}: a cluster id is a-z, 0-9 and '-'",
        o.cluster_id
    );
    ensure!(!o.members.is_empty(), "no --member given");
    ensure!(!o.data_dirs.is_empty(), "no --data-dir given");
    for id in o.data_dirs.keys() {
        ensure!(
            o.members.contains_key(id),
            "--data-dir for node {id}, which is not a --member"
        );
    }
    for (id, d) in &o.data_dirs {
        ensure!(
            o.force || is_empty_dir(d)?,
            "the data directory of node {id} ({}) is not empty: refusing to restore over it (--force replaces it)",
            d.display()
        );
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
        _ => bail!(
            "backup {} does not verify; nothing restored:\n{}",
            v.backup_id,
            v.problems.join("\n")
        ),
    };
    ensure!(
        m.cluster_id.as_deref() != Some(o.cluster_id.as_str()),
        "--to-cluster {} is the backup's own cluster id: a restore makes a NEW cluster, give it a new id",
        o.cluster_id
    );
    let mut nodes = Vec::new();
    for (id, data_dir) in &o.data_dirs {
        nodes.push(restore_one(o, &m, *id, data_dir)?);
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
            let mut w = Hashing {
                inner: out,
                h: Sha256::new(),
                n: 0,
            };
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
                hex::encode(w.h.clone().finalize()) == f.sha256 && w.n == f.size,
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
