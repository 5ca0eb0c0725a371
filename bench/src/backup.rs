//! `backup`: backups on a loaded cluster, what an operator plans with
//! (issue item "bench 7"): the purchase p99 without and during a full
//! backup (side by side, one run), the full backup's time and size, an
//! incremental backup after `--incremental-after-s` of purchases (time,
//! bytes copied against the full size), a deep verify's time, a restore
//! into a new cluster until it takes its first write (restore to
//! serving), and a point-in-time restore's replay rate (the log archive of
//! the purchases, replayed on the backup).
//!
//! Uses the `billdb backup` / `billdb restore` library code as the CLI
//! does. Touches the cluster over HTTP, the destination `--to`, and a
//! scratch cluster under `--scratch-dir` on `--scratch-base-port` (stopped
//! and removed at the end).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use billdb_client::backup::{self, CreateOpts, RestoreOpts, VerifyOpts};
use billdb_client::local::{LocalCluster, RaftTimings};
use billdb_node::types::NodeInfo;
use serde_json::{Value, json};

use crate::cluster::{Target, TargetArgs};
use crate::load::DataArgs;
use crate::workloads::{self, RunArgs, Workload};

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// The backup destination (new or empty; its keys go to `<to>.keys/`).
    #[arg(long)]
    pub to: PathBuf,
    /// Purchase clients of the load runs.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Length of each p99 run (without a backup, then during one).
    #[arg(long, default_value_t = 30)]
    pub duration_s: u64,
    /// Purchases between the full and the incremental backup (s).
    #[arg(long, default_value_t = 600)]
    pub incremental_after_s: u64,
    /// Where the restored scratch cluster lives (new or empty).
    #[arg(long)]
    pub scratch_dir: PathBuf,
    #[arg(long, default_value_t = 12800)]
    pub scratch_base_port: u16,
    #[arg(long)]
    pub json: bool,
}

fn purchase_run(a: &BackupArgs, secs: u64) -> anyhow::Result<Value> {
    workloads::run(RunArgs {
        target: a.target.clone(),
        data: a.data.clone(),
        workload: Workload::Purchase,
        clients: a.clients,
        duration_s: secs,
        node: None,
        hot_accounts: None,
        json: true,
    })
}

fn p99_ms(v: &Value) -> f64 {
    v["ops"]["purchase"]["p99_ms"].as_f64().unwrap_or(f64::NAN)
}

fn ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub fn run(a: BackupArgs) -> anyhow::Result<Value> {
    let target = Target::resolve(&a.target)?;
    let cluster = target
        .cluster
        .as_ref()
        .context("backup needs --dir (a local cluster: its CA, tokens and node binary)")?;
    let empty = std::fs::read_dir(&a.scratch_dir).map_or(true, |mut d| d.next().is_none());
    anyhow::ensure!(
        empty,
        "--scratch-dir {} is not empty",
        a.scratch_dir.display()
    );
    let keys = PathBuf::from(format!("{}.keys", a.to.display()));
    std::fs::create_dir_all(&keys)?;
    let (private, public) = backup::keygen(&keys.join("bench"))?;
    let leader = target.leader(Duration::from_secs(10))?;
    let create = || CreateOpts {
        endpoint: cluster.http_url(leader).unwrap_or_default(),
        tls: target.tls.clone(),
        token: cluster.token("ops").ok(),
        to: a.to.clone(),
        private_key: private.clone(),
        from_leader: false,
        progress: false,
        timeout: Duration::from_secs(30),
    };

    // 1. Purchase p99 without a backup, then with a full backup started
    //    one second into the same kind of run.
    eprintln!(
        "backup bench: {} s of purchases without a backup",
        a.duration_s
    );
    let without = purchase_run(&a, a.duration_s)?;
    eprintln!(
        "backup bench: {} s of purchases during a full backup",
        a.duration_s
    );
    let (during, full, full_ms) = std::thread::scope(|s| {
        let load = s.spawn(|| purchase_run(&a, a.duration_s));
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        let full = backup::create(&create());
        let full_ms = ms(t);
        (load.join(), full, full_ms)
    });
    let during = during.map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    let full = full?;
    let backup_within_load = full_ms + 1000 <= a.duration_s * 1000;

    // 2. Purchases, then an incremental backup.
    eprintln!(
        "backup bench: {} s of purchases, then an incremental backup",
        a.incremental_after_s
    );
    let between = purchase_run(&a, a.incremental_after_s)?;
    let t = Instant::now();
    let incr = backup::create(&create())?;
    let incr_ms = ms(t);

    // 3. A deep verify of the incremental one.
    let t = Instant::now();
    let (v, _) = backup::verify(&VerifyOpts {
        dir: a.to.clone(),
        backup_id: Some(incr.backup_id.clone()),
        public_key: public.clone(),
        deep: true,
        progress: false,
    })?;
    let verify_ms = ms(t);
    anyhow::ensure!(v.ok, "the backup does not verify: {:?}", v.problems);

    // 4. The log archive since the full backup, replayed on it (point in
    //    time), then the newest backup restored into a new cluster until it
    //    takes a write.
    let t = Instant::now();
    let archived = billdb_client::archive::run(&billdb_client::archive::ArchiveOpts {
        conn: create(),
        follow: false,
        interval: Duration::from_secs(1),
        follow_for: None,
    })?;
    let archive_ms = ms(t);
    let scratch = LocalCluster::create_named(
        &a.scratch_dir,
        &cluster.node_bin(),
        a.scratch_base_port,
        5,
        RaftTimings::default(),
        None,
        Some("bench-restored"),
    )?;
    scratch.set_kill_on_drop(true);
    let members: std::collections::BTreeMap<u64, NodeInfo> = scratch
        .node_ids()
        .into_iter()
        .map(|n| {
            let s = scratch.node(n)?;
            Ok((
                n,
                NodeInfo {
                    raft_addr: s.raft_addr.clone(),
                    grpc_addr: s.grpc_addr.clone(),
                    http_addr: s.http_addr.clone(),
                },
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let pit_dir = a.scratch_dir.join("point-in-time");
    let end = archived.last_index.context("the archive holds nothing")?;
    let t = Instant::now();
    let pit = backup::restore(&RestoreOpts {
        from: a.to.clone(),
        backup_id: Some(full.backup_id.clone()),
        public_key: public.clone(),
        cluster_id: "bench-pit".into(),
        members: members.clone(),
        data_dirs: [(1u64, pit_dir.join("n1"))].into_iter().collect(),
        force: false,
        progress: false,
        until: Some(billdb_node::backup::archive::Until::Index(end)),
        diff_after: false,
    })?;
    let pit_ms = ms(t);
    anyhow::ensure!(pit.ok, "the point-in-time restore does not verify");
    std::fs::remove_dir_all(&pit_dir).with_context(|| format!("removing {}", pit_dir.display()))?;
    let replayed = pit.point_in_time.as_ref().map_or(0, |p| p.replayed_entries);
    let replayed_commands = pit
        .point_in_time
        .as_ref()
        .map_or(0, |p| p.replayed_commands);

    let t = Instant::now();
    let restored = backup::restore(&RestoreOpts {
        from: a.to.clone(),
        backup_id: Some(incr.backup_id.clone()),
        public_key: public.clone(),
        cluster_id: "bench-restored".into(),
        members,
        data_dirs: scratch
            .node_ids()
            .into_iter()
            .map(|n| (n, scratch.data_dir(n)))
            .collect(),
        force: false,
        progress: false,
        until: None,
        diff_after: false,
    })?;
    anyhow::ensure!(restored.ok, "the restore does not verify");
    let restore_files_ms = ms(t);
    scratch.start_all()?;
    let l = scratch.wait_leader(Duration::from_secs(600))?;
    let h = scratch
        .http_client(l, Duration::from_secs(30))?
        .with_token(Some(scratch.token("ops")?));
    let mut first_write = None;
    while first_write.is_none() && t.elapsed() < Duration::from_secs(600) {
        let r = h.post(
            "/v1/accounts",
            &json!({"request_id": "bench-restored-1", "account_id": "BENCH-RESTORED",
                "name": "restore check", "branch": "B01", "utility": "electricity",
                "tariff_id": "T1"}),
        );
        match r {
            Ok(_) => first_write = Some(ms(t)),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let _ = scratch.down();
    let _ = std::fs::remove_dir_all(&a.scratch_dir);

    let (pw, pd) = (p99_ms(&without), p99_ms(&during));
    Ok(json!({
        "bench": "backup",
        "dataset": {"accounts": a.data.accounts, "years": a.data.years, "seed": a.data.seed},
        "clients": a.clients,
        "purchase_p99_ms": {"without_backup": pw, "during_backup": pd, "ratio": pd / pw,
            "backup_within_the_load": backup_within_load},
        "purchases_per_s": {"without_backup": without["ops"]["purchase"]["ops_per_s"],
            "during_backup": during["ops"]["purchase"]["ops_per_s"]},
        "full": {"ms": full_ms, "bytes": full.bytes_total, "files": full.files,
            "applied_index": full.applied_index, "source_node": full.source_node},
        "incremental": {"after_s": a.incremental_after_s,
            "purchases_between": between["ops"]["purchase"]["count"],
            "ms": incr_ms, "bytes_copied": incr.bytes_copied, "bytes_total": incr.bytes_total,
            "copied_share_of_full": incr.bytes_copied as f64 / full.bytes_total.max(1) as f64},
        "verify_ms": verify_ms,
        "archive": {"ms": archive_ms, "entries": archived.entries_written,
            "bytes": archived.bytes_written, "segments": archived.segments_written},
        "point_in_time_restore": {"ms": pit_ms, "entries_replayed": replayed,
            "commands_replayed": replayed_commands,
            "entries_per_s": replayed as f64 / (pit_ms.max(1) as f64 / 1000.0)},
        "restore_to_serving": {"restore_ms": restore_files_ms, "first_write_ms": first_write,
            "bytes": restored.nodes.len() as u64 * incr.bytes_total},
        "machine": crate::cluster::machine(cluster.dir()),
    }))
}

pub fn print_table(v: &Value) {
    println!(
        "purchase p99: {} ms without a backup, {} ms during one (x{:.2})",
        v["purchase_p99_ms"]["without_backup"],
        v["purchase_p99_ms"]["during_backup"],
        v["purchase_p99_ms"]["ratio"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "full backup: {} bytes in {} ms; incremental after {} s: {} of {} bytes copied ({:.2} % of the full) in {} ms",
        v["full"]["bytes"],
        v["full"]["ms"],
        v["incremental"]["after_s"],
        v["incremental"]["bytes_copied"],
        v["incremental"]["bytes_total"],
        v["incremental"]["copied_share_of_full"]
            .as_f64()
            .unwrap_or(f64::NAN)
            * 100.0,
        v["incremental"]["ms"]
    );
    println!(
        "verify {} ms; point-in-time replay {} entries in {} ms; restore to serving: first write after {} ms",
        v["verify_ms"],
        v["point_in_time_restore"]["entries_replayed"],
        v["point_in_time_restore"]["ms"],
        v["restore_to_serving"]["first_write_ms"]
    );
}
