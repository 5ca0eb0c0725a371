//! Shared by the deployment tests (`deploy_*.rs`): where the built
//! binaries and deploy/ are, building the Debian package, and a workload
//! driven through the `billdb` command line (payments and purchases, each
//! acknowledged one recorded, and the check that every acknowledged write
//! is there afterwards).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// The release directory the tests' `billdb-node` was built into.
pub fn release_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_billdb-node"))
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

/// The `billdb` CLI built beside `billdb-node`; fails (never skips) when
/// it is missing.
pub fn cli_bin() -> PathBuf {
    let p = release_dir().join("billdb");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --release --workspace --locked)",
        p.display()
    );
    p
}

/// `name` on the PATH; fails with what installs it when missing.
pub fn tool(name: &str, installed_by: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("`{name}` is not installed: run deploy/setup.sh (it installs {installed_by})");
}

pub fn assert_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "{what} needs root (CI runs as root)");
}

/// Run `cmd`; panic with its output unless it succeeds; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Build the .deb with deploy/package/build-deb.sh into `out`.
pub fn build_deb(out: &Path) -> PathBuf {
    let stdout = run(Command::new(deploy_dir().join("package/build-deb.sh"))
        .arg("--bin-dir")
        .arg(release_dir())
        .arg("--out")
        .arg(out));
    let deb = PathBuf::from(stdout.trim());
    assert!(
        deb.is_file(),
        "build-deb.sh named {deb:?}, which is not a file"
    );
    deb
}

/// Poll `f` until it gives a value; panic naming `what` after `within`.
pub fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `billdb` command line pointed at a cluster: the CA, the nodes'
/// gRPC and HTTP endpoints, and a token per role.
#[derive(Clone)]
pub struct Cli {
    pub bin: PathBuf,
    pub ca: PathBuf,
    /// `host:port` of each node's client gRPC port, by node id (1-based).
    pub grpc: Vec<String>,
    /// `host:port` of each node's HTTP port.
    pub http: Vec<String>,
    /// (role, token): ops, counter, bank, auditor.
    pub tokens: Vec<(String, String)>,
}

impl Cli {
    pub fn token(&self, role: &str) -> &str {
        self.tokens
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, t)| t.as_str())
            .unwrap_or_else(|| panic!("no {role} token"))
    }

    /// A `billdb` command as `role`, talking to the nodes `on` (all if
    /// empty). Every call has a bound.
    pub fn cmd(&self, role: &str, on: &[usize]) -> Command {
        let grpc: Vec<&str> = if on.is_empty() {
            self.grpc.iter().map(String::as_str).collect()
        } else {
            on.iter().map(|n| self.grpc[n - 1].as_str()).collect()
        };
        let mut c = Command::new(&self.bin);
        c.env("BILLDB_CA", &self.ca)
            .env("BILLDB_GRPC", grpc.join(","))
            .env(
                "BILLDB_ENDPOINT",
                &self.http[on.first().copied().unwrap_or(1) - 1],
            )
            .env("BILLDB_TOKEN", self.token(role))
            .stdin(Stdio::null());
        c
    }

    /// Run `billdb ARGS` as `role`; stdout, or the error output.
    pub fn try_run(&self, role: &str, on: &[usize], args: &[&str]) -> Result<String, String> {
        let out = output(self.cmd(role, on).args(args));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn run_ok(&self, role: &str, on: &[usize], args: &[&str]) -> String {
        self.try_run(role, on, args)
            .unwrap_or_else(|e| panic!("billdb {args:?} as {role} failed: {e}"))
    }

    pub fn json(&self, role: &str, on: &[usize], args: &[&str]) -> Result<Value, String> {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.try_run(role, on, &a)?;
        serde_json::from_str(&out).map_err(|e| format!("not JSON ({e}): {out}"))
    }

    /// `billdb cluster status --json` of node `n`.
    pub fn status(&self, n: usize) -> Result<Value, String> {
        self.json("ops", &[n], &["cluster", "status", "--timeout-secs", "3"])
    }

    /// The leader as node `n` sees it.
    pub fn leader_seen_by(&self, n: usize) -> Option<usize> {
        let s = self.status(n).ok()?;
        s["leader_id"].as_u64().map(|l| l as usize)
    }

    /// The leader that the nodes `among` agree on.
    pub fn wait_leader(&self, among: &[usize], within: Duration) -> usize {
        wait_for("a leader every live node names", within, || {
            let seen: Vec<Option<usize>> = among.iter().map(|n| self.leader_seen_by(*n)).collect();
            let first = seen[0]?;
            (seen.iter().all(|s| *s == Some(first)) && among.contains(&first)).then_some(first)
        })
    }

    /// The demo data: a flat tariff, an account paid into (`PAY-1`) and
    /// one bought on by card (`BUY-1`, card `CARD-1`).
    pub fn setup_accounts(&self) {
        // (the CLI documents "default: now" for --effective-from, but the
        // node refuses a tariff without it; given here)
        self.run_ok(
            "ops",
            &[],
            &[
                "ops",
                "tariff",
                "T1",
                "--price",
                "0.52",
                "--effective-from",
                "2020-01-01T00:00:00Z",
            ],
        );
        for a in ["PAY-1", "BUY-1"] {
            self.run_ok(
                "counter",
                &[],
                &[
                    "account",
                    "open",
                    a,
                    "--name",
                    "Deploy Test",
                    "--branch",
                    "B01",
                    "--utility",
                    "electricity",
                    "--tariff-id",
                    "T1",
                ],
            );
        }
        self.run_ok("counter", &[], &["card", "issue", "BUY-1", "CARD-1"]);
    }

    /// One payment of 1.00 into PAY-1 with `request_id`: acknowledged or not.
    pub fn pay(&self, request_id: &str) -> Result<String, String> {
        self.try_run(
            "bank",
            &[],
            &[
                "pay",
                "PAY-1",
                "1.00",
                "--bank-code",
                "ICBC",
                "--bank-ref",
                request_id,
                "--request-id",
                request_id,
            ],
        )
    }

    /// One purchase of 5.00 on CARD-1 with `request_id`.
    pub fn purchase(&self, request_id: &str) -> Result<String, String> {
        self.try_run(
            "counter",
            &[],
            &[
                "purchase",
                "--card",
                "CARD-1",
                "--amount",
                "5.00",
                "--confirm-duplicate",
                "--request-id",
                request_id,
            ],
        )
    }

    /// PAY-1's balance as node `n` answers it (a linearizable read).
    pub fn balance_on(&self, n: usize) -> Result<Decimal, String> {
        let v = self.json("auditor", &[n], &["account", "get", "PAY-1"])?;
        let b = v["balance"]
            .as_str()
            .or_else(|| v["account"]["balance"].as_str())
            .ok_or_else(|| format!("no balance in {v}"))?;
        b.parse().map_err(|e| format!("balance {b:?}: {e}"))
    }
}

/// Writes through the CLI in a loop (four payments, then a purchase), each
/// acknowledged request id remembered; ones that failed (refused or
/// unknown) are remembered too, to be retried with the same id.
pub struct Workload {
    stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<Vec<String>>>,
    pub failed: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Workload {
    pub fn start(cli: &Cli, tag: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, a, f, cli, tag) = (
            stop.clone(),
            acked.clone(),
            failed.clone(),
            cli.clone(),
            tag.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let (id, r) = if i.is_multiple_of(5) {
                    let id = format!("buy-{tag}-{i}");
                    let r = cli.purchase(&id);
                    (id, r)
                } else {
                    let id = format!("pay-{tag}-{i}");
                    let r = cli.pay(&id);
                    (id, r)
                };
                match r {
                    Ok(_) => a.lock().expect("acked").push(id),
                    Err(_) => f.lock().expect("failed").push(id),
                }
            }
        });
        Workload {
            stop,
            acked,
            failed,
            handle: Some(handle),
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// Wait until `n` more writes are acknowledged than now, within `within`.
    pub fn wait_more_acked(&self, n: usize, within: Duration, what: &str) -> Duration {
        let start = Instant::now();
        let from = self.acked_count();
        wait_for(
            &format!("{n} writes acknowledged {what} (had {from})"),
            within,
            || (self.acked_count() >= from + n).then_some(()),
        );
        start.elapsed()
    }

    pub fn stop(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("workload thread");
        }
        let acked = std::mem::take(&mut *self.acked.lock().expect("acked"));
        let failed = std::mem::take(&mut *self.failed.lock().expect("failed"));
        (acked, failed)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// After the faults healed: every write that failed is sent again with its
/// request id (exactly-once: it is applied at most once either way), then
/// every acknowledged purchase is found on a node, and every node in
/// `nodes` answers PAY-1's balance as exactly one 1.00 per payment.
pub fn verify_nothing_lost(cli: &Cli, nodes: &[usize], acked: &[String], failed: &[String]) {
    let mut all: Vec<String> = acked.to_vec();
    for id in failed {
        wait_for(
            &format!("retry of {id} acknowledged"),
            Duration::from_secs(60),
            || {
                let r = if id.starts_with("buy-") {
                    cli.purchase(id)
                } else {
                    cli.pay(id)
                };
                r.ok()
            },
        );
        all.push(id.clone());
    }
    let payments = all.iter().filter(|id| id.starts_with("pay-")).count();
    let expected = Decimal::from(payments as u64);
    for id in acked.iter().filter(|id| id.starts_with("buy-")) {
        let v = cli
            .json("ops", &[], &["ops", "request", id])
            .unwrap_or_else(|e| panic!("acknowledged purchase {id} not found: {e}"));
        assert!(
            v.to_string().contains("record_id") || v.to_string().contains(id.as_str()),
            "acknowledged purchase {id}: unexpected outcome {v}"
        );
    }
    for n in nodes {
        let b = wait_for(
            &format!("node {n} answers PAY-1's balance"),
            Duration::from_secs(60),
            || cli.balance_on(*n).ok(),
        );
        assert_eq!(
            b, expected,
            "node {n}: PAY-1 balance {b}, but {payments} payments of 1.00 were acknowledged \
             (or retried to an acknowledgement)"
        );
    }
}
