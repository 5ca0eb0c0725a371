//! `billdb-chaos run`: one chaos run against five local `billdb-node`
//! processes; prints the summary table, writes the JSON report, exits
//! non-zero when any checker fails. May touch what [`billdb_chaos::run`]
//! touches, plus the JSON file it is told to write.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use billdb_chaos::nemesis;
use billdb_chaos::report;
use billdb_chaos::run::{self, RunConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "billdb-chaos", about = "billdb fault-injection suite")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start five nodes, run the workload under faults, check the history.
    Run {
        /// Run directory (cluster, node logs, history.jsonl); must be new.
        #[arg(long)]
        dir: PathBuf,
        /// Node N: HTTP base+N, gRPC base+100+N, Raft base+200+N on 127.0.1.N.
        /// Keep it below the kernel's ephemeral range (32768 and up): nodes
        /// bind their outgoing connections to their own address, and an
        /// ephemeral port there could hold a port a restarted node needs.
        #[arg(long, default_value_t = 14000)]
        base_port: u16,
        /// Seed of the fault schedule (random when omitted; always printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds of random faults; 0 runs each listed nemesis once.
        #[arg(long, default_value_t = 0)]
        duration_s: u64,
        /// `all` or a comma-separated list (kill2, pause, partition-halves,
        /// partition-leader, partition-oneway, partition-minority,
        /// partition-bridge, wipe, rolling-restart, membership, disk-stall,
        /// corruption, fsync-eio, disk-full, long-outage; outside `all`, as they put
        /// the nodes' data directories on lossy FUSE mounts:
        /// power-loss-follower, power-loss-leader, power-loss-all).
        #[arg(long, default_value = "all")]
        nemesis: String,
        /// Where to write the JSON report.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The billdb-node binary (found next to this one by default).
        #[arg(long)]
        node_bin: Option<PathBuf>,
        #[arg(long, default_value_t = 24)]
        accounts: usize,
        /// The nodes' `raft.read_policy`: `read_index` (their default) or
        /// `lease` (leader reads from its lease, no Raft round).
        #[arg(long, default_value = "read_index", value_parser = ["read_index", "lease"])]
        read_policy: String,
        /// A timed run fails when the write gap's p99 after a leader kill,
        /// stop, pause, isolation or disk stall (at most one follower's disk
        /// with it) exceeds this many milliseconds.
        #[arg(long, default_value_t = 1_000.0)]
        gap_target_ms: f64,
        /// The nodes' `raft.snapshot_logs_since_last`: a snapshot every this
        /// many applied entries.
        #[arg(long, default_value_t = run::SNAPSHOT_LOGS_SINCE_LAST)]
        snapshot_logs_since_last: u64,
        /// The nodes' `raft.logs_to_keep_after_snapshot`: entries kept behind
        /// a snapshot; a follower further behind catches up by snapshot.
        #[arg(long, default_value_t = run::LOGS_TO_KEEP_AFTER_SNAPSHOT)]
        logs_to_keep_after_snapshot: u64,
        /// How long each fault is held, in ms: `5000`, or a range
        /// `4000-6000` drawn from (default: each nemesis's own range), e.g.
        /// `--nemesis disk-stall --fault-ms 5000` for five-second stalls.
        #[arg(long, value_parser = parse_fault_ms)]
        fault_ms: Option<(u64, u64)>,
    },
}

fn parse_fault_ms(s: &str) -> std::result::Result<(u64, u64), String> {
    let num = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| format!("{x:?} is not a whole number of milliseconds"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if lo > hi || hi > 600_000 {
        return Err(format!(
            "{s:?}: want MS or MIN-MAX with MIN <= MAX <= 600000"
        ));
    }
    Ok((lo, hi))
}

fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok()
    {
        u64::from_le_bytes(buf)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }
}

/// First SIGINT/SIGTERM: finish the run early but cleanly (see
/// `run::STOP_REQUESTED`). Second: leave at once, nodes and firewall rules
/// behind (the next run on the same port removes a stale chain).
extern "C" fn on_stop_signal(_: libc::c_int) {
    if run::STOP_REQUESTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

fn main() -> ExitCode {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    // SAFETY: the handler only touches an atomic and calls _exit, both
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("billdb-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let Cmd::Run {
        dir,
        base_port,
        seed,
        duration_s,
        nemesis,
        json,
        node_bin,
        accounts,
        read_policy,
        gap_target_ms,
        snapshot_logs_since_last,
        logs_to_keep_after_snapshot,
        fault_ms,
    } = Cli::parse().cmd;
    let seed = seed.unwrap_or_else(random_seed);
    let mut cfg = RunConfig::new(dir, base_port, seed);
    cfg.duration_s = duration_s;
    cfg.nemeses = nemesis::parse_list(&nemesis)?;
    cfg.node_bin = node_bin;
    cfg.accounts = accounts;
    cfg.lease_reads = read_policy == "lease";
    cfg.gap_target_ms = gap_target_ms;
    cfg.snapshot_logs_since_last = snapshot_logs_since_last;
    cfg.logs_to_keep_after_snapshot = logs_to_keep_after_snapshot;
    cfg.fault_ms = fault_ms;
    println!("seed {seed} (replay with --seed {seed})");
    let rep = run::run(&cfg, &mut |line| println!("{line}"))?;
    print!("{}", report::render(&rep));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&rep).context("encoding the report")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    Ok(rep.passed)
}
