//! The `restore-rehearsal` drill: the newest backup (or a chosen one)
//! restored into a scratch cluster on this machine, as a real restore
//! would be done, and shown to serve the backed-up state.
//!
//! Steps, each timed: the backup verified deeply (every file's SHA-256, the
//! manifest's signature, the database opened and its digest and business
//! fingerprints recomputed); a new scratch cluster (its own cluster id,
//! `--scratch-nodes` members on loopback, TLS) given data directories by
//! `billdb restore`, which checks each against the manifest; its nodes
//! started; every node's state digest and fingerprints read over the API
//! and compared with the manifest, to the cent; one write (a drill account
//! and a payment) acknowledged and read back through every node. The
//! restore time (start to that first acknowledged write) is held against
//! the RTO objective, the backup's age against the RPO objective (a backup
//! older than `--max-backup-age-s` fails the rehearsal: it is what a real
//! restore would lose). When the production cluster is reachable, the
//! entries it committed since the backup are reported too, and the summary
//! is recorded there.
//!
//! May touch: the backup directory (read only), the scratch directory (made
//! and, unless kept, removed), the scratch cluster's processes, and the
//! production cluster only to read its status and record the summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{DRILL_BANK, DRILL_BRANCH, DRILL_TARIFF, Target, report, unix_ms};
use crate::backup::{self, RestoreOpts, VerifyOpts};
use crate::local::{LocalCluster, RaftTimings};
use billdb_node::backup::{Fingerprints, fingerprint_differences};
use billdb_node::types::NodeInfo;

/// The scenario's name in reports and in the cluster's record.
pub const SCENARIO: &str = "restore-rehearsal";

/// Most members a scratch cluster may have.
pub const MAX_SCRATCH_NODES: usize = 7;

#[derive(Debug, Clone)]
pub struct RehearsalOpts {
    pub backup_dir: PathBuf,
    /// Default: the newest backup.
    pub backup_id: Option<String>,
    /// The key the backups are signed with (`.pub`).
    pub backup_public_key: PathBuf,
    /// Where the scratch cluster lives: a directory that does not exist
    /// yet or is empty (it is removed afterwards unless kept).
    pub scratch_dir: PathBuf,
    pub scratch_base_port: u16,
    pub scratch_nodes: usize,
    pub node_bin: PathBuf,
    /// Leave the scratch cluster's directory (its processes are stopped).
    pub keep_scratch: bool,
    /// RPO objective: the oldest the restored backup may be.
    pub max_backup_age: Duration,
}

struct Steps {
    t0: Instant,
    list: Vec<Value>,
}

impl Steps {
    fn ms(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
    /// A step begins: shown on stderr (progress) and kept for the report.
    fn begin(&mut self, what: &str) {
        eprintln!("[{:>6.1}s] phase: {what}", self.t0.elapsed().as_secs_f64());
        let t = self.ms();
        self.list
            .push(json!({"t_ms": t, "action": what, "node": 0, "fault": false}));
    }
}

/// Run the rehearsal; the signed report (PASS or FAILED). An error only
/// when the rehearsal could not be attempted (bad options, no backup).
pub fn rehearse(
    production: Option<&Target>,
    o: &super::RunOpts,
    r: &RehearsalOpts,
) -> Result<report::Report> {
    if !(1..=MAX_SCRATCH_NODES).contains(&r.scratch_nodes) {
        bail!(
            "INVALID_ARGUMENT: --scratch-nodes {}: 1..={MAX_SCRATCH_NODES}",
            r.scratch_nodes
        );
    }
    let occupied = std::fs::read_dir(&r.scratch_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied || r.scratch_dir.is_file() {
        bail!(
            "INVALID_ARGUMENT: --scratch-dir {} is not empty: give the rehearsal a new or empty directory",
            r.scratch_dir.display()
        );
    }
    backup::read_verifying_key(&r.backup_public_key)?;
    let started_ms = unix_ms();
    let drill_id = format!("D{started_ms}");
    let mut steps = Steps {
        t0: Instant::now(),
        list: Vec::new(),
    };
    let mut failures: Vec<String> = Vec::new();
    let production_before = production.and_then(|t| {
        let l = t.leader()?;
        t.status(l)
    });

    // 1. The backup, verified deeply.
    steps.begin("verify the backup");
    let (vr, manifest) = backup::verify(&VerifyOpts {
        dir: r.backup_dir.clone(),
        backup_id: r.backup_id.clone(),
        public_key: r.backup_public_key.clone(),
        deep: true,
        progress: false,
    })?;
    let verify_ms = steps.ms();
    if !vr.ok {
        failures.extend(vr.problems.iter().map(|p| format!("backup: {p}")));
    }
    let age_ms = manifest
        .as_ref()
        .map(|m| (started_ms.max(0) as u64).saturating_sub(m.created_unix_ms));
    let entries_since = match (&manifest, &production_before) {
        (Some(m), Some(st)) => st["committed_index"]
            .as_u64()
            .map(|c| c.saturating_sub(m.applied_log_id.index)),
        _ => None,
    };
    let max_age_ms = u64::try_from(r.max_backup_age.as_millis()).unwrap_or(u64::MAX);
    match age_ms {
        Some(a) if a > max_age_ms => failures.push(format!(
            "RPO: the backup is {} s old (objective: at most {} s)",
            a / 1000,
            max_age_ms / 1000
        )),
        _ => {}
    }

    // 2.–4. Restore into a scratch cluster, start it, check it, write.
    let mut scratch = Value::Null;
    let mut restore_ms = None;
    let mut ready_ms = None;
    let mut first_write_ms = None;
    if let (true, Some(m)) = (vr.ok, manifest.as_ref()) {
        match restore_and_check(r, &drill_id, m, &mut steps) {
            Ok(s) => {
                restore_ms = s.restore_ms;
                ready_ms = s.ready_ms;
                first_write_ms = s.first_write_ms;
                failures.extend(s.failures.iter().cloned());
                scratch = s.detail;
            }
            Err(e) => failures.push(format!("restore: {e:#}")),
        }
    }

    let rto_ms = u64::try_from(o.rto.as_millis()).unwrap_or(u64::MAX);
    match first_write_ms {
        Some(t) if t > rto_ms => failures.push(format!(
            "RTO: the restored cluster took its first write {t} ms after the start (objective {rto_ms} ms)"
        )),
        Some(_) => {}
        None => failures.push("RTO: the restored cluster took no write".into()),
    }
    let result = if failures.is_empty() {
        "PASS"
    } else {
        "FAILED"
    };
    let finished_ms = unix_ms();
    let digests_equal = scratch["digests_equal"].as_bool().unwrap_or(false);
    let data = json!({
        "format": report::FORMAT,
        "drill_id": drill_id,
        "scenario": SCENARIO,
        "executor": "scratch",
        "operator": o.operator,
        "started_ms": started_ms,
        "finished_ms": finished_ms,
        "started_utc": report::utc(started_ms),
        "finished_utc": report::utc(finished_ms),
        "tool_version": env!("CARGO_PKG_VERSION"),
        "cluster": {
            "version": production_before.as_ref().and_then(|s| s.get("version").cloned()),
            "leader_before": production_before.as_ref().and_then(|s| s.get("leader_id").cloned()),
            "term_before": production_before.as_ref().and_then(|s| s.get("term").cloned()),
            "members": production.map(|t| t.nodes.iter().map(|(id, a)| json!({"id": id, "http_addr": a})).collect::<Vec<_>>()),
            "committed_index": production_before.as_ref().and_then(|s| s.get("committed_index").cloned()),
        },
        "backup": {
            "dir": r.backup_dir.display().to_string(),
            "backup_id": vr.backup_id,
            "source_cluster_id": manifest.as_ref().map(|m| m.cluster_id.clone()),
            "source_node": manifest.as_ref().map(|m| m.source_node),
            "created_at": manifest.as_ref().map(|m| m.created_at.clone()),
            "applied_index": vr.applied_index,
            "digest": vr.digest_manifest,
            "files": vr.files,
            "bytes": vr.bytes,
            "signature_ok": vr.signature_ok,
            "deep_verified": vr.ok && vr.fingerprints_checked,
            "problems": vr.problems,
            "age_s": age_ms.map(|a| a / 1000),
            "entries_committed_since": entries_since,
        },
        "objectives": {"rto_write_gap_ms": rto_ms, "rpo_backup_age_s": max_age_ms / 1000},
        "actions": steps.list,
        "measured": {
            // The restore's RTO: start → first write acknowledged by the
            // restored cluster; health: start → every scratch node ready.
            "write_gap_ms": first_write_ms,
            "read_gap_ms": ready_ms,
            "health_ms": ready_ms,
            "verify_ms": verify_ms,
            "restore_ms": restore_ms,
            "rto_pass": first_write_ms.is_some_and(|t| t <= rto_ms),
            "rpo_pass": age_ms.is_some_and(|a| a <= max_age_ms),
        },
        "workload": {"writes": 1, "acknowledged": u64::from(first_write_ms.is_some())},
        "scratch": scratch,
        "verification": {
            "lost": if digests_equal { Some(0) } else { None },
            "duplicated": if digests_equal { Some(0) } else { None },
            "digests_equal": digests_equal,
            "fingerprints_equal": scratch["fingerprints_equal"],
        },
        "timeline": [],
        "result": result,
        "failures": failures,
    });
    let rep = report::Report::sign(data, &o.private_key)?;
    if o.record
        && let Some(t) = production
    {
        super::record_summary(t, &rep)
            .context("writing the rehearsal's summary into the cluster")?;
    }
    Ok(rep)
}

struct Scratch {
    restore_ms: Option<u64>,
    ready_ms: Option<u64>,
    first_write_ms: Option<u64>,
    failures: Vec<String>,
    detail: Value,
}

fn restore_and_check(
    r: &RehearsalOpts,
    drill_id: &str,
    m: &backup::Manifest,
    steps: &mut Steps,
) -> Result<Scratch> {
    let cluster_id = format!("rehearsal-{}", drill_id.to_ascii_lowercase());
    steps.begin("make the scratch cluster");
    // Declared first, dropped last: the directory goes after the processes.
    let _cleanup = Cleanup {
        dir: (!r.keep_scratch).then(|| r.scratch_dir.clone()),
    };
    let c = LocalCluster::create_named(
        &r.scratch_dir,
        &r.node_bin,
        r.scratch_base_port,
        r.scratch_nodes,
        RaftTimings::default(),
        None,
        Some(&cluster_id),
    )?;
    // Its processes never outlive the rehearsal.
    c.set_kill_on_drop(true);
    let mut members = BTreeMap::new();
    let mut data_dirs = BTreeMap::new();
    for n in c.node_ids() {
        let s = c.node(n).context("scratch node")?;
        members.insert(
            n,
            NodeInfo {
                raft_addr: s.raft_addr.clone(),
                grpc_addr: s.grpc_addr.clone(),
                http_addr: s.http_addr.clone(),
            },
        );
        data_dirs.insert(n, c.data_dir(n));
    }
    steps.begin("restore the backup into it");
    let rr = backup::restore(&RestoreOpts {
        from: r.backup_dir.clone(),
        backup_id: Some(m.backup_id.clone()),
        public_key: r.backup_public_key.clone(),
        cluster_id: cluster_id.clone(),
        members,
        data_dirs,
        force: false,
        progress: false,
        until: None,
        diff_after: false,
    })?;
    let restore_ms = Some(steps.ms());
    let mut failures = Vec::new();
    if !rr.ok {
        for n in &rr.nodes {
            if !n.digest_equal {
                failures.push(format!(
                    "restored node {}: digest differs from the manifest",
                    n.node
                ));
            }
            for d in &n.fingerprint_differences {
                failures.push(format!("restored node {}: {d}", n.node));
            }
        }
    }
    steps.begin("start the scratch cluster");
    c.start_all()?;
    c.wait_all_healthy(Duration::from_secs(60))?;
    let leader = c.wait_leader(Duration::from_secs(60))?;
    let ready_ms = Some(steps.ms());

    // Every node serves the backed-up state: digest and fingerprints.
    steps.begin("compare every node with the manifest");
    let mut nodes = Vec::new();
    let mut digests_equal = true;
    let mut fingerprints_equal = true;
    for n in c.node_ids() {
        let v = c
            .http_client(n, Duration::from_secs(30))?
            .with_token(Some(c.token("auditor")?))
            .get("/v1/cluster/fingerprints")
            .with_context(|| format!("scratch node {n}: fingerprints"))?;
        let digest = v["digest"].as_str().unwrap_or("").to_string();
        let fps: Fingerprints = serde_json::from_value(v["fingerprints"].clone())
            .with_context(|| format!("scratch node {n}: fingerprints decode"))?;
        let diffs = fingerprint_differences(&m.fingerprints, &fps);
        let equal = digest == m.digest;
        if !equal {
            failures.push(format!(
                "scratch node {n}: state digest {digest} != the backup's {}",
                m.digest
            ));
        }
        for d in &diffs {
            failures.push(format!("scratch node {n}: {d}"));
        }
        digests_equal &= equal;
        fingerprints_equal &= diffs.is_empty();
        nodes.push(json!({"node": n, "digest_equal": equal, "fingerprint_differences": diffs}));
    }

    // It takes writes: a drill account and a payment, read back everywhere.
    steps.begin("write to the restored cluster");
    let ops = c
        .http_client(leader, Duration::from_secs(30))?
        .with_token(Some(c.token("ops")?));
    let account = format!("{drill_id}-R");
    let write = (|| -> Result<()> {
        ops.put_json(
            &format!("/v1/tariffs/{DRILL_TARIFF}"),
            &json!({"request_id": format!("{drill_id}-r-tariff"), "kind": "flat", "price": "1.00",
                    "effective_from": "2020-01-01T00:00:00Z"}),
        )?;
        ops.post(
            "/v1/accounts",
            &json!({"request_id": format!("{account}-open"), "account_id": account,
                    "name": "restore rehearsal", "branch": DRILL_BRANCH, "utility": "electricity",
                    "tariff_id": DRILL_TARIFF}),
        )?;
        ops.post(
            "/v1/payments",
            &json!({"request_id": format!("{account}-pay"), "account_id": account,
                    "amount": "1.00", "bank_code": DRILL_BANK, "bank_ref": format!("{account}-pay")}),
        )?;
        Ok(())
    })();
    let first_write_ms = match write {
        Ok(()) => Some(steps.ms()),
        Err(e) => {
            failures.push(format!("the restored cluster refused a write: {e:#}"));
            None
        }
    };
    let mut read_back: Vec<Value> = Vec::new();
    if first_write_ms.is_some() {
        for n in c.node_ids() {
            let v = c
                .http_client(n, Duration::from_secs(30))?
                .with_token(Some(c.token("ops")?))
                .get(&format!("/v1/accounts/{account}"));
            let balance = v
                .as_ref()
                .ok()
                .and_then(|v| v["balance"].as_str().map(str::to_string));
            if balance.as_deref() != Some("1.00") {
                failures.push(format!(
                    "scratch node {n}: the rehearsal's account reads {balance:?}, not 1.00"
                ));
            }
            read_back.push(json!({"node": n, "balance": balance}));
        }
    }
    steps.begin("stop the scratch cluster");
    c.down()?;
    Ok(Scratch {
        restore_ms,
        ready_ms,
        first_write_ms,
        failures,
        detail: json!({
            "cluster_id": cluster_id,
            "nodes": r.scratch_nodes,
            "base_port": r.scratch_base_port,
            "dir": r.scratch_dir.display().to_string(),
            "kept": r.keep_scratch,
            "leader": leader,
            "restore_report_ok": rr.ok,
            "per_node": nodes,
            "digests_equal": digests_equal,
            "fingerprints_equal": fingerprints_equal,
            "write_account": account,
            "read_back": read_back,
        }),
    })
}

/// Removes the scratch directory when the rehearsal ends, however it ends.
struct Cleanup {
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
