//! Which cluster a run talks to (a local cluster directory, or HTTP
//! endpoints and a token), its settings as reported by the nodes, and the
//! nodes' resident memory (`/proc/<pid>/status`), CPU time
//! (`/proc/<pid>/stat`, per thread name from `/proc/<pid>/task`) and disk
//! use (data directories) when the cluster is local. Reads the cluster directory and
//! `/proc`; signals nodes only through `LocalCluster` (leader-kill).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use billdb_client::local::LocalCluster;
use serde_json::{Value, json};

use std::sync::Arc;

use billdb_client::tls::ClientTls;

use crate::ahttp::AsyncHttp;
use crate::http::Http;

/// Where the cluster is.
#[derive(clap::Args, Clone, Debug)]
pub struct TargetArgs {
    /// Local cluster directory (`billdb local up --dir ...`): endpoints,
    /// demo tokens, node pids (RSS) and data directories (disk) come from it.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// HTTP endpoints (host:port), comma separated, when not using --dir.
    #[arg(
        long,
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005"
    )]
    pub http: String,
    /// Ops token for every request when not using --dir.
    #[arg(long, env = "BILLDB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate of the cluster when not using --dir (TLS endpoints).
    #[arg(long, env = "BILLDB_CA")]
    pub ca: Option<PathBuf>,
}

pub struct Target {
    /// (node id, HTTP address); ids are 1.. in list order without --dir.
    pub nodes: Vec<(u64, String)>,
    pub cluster: Option<LocalCluster>,
    token: Option<String>,
    /// TLS to the client ports (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// The same, for the async (hyper) clients.
    rustls: Option<Arc<rustls::ClientConfig>>,
}

/// A rustls client configuration trusting only `tls`'s CA certificates.
pub fn rustls_config(tls: &ClientTls) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(cert.map_err(|e| anyhow::anyhow!("CA file: {e}"))?)?;
    }
    #[allow(deprecated)] // ring, as the node: no second C build.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

impl Target {
    pub fn resolve(a: &TargetArgs) -> anyhow::Result<Target> {
        if let Some(dir) = &a.dir {
            let c = LocalCluster::open(dir)?;
            let nodes = c
                .node_ids()
                .into_iter()
                .map(|n| Ok((n, c.http_addr(n)?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(!nodes.is_empty(), "the cluster has no nodes");
            let tls = c.client_tls()?;
            return Ok(Target {
                nodes,
                cluster: Some(c),
                token: a.token.clone(),
                rustls: tls.as_ref().map(rustls_config).transpose()?,
                tls,
            });
        }
        let nodes: Vec<(u64, String)> = a
            .http
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| (i as u64 + 1, s.to_string()))
            .collect();
        anyhow::ensure!(!nodes.is_empty(), "no endpoints");
        let tls =
            a.ca.as_deref()
                .map(|ca| ClientTls::from_files(ca, None))
                .transpose()?;
        Ok(Target {
            nodes,
            cluster: None,
            token: a.token.clone(),
            rustls: tls.as_ref().map(rustls_config).transpose()?,
            tls,
        })
    }

    /// Token for a demo identity (ops, counter, bank, auditor) of a local
    /// cluster; `--token` (ops) when given or when there is no cluster dir.
    pub fn token(&self, identity: &str) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        match &self.cluster {
            Some(c) => Ok(Some(c.token(identity)?)),
            None => Ok(None),
        }
    }

    /// Clients of every node as `identity`, starting at index `first`.
    pub fn clients(&self, identity: &str, first: usize) -> anyhow::Result<Vec<Http>> {
        self.each_node(identity, first, |e, t| Http::new(e, t, self.tls.as_ref()))
    }

    /// The same, as async clients (timed closed loops).
    pub fn async_clients(&self, identity: &str, first: usize) -> anyhow::Result<Vec<AsyncHttp>> {
        self.each_node(identity, first, |e, t| {
            AsyncHttp::new(e, t, self.rustls.clone())
        })
    }

    /// An HTTP client of `addr` (one of this target's) with `token`.
    pub fn http(&self, addr: &str, token: Option<&str>) -> Http {
        Http::new(addr, token, self.tls.as_ref())
    }

    fn each_node<T>(
        &self,
        identity: &str,
        first: usize,
        client: impl Fn(&str, Option<&str>) -> T,
    ) -> anyhow::Result<Vec<T>> {
        let token = self.token(identity)?;
        let n = self.nodes.len();
        Ok((0..n)
            .map(|k| client(&self.nodes[(first + k) % n].1, token.as_deref()))
            .collect())
    }

    /// `/v1/cluster/status` of the first node that answers, and the local
    /// cluster's Raft timings.
    pub fn settings(&self) -> Value {
        let token = self.token("ops").ok().flatten();
        let mut status = Value::Null;
        for (_, addr) in &self.nodes {
            if let Ok(v) = self.http(addr, token.as_deref()).get("/v1/cluster/status") {
                status = v;
                break;
            }
        }
        let raft = self
            .cluster
            .as_ref()
            .map(|c| serde_json::to_value(c.spec().raft).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        json!({
            "nodes": self.nodes.len(),
            "endpoints": self.nodes.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
            "status": status,
            "raft_timings": raft,
            "node_defaults": {"request_timeout_ms": 3000, "request_body_bytes_max": 65536, "import_body_bytes_max": 1048576},
        })
    }

    /// Per node: pid, RSS and data directory size (local clusters only).
    pub fn usage(&self) -> Value {
        let Some(c) = &self.cluster else {
            return Value::Null;
        };
        usage_json(
            c.node_ids()
                .into_iter()
                .map(|n| (n, c.pid(n), c.data_dir(n))),
        )
    }

    /// CPU time of every node process now (local clusters only).
    pub fn cpu_sample(&self) -> Option<CpuSample> {
        let c = self.cluster.as_ref()?;
        Some(CpuSample::of(
            c.node_ids()
                .into_iter()
                .filter_map(|n| Some((n, c.pid(n)?))),
        ))
    }

    /// The leader by majority agreement (local clusters), or the first node
    /// whose status says it leads.
    pub fn leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        if let Some(c) = &self.cluster {
            return c.wait_leader(timeout);
        }
        let token = self.token("ops")?;
        for (_, addr) in &self.nodes {
            if let Ok(v) = self.http(addr, token.as_deref()).get("/v1/cluster/status")
                && let Some(l) = v["leader_id"].as_u64()
            {
                return Ok(l);
            }
        }
        anyhow::bail!("no node names a leader")
    }

    pub fn local(&self) -> anyhow::Result<&LocalCluster> {
        self.cluster
            .as_ref()
            .context("this workload needs the local cluster directory (--dir)")
    }
}

/// Thread names whose CPU time is shown apart; every other thread of a
/// node counts as `other` (the main thread, tokio's blocking pool, threads
/// that have exited since the first sample).
pub const THREAD_GROUPS: [&str; 4] = [
    "tokio-rt-worker", // the node's async work: HTTP, gRPC, Raft, apply
    "raft-log-fsync",  // the WAL group-commit fsync thread
    "rocksdb:low",     // compactions
    "rocksdb:high",    // memtable flushes
];

/// One process's CPU time in clock ticks: the whole process (exited
/// threads included) and the live threads by name.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessCpu {
    pub pid: u32,
    pub ticks: u64,
    pub by_thread: BTreeMap<String, u64>,
}

impl ProcessCpu {
    pub fn read(pid: u32) -> Option<ProcessCpu> {
        // Threads first, the process after: a thread's ticks never exceed
        // the process's read later.
        let mut by_thread = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let (Ok(comm), Ok(stat)) = (
                    std::fs::read_to_string(t.path().join("comm")),
                    std::fs::read_to_string(t.path().join("stat")),
                ) else {
                    continue; // the thread exited meanwhile
                };
                let comm = comm.trim();
                if let Some(t) = stat_ticks(&stat)
                    && THREAD_GROUPS.contains(&comm)
                {
                    *by_thread.entry(comm.to_string()).or_insert(0) += t;
                }
            }
        }
        let ticks = stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        Some(ProcessCpu {
            pid,
            ticks,
            by_thread,
        })
    }
}

/// Field `n` (1-based, as `man 5 proc` numbers them; 3 or later) of a
/// `/proc/.../stat` line, as a number. The command name in parentheses
/// may hold spaces, so fields count from its `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" comes the state, field 3.
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// utime + stime (clock ticks, fields 14 and 15) of a `/proc/.../stat` line.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// Node CPU time at one moment, by node id.
#[derive(Clone, Debug)]
pub struct CpuSample {
    pub at: Instant,
    pub nodes: BTreeMap<u64, ProcessCpu>,
}

impl CpuSample {
    /// The CPU time of each `(node, pid)` now; a process gone is left out.
    pub fn of(pids: impl IntoIterator<Item = (u64, u32)>) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            nodes: pids
                .into_iter()
                .filter_map(|(n, pid)| Some((n, ProcessCpu::read(pid)?)))
                .collect(),
        }
    }
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU the nodes used between two samples: in all, per node, per thread
/// group, as cores busy, and per operation (`ops` of `per_op`, e.g. 3,000
/// purchases). A node restarted in between (another pid) counts all its
/// CPU since it started; a node not running at the end (killed) is left
/// out, since its CPU until the kill can no longer be read.
pub fn cpu_json(before: &CpuSample, after: &CpuSample, per_op: &str, ops: u64) -> Value {
    let ms_per_tick = 1000.0 / ticks_per_s();
    let secs = after.at.duration_since(before.at).as_secs_f64();
    let mut total = 0u64;
    let mut by_node = serde_json::Map::new();
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    for (n, a) in &after.nodes {
        let b = before.nodes.get(n).filter(|b| b.pid == a.pid);
        let used = a.ticks.saturating_sub(b.map_or(0, |b| b.ticks));
        total += used;
        by_node.insert(n.to_string(), json!((used as f64 * ms_per_tick).round()));
        for (g, t) in &a.by_thread {
            let was = b.and_then(|b| b.by_thread.get(g)).copied().unwrap_or(0);
            *groups.entry(g.clone()).or_insert(0) += t.saturating_sub(was);
        }
    }
    let named: u64 = groups.values().sum();
    groups.insert("other".into(), total.saturating_sub(named));
    let total_ms = total as f64 * ms_per_tick;
    json!({
        "seconds": secs,
        "total_ms": total_ms.round(),
        "cores_used": if secs > 0.0 { total_ms / 1000.0 / secs } else { 0.0 },
        "per_op": per_op,
        "ops": ops,
        "ms_per_op": if ops > 0 { Value::from(total_ms / ops as f64) } else { Value::Null },
        "by_node_ms": by_node,
        "by_thread_ms": groups.into_iter().map(|(g, t)| (g, json!((t as f64 * ms_per_tick).round()))).collect::<serde_json::Map<_, _>>(),
    })
}

/// One line for the tables: cores busy, CPU per operation, by node and by
/// thread group.
pub fn cpu_line(v: &Value) -> Option<String> {
    let total = v["total_ms"].as_f64()?;
    let per_op = v["ms_per_op"].as_f64().map_or(String::new(), |m| {
        format!(", {m:.3} ms per {}", v["per_op"].as_str().unwrap_or("op"))
    });
    let nodes: Vec<String> = v["by_node_ms"]
        .as_object()?
        .iter()
        .map(|(n, ms)| format!("{n}: {:.1} s", ms.as_f64().unwrap_or(0.0) / 1000.0))
        .collect();
    let threads: Vec<String> = v["by_thread_ms"]
        .as_object()?
        .iter()
        .filter(|(_, ms)| ms.as_f64().unwrap_or(0.0) > 0.0)
        .map(|(g, ms)| {
            format!(
                "{g} {:.0} %",
                100.0 * ms.as_f64().unwrap_or(0.0) / total.max(1.0)
            )
        })
        .collect();
    Some(format!(
        "node CPU: {:.1} s = {:.2} cores{per_op}; by node {}; by thread {}",
        total / 1000.0,
        v["cores_used"].as_f64().unwrap_or(0.0),
        nodes.join(", "),
        threads.join(", ")
    ))
}

/// Per node `(id, pid if running, data directory)`: pid, RSS now and at
/// its peak, and the directory's size on disk; with totals.
pub fn usage_json(nodes: impl IntoIterator<Item = (u64, Option<u32>, PathBuf)>) -> Value {
    let mut out = Vec::new();
    let (mut rss_total, mut rss_peak_max, mut disk_total) = (0u64, 0u64, 0u64);
    for (n, pid, dir) in nodes {
        let rss = pid.and_then(|p| status_bytes(p, "VmRSS:"));
        let rss_peak = pid.and_then(|p| status_bytes(p, "VmHWM:"));
        let disk = dir_bytes(&dir);
        rss_total += rss.unwrap_or(0);
        rss_peak_max = rss_peak_max.max(rss_peak.unwrap_or(0));
        disk_total += disk;
        out.push(json!({
            "node": n, "pid": pid, "rss_bytes": rss,
            "rss_peak_bytes": rss_peak, "disk_bytes": disk,
        }));
    }
    json!({
        "nodes": out,
        "rss_bytes_total": rss_total,
        "rss_peak_bytes_max": rss_peak_max,
        "disk_bytes_total": disk_total,
    })
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:` now, `VmHWM:` the peak
/// since the process started), bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes allocated on disk under `dir` (blocks, like `du`: a file with
/// several hard links under `dir`, such as an SST file shared by the live
/// database and a snapshot checkpoint, counts once).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut linked = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.nlink() <= 1 || linked.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// The machine: cores, memory and the disk holding `path`.
pub fn machine(path: &Path) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = mem
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu_model": model, "cores": cores, "mem_bytes": mem_kb * 1024,
        "loadavg": load.trim(), "data_path": path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file hard-linked twice under the directory (an SST file shared by
    /// the database and a checkpoint) counts once, as `du` counts it.
    #[test]
    fn dir_bytes_counts_a_hard_linked_file_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::create_dir(dir.path().join("ckpt")).unwrap();
        std::fs::write(dir.path().join("db/1.sst"), vec![7u8; 64 << 10]).unwrap();
        let one = dir_bytes(dir.path());
        assert!(one >= 64 << 10, "{one}");
        std::fs::hard_link(dir.path().join("db/1.sst"), dir.path().join("ckpt/1.sst")).unwrap();
        assert_eq!(dir_bytes(dir.path()), one);
        std::fs::write(dir.path().join("ckpt/2.sst"), vec![7u8; 64 << 10]).unwrap();
        assert!(dir_bytes(dir.path()) >= one + (64 << 10));
    }

    #[test]
    fn stat_ticks_reads_utime_and_stime_past_a_name_with_spaces() {
        // Fields 14 and 15 are 7 and 5; the name holds ") " to mislead a
        // naive split.
        let line =
            "4242 (billdb) node x) S 1 4242 4242 0 -1 4194560 10 0 0 0 7 5 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_ticks(line), Some(12));
        // Field 4, the parent's pid; fields before the state do not exist.
        assert_eq!(stat_field(line, 4), Some(1));
        assert_eq!(stat_field(line, 2), None);
        assert_eq!(stat_ticks("4242 (short) S 1 2"), None);
        assert_eq!(stat_ticks("no parenthesis at all"), None);
    }

    /// CPU burnt by a thread of this process shows up in the process total
    /// and in the per-operation figure; a pid that changed counts from 0.
    #[test]
    fn cpu_json_counts_what_the_process_used() {
        let pid = std::process::id();
        let before = CpuSample {
            at: Instant::now(),
            nodes: [(1, ProcessCpu::read(pid).unwrap())].into(),
        };
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuSample {
            at: Instant::now(),
            nodes: [(1, ProcessCpu::read(pid).unwrap())].into(),
        };
        let v = cpu_json(&before, &after, "purchase", 100);
        let total = v["total_ms"].as_f64().unwrap();
        // At least a good part of the 300 ms spin, however busy the host.
        assert!(total >= 50.0, "{v}");
        assert_eq!(v["by_node_ms"]["1"].as_f64().unwrap(), total);
        assert!((v["ms_per_op"].as_f64().unwrap() - total / 100.0).abs() < 1e-9);
        // This test's threads are not node threads: all of it is "other".
        assert_eq!(v["by_thread_ms"]["other"].as_f64().unwrap(), total);
        assert!(cpu_line(&v).unwrap().contains("per purchase"), "{v}");
        let moved = CpuSample {
            at: after.at,
            nodes: [(
                1,
                ProcessCpu {
                    pid: pid + 1,
                    ..after.nodes[&1].clone()
                },
            )]
            .into(),
        };
        let v = cpu_json(&before, &moved, "purchase", 0);
        assert!(v["total_ms"].as_f64().unwrap() >= total, "{v}");
        assert!(v["ms_per_op"].is_null());
    }

    #[test]
    fn status_bytes_reads_this_process() {
        let pid = std::process::id();
        let rss = status_bytes(pid, "VmRSS:").unwrap();
        let peak = status_bytes(pid, "VmHWM:").unwrap();
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        assert_eq!(status_bytes(pid, "NoSuchField:"), None);
    }
}
