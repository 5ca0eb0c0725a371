//! The issue's other reference system, measured on the same machine: what
//! a utility might pick instead of billdb. PostgreSQL (Debian's package,
//! 15 on Debian 12) as a primary with four streaming standbys, a commit
//! acknowledged once any two standbys have flushed it
//! (`synchronous_standby_names = 'ANY 2 (s1, s2, s3, s4)'`,
//! `synchronous_commit = on`): three durable copies of five, as a billdb
//! commit. The load is PostgreSQL's own `pgbench`, one thread, closed-loop
//! clients each running one purchase and, optionally, card reads (the
//! account and its 20 newest records). A purchase is either the minimal
//! one (`--purchase minimal`: one statement, update the account's balance
//! and sequence, insert a ~200-byte record) or the one a utility would
//! write on PostgreSQL (`--purchase full`: the PL/pgSQL function
//! [`PURCHASE_FUNCTION`] in one transaction, what billdb's purchase does:
//! the idempotency key, the card and account checks, the price from the
//! tariff's ladder and the year's units, a gapless invoice number, the
//! record and the four report rows it adds to). Latencies come from
//! pgbench's per-transaction log into the same statistics as the billdb
//! workloads, with the instances' CPU from `/proc` (each postmaster, its
//! live processes, and the children it reaped).
//!
//! With `--tls` every connection is TLS, as billdb's are: the clients'
//! (pgbench, psql) and each standby's WAL stream, each side checking the
//! other's certificate (`sslmode=verify-full` against one CA, and a client
//! certificate the server requires: `hostssl … clientcert=verify-ca`, no
//! plaintext line in `pg_hba.conf`). Without it, plaintext everywhere
//! (`ssl=off`). The run checks which it got: the standbys' streams and a
//! client's connection as seen in `pg_stat_ssl`, and, with TLS, that a
//! plaintext connection is refused.
//!
//! Touches only the directory it is given (one data directory and log per
//! instance, pgbench's scripts and logs), the server processes it starts
//! (stopped at the end, also on an error), and loopback ports. Run as
//! root, the servers run as the `postgres` user (PostgreSQL refuses root),
//! so that user must be able to reach the directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::cluster::{
    CpuSample, ProcessCpu, cpu_json, machine, stat_field, stat_ticks, usage_json,
};
use crate::stats::Stats;

/// The primary and its standbys.
const INSTANCES: usize = 5;
/// Standbys that must have flushed a commit before it is acknowledged.
const SYNC_STANDBYS: usize = 2;
/// How long start-up (initdb, base backups, streaming) may take.
const START_TIMEOUT_MS: u64 = 120_000;
/// How long a standby may take to replay what the primary wrote.
const CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// Bytes of a record's body and of an account's summary.
const RECORD_BODY_BYTES: usize = 200;
const SUMMARY_BYTES: usize = 100;
/// Most clients (the primary allows `CONNECTIONS_MAX`).
const CLIENTS_MAX: usize = 256;
const CONNECTIONS_MAX: usize = 300;
/// Records each card read returns at most.
const CARD_READ_RECORDS: usize = 20;
/// Time the primary gets to reap pgbench's ended connections before the
/// CPU after a run is read.
const REAP_SETTLE_MS: u64 = 300;

#[derive(clap::Args)]
pub struct PostgresArgs {
    /// Directory for the instances' data, logs and pgbench's files (each
    /// run starts fresh: earlier instance directories in it are removed).
    #[arg(long)]
    dir: PathBuf,
    /// Even base port: instance i (0 is the primary) listens on
    /// base + 2i + 1.
    #[arg(long, default_value_t = 13_500)]
    base_port: u16,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Accounts the purchases are spread over.
    #[arg(long, default_value_t = 20_000)]
    accounts: u64,
    /// Seconds of card reads by one client after the purchases (0: none).
    #[arg(long, default_value_t = 0)]
    reads_s: u64,
    /// Which purchase: `minimal` (one statement) or `full` (the PL/pgSQL
    /// purchase a utility would write).
    #[arg(long, value_enum, default_value_t = Purchase::Minimal)]
    purchase: Purchase,
    /// PostgreSQL's programs (default: the newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pg_bin_dir: Option<PathBuf>,
    /// TLS for every connection, clients' and replication's, with
    /// certificates checked both ways (default: plaintext).
    #[arg(long)]
    tls: bool,
    #[arg(long)]
    pub json: bool,
}

/// The purchase pgbench runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Purchase {
    /// One statement: the account updated, a record inserted.
    Minimal,
    /// [`PURCHASE_FUNCTION`]: billdb's purchase written in PL/pgSQL.
    Full,
}

/// Tariffs, branches the accounts are spread over (account `a` has tariff
/// `a % TARIFFS + 1`, branch `a % BRANCHES`, card `C<a>`).
const TARIFFS: u64 = 4;
const BRANCHES: u64 = 8;

/// The tables the full purchase needs beside `accounts` and `records`:
/// cards, the tariffs' ladders (three steps a year, as a residential
/// electricity tariff), the exactly-once table, one gapless invoice
/// counter and the report rows (month, dimension, value, kind), as
/// billdb's `reports` family keeps them.
fn full_schema(accounts: u64) -> String {
    format!(
        "CREATE TABLE cards (card_no text PRIMARY KEY, account_id int NOT NULL, active bool NOT NULL); \
         INSERT INTO cards SELECT 'C' || g, g, true FROM generate_series(1, {accounts}) g; \
         CREATE TABLE tariff_steps (tariff_id int NOT NULL, from_units numeric(14,3) NOT NULL, \
           to_units numeric(14,3) NOT NULL, price numeric(10,4) NOT NULL, PRIMARY KEY (tariff_id, from_units)); \
         INSERT INTO tariff_steps SELECT t, s.f, s.u, s.p + t / 100.0 FROM generate_series(1, {TARIFFS}) t, \
           (VALUES (0, 2160, 0.5283), (2160, 4200, 0.5783), (4200, 1000000000, 0.8283)) AS s(f, u, p); \
         CREATE TABLE requests (request_id text PRIMARY KEY, outcome text NOT NULL); \
         CREATE TABLE counters (name text PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO counters VALUES ('invoice', 0); \
         CREATE TABLE report_rows (month text NOT NULL, dim char(1) NOT NULL, value text NOT NULL, \
           kind text NOT NULL, count bigint NOT NULL, amount numeric(16,2) NOT NULL, \
           units numeric(16,3) NOT NULL, PRIMARY KEY (month, dim, value, kind)); \
         {PURCHASE_FUNCTION}"
    )
}

/// billdb's purchase in PL/pgSQL, one transaction: a request id already
/// answered returns its stored outcome; the card must be known and
/// active, the account active; the amount buys units along the tariff's
/// ladder from the units already bought this year; the invoice number
/// comes from one counter row (gapless, as billdb's); the record is
/// inserted and the month's report rows by operator, branch, tariff and
/// kind are upserted; the outcome is stored under the request id.
pub const PURCHASE_FUNCTION: &str = r#"
CREATE FUNCTION purchase(p_request_id text, p_card_no text, p_amount numeric, p_operator text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_outcome text; v_account int; v_status text; v_tariff int; v_branch text;
  v_year_units numeric; v_units numeric := 0; v_left numeric := p_amount;
  v_from numeric; v_cap numeric; v_cost numeric; v_seq int; v_invoice bigint;
  v_month text := to_char(now(), 'YYYY-MM'); step record;
BEGIN
  SELECT outcome INTO v_outcome FROM requests WHERE request_id = p_request_id;
  IF FOUND THEN RETURN v_outcome; END IF;
  SELECT account_id INTO v_account FROM cards WHERE card_no = p_card_no AND active;
  IF NOT FOUND THEN RAISE EXCEPTION 'CARD_UNKNOWN: %', p_card_no; END IF;
  SELECT status, tariff_id, branch, year_units INTO v_status, v_tariff, v_branch, v_year_units
    FROM accounts WHERE account_id = v_account FOR UPDATE;
  IF v_status <> 'active' THEN RAISE EXCEPTION 'ACCOUNT_NOT_ACTIVE: %', v_account; END IF;
  FOR step IN SELECT from_units, to_units, price FROM tariff_steps
      WHERE tariff_id = v_tariff AND to_units > v_year_units ORDER BY from_units LOOP
    v_from := greatest(v_year_units + v_units, step.from_units);
    v_cap := step.to_units - v_from;
    v_cost := v_cap * step.price;
    IF v_cost >= v_left THEN
      v_units := v_units + round(v_left / step.price, 3);
      v_left := 0;
      EXIT;
    END IF;
    v_units := v_units + v_cap;
    v_left := v_left - v_cost;
  END LOOP;
  IF v_left > 0 THEN RAISE EXCEPTION 'TARIFF_EXHAUSTED: %', v_tariff; END IF;
  UPDATE accounts SET balance = balance + p_amount, last_seq = last_seq + 1,
      year_units = year_units + v_units
    WHERE account_id = v_account RETURNING last_seq INTO v_seq;
  UPDATE counters SET n = n + 1 WHERE name = 'invoice' RETURNING n INTO v_invoice;
  INSERT INTO records (account_id, seq, ts, amount, units, invoice_no, request_id, body)
    VALUES (v_account, v_seq, now(), p_amount, v_units, v_invoice, p_request_id, repeat('r', 200));
  INSERT INTO report_rows VALUES
      (v_month, 'o', p_operator, 'purchase', 1, p_amount, v_units),
      (v_month, 'b', v_branch, 'purchase', 1, p_amount, v_units),
      (v_month, 't', v_tariff::text, 'purchase', 1, p_amount, v_units),
      (v_month, 'k', 'purchase', 'purchase', 1, p_amount, v_units)
    ON CONFLICT (month, dim, value, kind) DO UPDATE SET count = report_rows.count + 1,
      amount = report_rows.amount + excluded.amount, units = report_rows.units + excluded.units;
  v_outcome := json_build_object('result', 'record_posted', 'account_id', v_account,
      'seq', v_seq, 'units', v_units, 'invoice_no', v_invoice)::text;
  INSERT INTO requests VALUES (p_request_id, v_outcome);
  RETURN v_outcome;
END $$;
"#;

/// The newest Debian PostgreSQL installation's `bin` directory.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        for d in dirs.flatten() {
            let Some(v) = d.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let bin = d.path().join("bin");
            if bin.join("postgres").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, b)| b).context(
        "no PostgreSQL server under /usr/lib/postgresql (install Debian's postgresql, as deploy/setup.sh does, or pass --pg-bin-dir)",
    )
}

/// The user and group the servers run as: `postgres` when this runs as
/// root, this process's own otherwise (`None`).
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid only reads this process's effective user id.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == "postgres")
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .map(Some)
        .context("running as root, the servers need the `postgres` user (Debian's postgresql package creates it)")
}

struct Setup {
    bin: PathBuf,
    user: Option<(u32, u32)>,
    dir: PathBuf,
    base_port: u16,
    /// The certificates, with `--tls`.
    tls: Option<PgTls>,
}

/// The names the certificates carry (a CA of their own, not billdb's).
const TLS_CA_NAME: &str = "pgbench";
const TLS_CLIENT_NAME: &str = "postgres";

/// `--tls`: one CA, the certificate every instance presents (for
/// 127.0.0.1) and the one every client presents (pgbench, psql,
/// pg_basebackup and each standby's WAL receiver), under `<dir>/tls`.
struct PgTls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl PgTls {
    /// libpq's settings for a connection that checks the server's
    /// certificate and name and presents the client certificate.
    fn conninfo(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            self.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

/// Writes the certificates under `dir/tls`. The keys are the servers'
/// user's to read: owned by root with its group and mode 0640 when run as
/// root (both PostgreSQL and libpq accept that), else the caller's, 0600.
fn write_tls(dir: &Path, user: Option<(u32, u32)>) -> anyhow::Result<PgTls> {
    use billdb_client::certs;
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    std::fs::set_permissions(&tls_dir, std::fs::Permissions::from_mode(0o755))?;
    let ca = certs::new_ca(TLS_CA_NAME)?;
    let server = certs::node_cert(&ca, TLS_CA_NAME, 1, &["127.0.0.1".to_string()])?;
    let client = certs::client_cert(&ca, TLS_CA_NAME, TLS_CLIENT_NAME)?;
    let key_mode = if user.is_some() { 0o640 } else { 0o600 };
    let write = |name: &str, pem: &str, key: bool| -> anyhow::Result<PathBuf> {
        let path = tls_dir.join(name);
        certs::write_file(&path, pem.as_bytes(), if key { key_mode } else { 0o644 })?;
        if let (true, Some((_, gid))) = (key, user) {
            std::os::unix::fs::chown(&path, Some(0), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(path)
    };
    Ok(PgTls {
        ca: write("ca.pem", &ca.cert_pem, false)?,
        server_cert: write("server.pem", &server.cert_pem, false)?,
        server_key: write("server.key", &server.key_pem, true)?,
        client_cert: write("client.pem", &client.cert_pem, false)?,
        client_key: write("client.key", &client.key_pem, true)?,
    })
}

/// `pg_hba.conf` with `--tls`: TCP only over TLS with a client
/// certificate the CA signed, for clients and for replication; no
/// plaintext line, so a plaintext connection matches nothing and is
/// refused.
const TLS_HBA: &str = "\
# billdb-bench postgres --tls: TLS with a client certificate, or nothing.
local   all          all                        trust
hostssl all          all   127.0.0.1/32  trust  clientcert=verify-ca
hostssl replication  all   127.0.0.1/32  trust  clientcert=verify-ca
";

impl Setup {
    fn port(&self, i: usize) -> u16 {
        self.base_port + 2 * i as u16 + 1
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("pg-{i}"))
    }

    /// A PostgreSQL client program (psql, pgbench), run as this process,
    /// over TLS with `--tls` (libpq's environment), else plaintext.
    fn client_cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        c.env("LC_ALL", "C").stdin(Stdio::null());
        match &self.tls {
            Some(t) => c
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", &t.ca)
                .env("PGSSLCERT", &t.client_cert)
                .env("PGSSLKEY", &t.client_key),
            None => c.env("PGSSLMODE", "disable"),
        };
        c
    }

    /// A PostgreSQL server program, run as the servers' user.
    fn server_cmd(&self, prog: &str) -> Command {
        let mut c = self.client_cmd(prog);
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// A file or directory handed to the servers' user.
    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    /// How a client program reaches instance `i`: loopback TCP, as the
    /// `postgres` user (trusted: `initdb --auth=trust`).
    fn conn_args(&self, i: usize) -> [String; 6] {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port(i).to_string(),
            "-U",
            "postgres",
        ]
        .map(String::from)
    }

    /// Runs SQL on instance `i` through `psql`; its unaligned output.
    fn sql(&self, i: usize, sql: &str) -> anyhow::Result<String> {
        let out = self
            .client_cmd("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(self.conn_args(i))
            .args(["-d", "postgres", "-c", sql])
            .output()
            .context("running psql")?;
        anyhow::ensure!(
            out.status.success(),
            "psql on instance {i} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The settings every instance starts with; recorded in the result.
    /// The primary gets [`sync_standby_names`] once its standbys stream
    /// (set on the command line, it would hold the setup's own commits).
    fn flags(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = vec![
            format!("port={}", self.port(i)),
            "listen_addresses=127.0.0.1".into(),
            format!("unix_socket_directories={}", self.data_dir(i).display()),
            format!("max_connections={CONNECTIONS_MAX}"),
            "fsync=on".into(),
            "synchronous_commit=on".into(),
            "logging_collector=off".into(),
            "log_min_messages=warning".into(),
        ];
        match &self.tls {
            Some(t) => v.extend([
                "ssl=on".into(),
                format!("ssl_cert_file={}", t.server_cert.display()),
                format!("ssl_key_file={}", t.server_key.display()),
                format!("ssl_ca_file={}", t.ca.display()),
            ]),
            None => v.push("ssl=off".into()),
        }
        v
    }

    fn start(&self, i: usize) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("pg-{i}.log")))?;
        let mut c = self.server_cmd("postgres");
        c.arg("-D").arg(self.data_dir(i));
        for f in self.flags(i) {
            c.arg("-c").arg(f);
        }
        c.stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting PostgreSQL instance {i}"))
    }

    /// Waits until instance `i` answers SQL.
    fn wait_ready(&self, i: usize, child: &mut Child, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("PostgreSQL instance {i} exited at start ({status}); see pg-{i}.log");
            }
            if self.sql(i, "SELECT 1").is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "PostgreSQL instance {i} not ready within {START_TIMEOUT_MS} ms"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The running instances; stopped when dropped (SIGQUIT, PostgreSQL's
/// immediate shutdown, then SIGKILL if one lingers), so an error part-way
/// never leaves servers behind.
struct Instances {
    children: Vec<Child>,
}

impl Drop for Instances {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill only sends a signal to a child this process started.
            unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The primary's quorum: any two of the four standbys.
fn sync_standby_names() -> String {
    let names: Vec<String> = (1..INSTANCES).map(|s| format!("s{s}")).collect();
    format!("ANY {SYNC_STANDBYS} ({})", names.join(", "))
}

/// Stops a server an earlier, interrupted run left on `data_dir` (its
/// `postmaster.pid` names it), so the directory and port are free again.
fn stop_leftover(data_dir: &Path) {
    let Ok(pidfile) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = pidfile
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&*data_dir.to_string_lossy()) {
        return; // gone, or the pid is another process's now
    }
    // SAFETY: kill only sends a signal, to the server that owns this directory.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fresh primary with its schema and accounts, and four streaming
/// standbys named s1..s4 with the primary's quorum over them.
fn start(s: &Setup, accounts: u64, purchase: Purchase) -> anyhow::Result<Instances> {
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    std::fs::create_dir_all(&s.dir)?;
    // The servers' user writes under it only in its own directories, but
    // must be able to reach them.
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755))?;
    for i in 0..INSTANCES {
        let d = s.data_dir(i);
        if d.exists() {
            stop_leftover(&d);
            std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
        }
        std::fs::create_dir(&d)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        s.give(&d)?;
    }
    let out = s
        .server_cmd("initdb")
        .arg("-D")
        .arg(s.data_dir(0))
        .args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .args(["--no-sync"])
        .output()
        .context("running initdb")?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if s.tls.is_some() {
        // Standbys copy it with the rest of the primary's directory.
        let hba = s.data_dir(0).join("pg_hba.conf");
        std::fs::write(&hba, TLS_HBA)?;
        s.give(&hba)?;
    }
    let mut inst = Instances {
        children: vec![s.start(0)?],
    };
    s.wait_ready(0, &mut inst.children[0], deadline)?;
    s.sql(
        0,
        &format!(
            "CREATE TABLE accounts (account_id int PRIMARY KEY, balance numeric(14,2) NOT NULL, \
             last_seq int NOT NULL, summary text NOT NULL, status text NOT NULL DEFAULT 'active', \
             tariff_id int NOT NULL, branch text NOT NULL, year_units numeric(14,3) NOT NULL); \
             CREATE TABLE records (account_id int NOT NULL, seq int NOT NULL, ts timestamptz NOT NULL, \
             amount numeric(14,2) NOT NULL, units numeric(14,3), invoice_no bigint, request_id text, \
             body text NOT NULL, PRIMARY KEY (account_id, seq)); \
             INSERT INTO accounts (account_id, balance, last_seq, summary, tariff_id, branch, year_units) \
             SELECT g, 0, 0, repeat('s', {SUMMARY_BYTES}), g % {TARIFFS} + 1, 'B' || g % {BRANCHES}, \
             (g * 37) % 5000 FROM generate_series(1, {accounts}) g;"
        ),
    )?;
    if purchase == Purchase::Full {
        s.sql(0, &full_schema(accounts))?;
    }
    // Each on its own: neither runs inside the transaction block psql
    // makes of several statements.
    s.sql(0, "VACUUM ANALYZE")?;
    s.sql(0, "CHECKPOINT")?;
    for i in 1..INSTANCES {
        let out = s
            .server_cmd("pg_basebackup")
            .args(s.conn_args(0))
            .arg("-D")
            .arg(s.data_dir(i))
            .args(["-X", "stream", "-c", "fast", "--no-sync"])
            .output()
            .context("running pg_basebackup")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_basebackup for standby s{i} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let d = s.data_dir(i);
        std::fs::write(d.join("standby.signal"), "")?;
        s.give(&d.join("standby.signal"))?;
        let auto = d.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
        let ssl = match &s.tls {
            Some(t) => t.conninfo(),
            None => "sslmode=disable".into(),
        };
        conf.push_str(&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=s{i} {ssl}'\n",
            s.port(0)
        ));
        std::fs::write(&auto, conf)?;
        s.give(&auto)?;
        inst.children.push(s.start(i)?);
        let child = inst.children.last_mut().context("no child")?;
        s.wait_ready(i, child, deadline)?;
    }
    // Commits now wait for any two standbys' flush, which every standby
    // streaming must count in.
    s.sql(
        0,
        &format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{}'",
            sync_standby_names()
        ),
    )?;
    s.sql(0, "SELECT pg_reload_conf()")?;
    loop {
        let rows = s.sql(
            0,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'",
        )?;
        if rows == (INSTANCES - 1).to_string() {
            return Ok(inst);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the standbys did not all stream in the quorum within {START_TIMEOUT_MS} ms ({rows} did)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One statement per purchase: the account's balance and sequence updated
/// and a record inserted, in one transaction.
fn purchase_script() -> String {
    format!(
        "\\set aid random(1, :accounts)\n\
         \\set cents random(2000, 30000)\n\
         WITH a AS (UPDATE accounts SET balance = balance + :cents / 100.0, last_seq = last_seq + 1 \
         WHERE account_id = :aid RETURNING last_seq) \
         INSERT INTO records (account_id, seq, ts, amount, body) \
         SELECT :aid, a.last_seq, now(), :cents / 100.0, repeat('r', {RECORD_BODY_BYTES}) FROM a;\n"
    )
}

/// The full purchase: [`PURCHASE_FUNCTION`] with a fresh request id, the
/// account's card and the client as operator.
fn full_purchase_script() -> String {
    "\\set aid random(1, :accounts)\n\
     \\set cents random(2000, 30000)\n\
     \\set rid random(1, 9000000000000000000)\n\
     SELECT purchase('r' || :rid, 'C' || :aid, :cents / 100.0, 'op' || :client_id);\n"
        .to_string()
}

/// A card read: the account, then its newest records.
fn card_read_script() -> String {
    format!(
        "\\set aid random(1, :accounts)\n\
         SELECT balance, last_seq, summary FROM accounts WHERE account_id = :aid;\n\
         SELECT seq, ts, amount, body FROM records WHERE account_id = :aid ORDER BY seq DESC LIMIT {CARD_READ_RECORDS};\n"
    )
}

/// One script run's latency (µs) from a line of pgbench's transaction
/// log (`client transaction latency_us script epoch_s epoch_us ...`);
/// `Err` names how the transaction ended when it did not succeed.
fn log_latency(line: &str) -> Option<Result<u64, String>> {
    let field = line.split_whitespace().nth(2)?;
    Some(field.parse::<u64>().map_err(|_| field.to_uppercase()))
}

/// A number pgbench printed after `label` ("number of failed
/// transactions: 0 (0.000%)").
fn printed_count(out: &str, label: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// pgbench's transaction logs in `dir` written under `prefix`
/// (`prefix.<pid>`, `prefix.<pid>.<thread>`).
fn log_files(dir: &Path, prefix: &str) -> anyhow::Result<Vec<PathBuf>> {
    let head = format!("{prefix}.");
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with(&head))
        .map(|f| f.path())
        .collect())
}

/// Runs pgbench with `script` against the primary; the statistics under
/// `name` and pgbench's count of processed transactions.
fn pgbench(
    s: &Setup,
    name: &str,
    script: &str,
    clients: usize,
    duration_s: u64,
    accounts: u64,
) -> anyhow::Result<(Stats, u64, f64)> {
    let script_path = s.dir.join(format!("{name}.sql"));
    std::fs::write(&script_path, script)?;
    let prefix = format!("pgbench-{name}");
    for f in log_files(&s.dir, &prefix)? {
        std::fs::remove_file(f)?;
    }
    let started = Instant::now();
    let out = s
        .client_cmd("pgbench")
        .args(s.conn_args(0))
        .args(["-n", "-j", "1", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={prefix}"))
        .args(["-c", &clients.to_string(), "-T", &duration_s.to_string()])
        .args(["-D", &format!("accounts={accounts}"), "-f"])
        .arg(&script_path)
        .arg("postgres")
        .current_dir(&s.dir)
        .output()
        .context("running pgbench")?;
    let secs = started.elapsed().as_secs_f64();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let processed = printed_count(&printed, "number of transactions actually processed:")
        .context("pgbench did not print its count")?;
    let mut stats = Stats::default();
    for f in log_files(&s.dir, &prefix)? {
        for line in std::fs::read_to_string(f)?.lines() {
            match log_latency(line) {
                Some(Ok(us)) => stats.ok(name, us),
                Some(Err(how)) => stats.err(name, how),
                None => {}
            }
        }
    }
    anyhow::ensure!(
        stats.count(name) == processed,
        "pgbench's log holds {} transactions, its summary {processed}",
        stats.count(name)
    );
    Ok((stats, processed, secs))
}

/// The processes of each instance: the postmaster and its children.
fn instance_pids(inst: &Instances) -> Vec<(u32, Vec<u32>)> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else {
                continue;
            };
            // Field 4: the parent's pid.
            if let Some(ppid) = stat_field(&stat, 4).and_then(|p| u32::try_from(p).ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    inst.children
        .iter()
        .map(|c| (c.id(), children.remove(&c.id()).unwrap_or_default()))
        .collect()
}

/// What a PostgreSQL process does, from its title (`postgres: walsender
/// ...`): the thread-group names of the CPU figures.
fn role(pid: u32) -> String {
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let title = String::from_utf8_lossy(&title).replace('\0', " ");
    let rest = title.trim().strip_prefix("postgres: ").unwrap_or("");
    let word = rest.split_whitespace().next().unwrap_or("");
    match word {
        "walsender" | "walreceiver" | "walwriter" | "checkpointer" | "startup" => word.into(),
        // A client connection: "postgres: <user> <db> <host> <state>".
        _ if rest.starts_with("postgres postgres") => "backend".into(),
        _ => "other".into(),
    }
}

/// Each instance's CPU as one "node": the postmaster with the children it
/// reaped (`cutime`, `cstime`: pgbench's connections end before the last
/// sample) and its live children, by role.
fn cpu_sample(inst: &Instances) -> CpuSample {
    let mut nodes = BTreeMap::new();
    for (i, (pm, kids)) in instance_pids(inst).into_iter().enumerate() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pm}/stat")) else {
            continue;
        };
        let own = stat_ticks(&stat).unwrap_or(0);
        // Fields 16 and 17: the CPU of the children it waited for.
        let reaped = stat_field(&stat, 16).unwrap_or(0) + stat_field(&stat, 17).unwrap_or(0);
        let mut ticks = own + reaped;
        let mut by_role: BTreeMap<String, u64> = BTreeMap::new();
        *by_role.entry("backend".into()).or_insert(0) += reaped;
        for k in kids {
            let Some(t) = std::fs::read_to_string(format!("/proc/{k}/stat"))
                .ok()
                .and_then(|s| stat_ticks(&s))
            else {
                continue;
            };
            ticks += t;
            *by_role.entry(role(k)).or_insert(0) += t;
        }
        nodes.insert(
            i as u64,
            ProcessCpu {
                pid: pm,
                ticks,
                by_thread: by_role,
            },
        );
    }
    CpuSample {
        at: Instant::now(),
        nodes,
    }
}

/// What the full purchases left agrees with their count: one stored
/// outcome and one invoice number each, the invoice numbers gapless, and
/// each dimension's report rows summing to the records, to the cent.
fn check_full_purchases(s: &Setup, processed: u64) -> anyhow::Result<()> {
    let row = s.sql(
        0,
        "SELECT (SELECT count(*) FROM requests) || ' ' || (SELECT n FROM counters WHERE name = 'invoice') \
         || ' ' || (SELECT count(DISTINCT invoice_no) FROM records) || ' ' || (SELECT coalesce(max(invoice_no), 0) FROM records)",
    )?;
    let want = format!("{processed} {processed} {processed} {processed}");
    anyhow::ensure!(
        row == want,
        "{processed} full purchases acknowledged, but requests, invoice counter, distinct and last invoice numbers are {row}"
    );
    let sums = s.sql(
        0,
        "SELECT string_agg(d || '=' || n || '/' || a, ' ' ORDER BY d) FROM \
         (SELECT dim AS d, sum(count) AS n, sum(amount) AS a FROM report_rows GROUP BY dim) x",
    )?;
    let total = s.sql(
        0,
        "SELECT count(*) || '/' || coalesce(sum(amount), 0.00) FROM records",
    )?;
    let want = ["b", "k", "o", "t"]
        .iter()
        .map(|d| format!("{d}={total}"))
        .collect::<Vec<_>>()
        .join(" ");
    anyhow::ensure!(
        sums == want,
        "report rows {sums}, records {total}: the reports do not equal their records"
    );
    Ok(())
}

/// Waits until every standby has replayed what the primary wrote, then
/// checks that each holds `records` records: what was acknowledged was
/// replicated. The number of standbys checked.
fn check_standbys(s: &Setup, records: u64) -> anyhow::Result<usize> {
    let lsn = s.sql(0, "SELECT pg_current_wal_lsn()")?;
    let deadline = Instant::now() + Duration::from_millis(CATCH_UP_TIMEOUT_MS);
    for i in 1..INSTANCES {
        loop {
            let caught_up = s.sql(
                i,
                &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
            )?;
            if caught_up == "t" {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "standby s{i} did not replay up to {lsn} within {CATCH_UP_TIMEOUT_MS} ms"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let n: u64 = s.sql(i, "SELECT count(*) FROM records")?.parse()?;
        anyhow::ensure!(
            n == records,
            "standby s{i} holds {n} records, the primary {records}"
        );
    }
    Ok(INSTANCES - 1)
}

/// What the connections ran over, from the primary's `pg_stat_ssl`: the
/// standbys' WAL streams over TLS (all four with `--tls`, none without),
/// a client's connection (its protocol and cipher), and, with `--tls`, a
/// plaintext connection refused. An error when any of it is not what
/// `--tls` asked for.
fn check_transport(s: &Setup) -> anyhow::Result<Value> {
    let streams_tls: usize = s
        .sql(
            0,
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl l USING (pid) WHERE l.ssl",
        )?
        .parse()
        .context("counting the standbys' TLS streams")?;
    let client = s.sql(
        0,
        "SELECT CASE WHEN ssl THEN version || ' ' || cipher ELSE 'plaintext' END \
         FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )?;
    let want_streams = if s.tls.is_some() { INSTANCES - 1 } else { 0 };
    anyhow::ensure!(
        streams_tls == want_streams,
        "{streams_tls} of the standbys' WAL streams are TLS, {want_streams} should be"
    );
    anyhow::ensure!(
        (client != "plaintext") == s.tls.is_some(),
        "a client connection ran over {client}"
    );
    let plaintext_refused = match &s.tls {
        Some(_) => {
            let out = s
                .client_cmd("psql")
                .env("PGSSLMODE", "disable")
                .args(["-X", "-q", "-A", "-t"])
                .args(s.conn_args(0))
                .args(["-d", "postgres", "-c", "SELECT 1"])
                .output()
                .context("running psql")?;
            anyhow::ensure!(
                !out.status.success(),
                "a plaintext connection was accepted with --tls"
            );
            Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
        None => None,
    };
    Ok(json!({
        "tls": s.tls.is_some(),
        "standby_streams_tls": streams_tls,
        "client_connection": client,
        "plaintext_refused": plaintext_refused,
    }))
}

/// One timed pgbench run: its script, clients and length.
struct Phase<'a> {
    name: &'a str,
    per_op: &'a str,
    script: &'a str,
    clients: usize,
    duration_s: u64,
    accounts: u64,
}

/// What a phase measured: latencies, pgbench's count, its seconds, and
/// the instances' CPU over it.
struct Measured {
    stats: Stats,
    processed: u64,
    secs: f64,
    node_cpu: Value,
}

/// Runs a phase with the instances' CPU sampled around it; at least one
/// transaction must succeed.
fn measured(s: &Setup, inst: &Instances, p: Phase<'_>) -> anyhow::Result<Measured> {
    let before = cpu_sample(inst);
    let (stats, processed, secs) =
        pgbench(s, p.name, p.script, p.clients, p.duration_s, p.accounts)?;
    // pgbench's connections end with it; their processes are reaped (and
    // counted in the postmaster's children's time) a moment later.
    std::thread::sleep(Duration::from_millis(REAP_SETTLE_MS));
    let after = cpu_sample(inst);
    anyhow::ensure!(processed > 0, "no {} transaction succeeded", p.name);
    Ok(Measured {
        node_cpu: cpu_json(&before, &after, p.per_op, processed),
        stats,
        processed,
        secs,
    })
}

pub fn run(a: PostgresArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        (1..=CLIENTS_MAX).contains(&a.clients),
        "--clients: 1..={CLIENTS_MAX}"
    );
    anyhow::ensure!(a.duration_s >= 1, "--duration-s: at least 1");
    anyhow::ensure!(a.accounts >= 1, "--accounts: at least 1");
    anyhow::ensure!(
        a.base_port.is_multiple_of(2) && a.base_port < 60_000,
        "--base-port must be even and below 60000"
    );
    let bin = match &a.pg_bin_dir {
        Some(b) => b.clone(),
        None => find_bin_dir()?,
    };
    let version = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .with_context(|| format!("cannot run {}", bin.join("postgres").display()))?;
    let user = server_user()?;
    let tls = match a.tls {
        true => Some(write_tls(&a.dir, user)?),
        false => None,
    };
    let s = Setup {
        bin,
        user,
        dir: a.dir.clone(),
        base_port: a.base_port,
        tls,
    };
    if !a.json {
        eprintln!(
            "postgres: {version}, a primary and {} standbys (quorum of {SYNC_STANDBYS}), {} accounts, {}; starting",
            INSTANCES - 1,
            a.accounts,
            if a.tls { "TLS" } else { "plaintext" }
        );
    }
    let inst = start(&s, a.accounts, a.purchase)?;
    let transport = check_transport(&s)?;
    let purchase = match a.purchase {
        Purchase::Minimal => purchase_script(),
        Purchase::Full => full_purchase_script(),
    };
    if !a.json {
        eprintln!(
            "postgres: {} pgbench clients for {} s",
            a.clients, a.duration_s
        );
    }
    let purchases = measured(
        &s,
        &inst,
        Phase {
            name: "pg_purchase",
            per_op: "purchase",
            script: &purchase,
            clients: a.clients,
            duration_s: a.duration_s,
            accounts: a.accounts,
        },
    )?;
    let processed = purchases.processed;
    // Each purchase inserted one record and advanced one account's sequence.
    let records: u64 = s.sql(0, "SELECT count(*) FROM records")?.parse()?;
    let seq_sum: u64 = s
        .sql(0, "SELECT sum(last_seq) FROM accounts")?
        .parse()
        .context("reading the accounts' sequences")?;
    anyhow::ensure!(
        records == processed && seq_sum == processed,
        "{processed} purchases acknowledged, but {records} records and {seq_sum} sequence steps stored"
    );
    if a.purchase == Purchase::Full {
        check_full_purchases(&s, processed)?;
    }
    let standbys_checked = check_standbys(&s, records)?;
    let mut reads = Value::Null;
    let mut table = purchases.stats.table(purchases.secs);
    if a.reads_s > 0 {
        let r = measured(
            &s,
            &inst,
            Phase {
                name: "pg_card_read",
                per_op: "card read",
                script: &card_read_script(),
                clients: 1,
                duration_s: a.reads_s,
                accounts: a.accounts,
            },
        )?;
        reads = json!({
            "duration_s": r.secs,
            "ops": r.stats.to_json(r.secs),
            "node_cpu": r.node_cpu,
        });
        // Its own rate: the reads ran for their own seconds.
        table.push_str(
            &r.stats
                .table(r.secs)
                .lines()
                .skip(1)
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        );
    }
    let (stats, secs, node_cpu) = (purchases.stats, purchases.secs, purchases.node_cpu);
    let settings = json!({
        "version": version,
        "instances": INSTANCES,
        "synchronous_standbys": SYNC_STANDBYS,
        "primary_flags": s.flags(0),
        "synchronous_standby_names": sync_standby_names(),
        "purchase": format!("{:?}", a.purchase).to_lowercase(),
        "purchase_statement": purchase,
        "purchase_function": (a.purchase == Purchase::Full).then_some(PURCHASE_FUNCTION),
        "card_read": card_read_script(),
        "driver": format!("pgbench -n -j 1 -M prepared -c {} -T {}", a.clients, a.duration_s),
        "rss": "each instance's postmaster process",
        "transport": transport,
    });
    let usage = usage_json(
        inst.children
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, Some(c.id()), s.data_dir(i))),
    );
    let v = json!({
        "workload": "postgres",
        "clients": a.clients,
        "duration_s": secs,
        "ops": stats.to_json(secs),
        "table": table,
        "extra": {
            "acknowledged": processed,
            "records": records,
            "standbys_checked": standbys_checked,
            "card_reads": reads,
        },
        "node_cpu": node_cpu,
        "usage": usage,
        "settings": settings,
        "machine": machine(&a.dir),
    });
    drop(inst);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_log_lines_give_latency_or_how_they_failed() {
        assert_eq!(log_latency("3 17 1843 0 1732350000 123456"), Some(Ok(1843)));
        assert_eq!(
            log_latency("3 18 failed 0 1732350000 223456"),
            Some(Err("FAILED".into()))
        );
        assert_eq!(log_latency("3 18"), None);
    }

    #[test]
    fn pgbench_counts_are_read_after_their_label() {
        let out = "transaction type: x.sql\nnumber of transactions actually processed: 1234\nnumber of failed transactions: 0 (0.000%)\n";
        assert_eq!(
            printed_count(out, "number of transactions actually processed:"),
            Some(1234)
        );
        assert_eq!(
            printed_count(out, "number of failed transactions:"),
            Some(0)
        );
        assert_eq!(printed_count(out, "latency average ="), None);
    }

    #[test]
    fn the_primary_waits_for_any_two_of_four_standbys() {
        let s = Setup {
            bin: PathBuf::new(),
            user: None,
            dir: PathBuf::from("/x"),
            base_port: 13_500,
            tls: None,
        };
        assert_eq!(sync_standby_names(), "ANY 2 (s1, s2, s3, s4)");
        let primary = s.flags(0);
        assert!(primary.contains(&"synchronous_commit=on".to_string()));
        assert!(primary.contains(&"fsync=on".to_string()));
        assert!(primary.contains(&"port=13501".to_string()));
        assert!(primary.contains(&"ssl=off".to_string()));
        assert!(s.flags(3).contains(&"port=13507".to_string()));
    }

    #[test]
    fn with_tls_the_servers_present_and_the_clients_check_certificates() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tls = write_tls(tmp.path(), None).expect("certificates");
        let s = Setup {
            bin: PathBuf::new(),
            user: None,
            dir: tmp.path().to_path_buf(),
            base_port: 13_500,
            tls: Some(tls),
        };
        let flags = s.flags(0);
        assert!(flags.contains(&"ssl=on".to_string()), "{flags:?}");
        for (flag, file) in [
            ("ssl_cert_file", "server.pem"),
            ("ssl_key_file", "server.key"),
            ("ssl_ca_file", "ca.pem"),
        ] {
            let path = tmp.path().join("tls").join(file);
            assert!(path.exists(), "{}", path.display());
            assert!(
                flags.contains(&format!("{flag}={}", path.display())),
                "{flags:?}"
            );
        }
        // Keys are their owner's alone (libpq refuses a key others read).
        for key in ["server.key", "client.key"] {
            let mode = std::fs::metadata(tmp.path().join("tls").join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{key}: {mode:o}");
        }
        let conninfo = s.tls.as_ref().map(|t| t.conninfo()).unwrap_or_default();
        assert!(conninfo.starts_with("sslmode=verify-full "), "{conninfo}");
        assert!(conninfo.contains("client.key"), "{conninfo}");
        // No plaintext line: only `local` and `hostssl` entries.
        for line in TLS_HBA.lines().filter(|l| !l.starts_with('#')) {
            let kind = line.split_whitespace().next().unwrap_or("");
            assert!(kind == "local" || kind == "hostssl", "{line}");
        }
    }

    #[test]
    fn the_full_purchase_calls_the_function_with_a_fresh_request_id() {
        let script = full_purchase_script();
        assert!(script.contains("SELECT purchase('r' || :rid, 'C' || :aid"));
        assert!(PURCHASE_FUNCTION.contains(&format!("repeat('r', {RECORD_BODY_BYTES})")));
        assert!(PURCHASE_FUNCTION.contains("UPDATE counters SET n = n + 1"));
        assert!(full_schema(10).contains("generate_series(1, 10)"));
    }

    #[test]
    fn scripts_write_a_record_of_the_named_size_and_read_twenty() {
        assert!(purchase_script().contains(&format!("repeat('r', {RECORD_BODY_BYTES})")));
        assert!(purchase_script().contains("WITH a AS (UPDATE accounts"));
        assert!(card_read_script().contains("ORDER BY seq DESC LIMIT 20"));
    }
}
