//! Monitoring: every node's `/metrics` passes `promtool check metrics`
//! and carries the process, build and business metrics; the alert rules in
//! deploy/monitoring pass `promtool check rules` and their unit tests, and
//! every alert is tested firing and quiet; a real Prometheus scrapes a real
//! five-node cluster, names its leader, and sees a killed node go down.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package,
//! which deploy/setup.sh installs.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// `/usr/bin/<name>` (or `<name>` on the PATH); fails, never skips, when
/// it is missing.
fn tool(name: &str) -> PathBuf {
    let usr = Path::new("/usr/bin").join(name);
    if usr.is_file() {
        return usr;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "`{name}` is not installed: run deploy/setup.sh (it installs Debian's prometheus package)"
    );
}

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring")
}

/// The body of a raw HTTP/1.1 answer (content-length or chunked).
fn http_body(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").expect("headers end");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// `promtool check metrics` on an exposition: (success, its output).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The value of the sample `name{labels}` (exactly as exported).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Metric family names in an exposition (from its TYPE lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `billdb_*` and `process_*` names an expression text mentions, with a
/// histogram's `_bucket`/`_sum`/`_count` series taken back to its family.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("billdb_") || w.starts_with("process_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

/// Business traffic through the HTTP and gRPC APIs: an account, a card,
/// a purchase, a payment, an invoice printed and reprinted, and a refusal
/// (a second card for the account).
fn business(c: &TestCluster) {
    let ops = c.http(1);
    let counter = c.http_as(2, "counter");
    ops.put_json(
        "/v1/tariffs/TM",
        &json!({"request_id": "tariff-TM", "kind": "flat", "price": "0.50",
               "effective_from": "2000-01-01T00:00:00Z"}),
    )
    .expect("tariff");
    ops.post(
        "/v1/accounts",
        &json!({"request_id": "open-M1", "account_id": "M1", "name": "Test",
                "branch": "B01", "utility": "electricity", "tariff_id": "TM"}),
    )
    .expect("open account");
    counter
        .post(
            "/v1/cards",
            &json!({"request_id": "card-M1", "account_id": "M1", "card_no": "CARD-M1"}),
        )
        .expect("issue card");
    let refused = counter
        .post(
            "/v1/cards",
            &json!({"request_id": "card-M1-again", "account_id": "M1", "card_no": "CARD-M2"}),
        )
        .expect_err("a second card is refused");
    assert_eq!(refused.code(), Some("CARD_ALREADY_ISSUED"), "{refused}");
    let bought = counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-M1", "card_no": "CARD-M1", "amount": "10.00"}),
        )
        .expect("purchase");
    // A retry of the same purchase is answered, not counted again.
    counter
        .post(
            "/v1/purchases",
            &json!({"request_id": "buy-M1", "card_no": "CARD-M1", "amount": "10.00"}),
        )
        .expect("purchase retried");
    pay(&ops, "pay-M1", "M1", "25.00").expect("payment");
    let invoice = bought["record"]["invoice_no"]
        .as_str()
        .expect("invoice number")
        .to_string();
    for (rid, reprint) in [("print-M1", false), ("print-M1-again", true)] {
        let printed = counter
            .post(
                &format!("/v1/invoices/{invoice}/print"),
                &json!({"request_id": rid}),
            )
            .expect("print");
        assert_eq!(printed["reprint"], reprint);
    }
    // A linearizable read on every node.
    for n in 1..=5 {
        let account = c.http(n).get("/v1/accounts/M1").expect("read");
        assert_eq!(account["account_id"], "M1", "{account}");
    }
    // A gRPC call, for the gRPC request metrics.
    let token = c.c.token("ops").expect("token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use billdb_api::pb;
        let mut g = pb::cluster_client::ClusterClient::new(c.grpc_channel(3).await);
        g.status(authed(pb::StatusRequest {}, &token))
            .await
            .expect("gRPC status");
        let e = g
            .status(tonic::Request::new(pb::StatusRequest {}))
            .await
            .expect_err("no token");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    });
}

#[test]
fn every_nodes_metrics_pass_promtool_and_carry_process_build_and_business_metrics() {
    let c = TestCluster::start(10000, 5);
    business(&c);
    c.wait_converged(&[1, 2, 3, 4, 5], Duration::from_secs(30));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let mut exported = BTreeSet::new();
    for n in 1..=5u64 {
        let text = http_body(&c.metrics_text(n));
        let (ok, said) = promtool_check_metrics(&text);
        assert!(
            ok && said.trim().is_empty(),
            "node {n}: promtool check metrics:\n{said}"
        );
        // Every family has HELP text.
        for family in families(&text) {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "node {n}: {family} has no HELP"
            );
        }
        exported.extend(families(&text));

        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(
                &text,
                &format!("billdb_build_info{{version=\"{version}\"}}")
            ),
            Some(1.0),
            "node {n}"
        );
        let rss = sample(&text, "process_resident_memory_bytes").expect("rss");
        assert!(rss > 1e6, "node {n}: resident memory {rss}");
        let fds = sample(&text, "process_open_fds").expect("open fds");
        let max_fds = sample(&text, "process_max_fds").expect("max fds");
        assert!(
            fds >= 10.0 && fds < max_fds,
            "node {n}: {fds} fds of {max_fds}"
        );
        let cpu = sample(&text, "process_cpu_seconds_total").expect("cpu");
        assert!(cpu > 0.0, "node {n}: cpu {cpu}");
        let started = sample(&text, "process_start_time_seconds").expect("start time");
        assert!(
            started <= now + 1.0 && started > now - 600.0,
            "node {n}: started {started}, now {now}"
        );
        // Every node applies every command: the same business counts.
        assert_eq!(
            sample(&text, "billdb_purchases_total"),
            Some(1.0),
            "node {n}"
        );
        assert_eq!(
            sample(&text, "billdb_payments_total"),
            Some(1.0),
            "node {n}"
        );
        assert_eq!(
            sample(&text, "billdb_invoices_issued_total"),
            Some(1.0),
            "node {n}"
        );
        assert_eq!(
            sample(
                &text,
                "billdb_refusals_total{code=\"CARD_ALREADY_ISSUED\",op=\"issue_card\"}"
            ),
            Some(1.0),
            "node {n}"
        );
        assert_eq!(
            sample(&text, "billdb_storage_failed"),
            Some(0.0),
            "node {n}"
        );
        let expiry = sample(&text, "billdb_tls_certificate_expiry_timestamp_seconds")
            .expect("certificate expiry");
        assert!(
            expiry > now + 86_400.0,
            "node {n}: certificate expires {expiry}"
        );
        let free = sample(&text, "billdb_data_dir_free_bytes").expect("free bytes");
        let capacity = sample(&text, "billdb_data_dir_capacity_bytes").expect("capacity");
        assert!(
            free > 0.0 && free <= capacity,
            "node {n}: {free} of {capacity}"
        );
        let leader = sample(&text, "billdb_raft_is_leader").expect("is_leader");
        assert_eq!(
            leader == 1.0,
            n == c.leader(),
            "node {n}: is_leader {leader}"
        );
    }
    // The gRPC calls on node 3, by method and code.
    let text = http_body(&c.metrics_text(3));
    for code in ["OK", "UNAUTHENTICATED"] {
        let series = format!(
            "billdb_grpc_request_duration_seconds_count{{method=\"/billdb.v1.Cluster/Status\",code=\"{code}\"}}"
        );
        assert_eq!(sample(&text, &series), Some(1.0), "{series} in:\n{text}");
    }
    // Every metric the alerts and the dashboard read is one the nodes export.
    let dir = monitoring_dir();
    for file in ["billdb-alerts.yml", "grafana-dashboard.json"] {
        let body = std::fs::read_to_string(dir.join(file)).expect("monitoring file");
        let used = metric_names_in(&body);
        assert!(used.len() > 10, "{file}: {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} reads metrics no node exports: {missing:?}"
        );
    }
}

/// An alert's unit-test expectations: (fires somewhere, quiet somewhere).
fn alert_expectations(tests: &str) -> std::collections::BTreeMap<String, (bool, bool)> {
    let mut seen = std::collections::BTreeMap::new();
    for case in tests.split("- eval_time:").skip(1) {
        let name = case
            .lines()
            .find_map(|l| l.trim().strip_prefix("alertname: "))
            .expect("alertname")
            .trim()
            .to_string();
        let quiet = case.contains("exp_alerts: []");
        let fires = case.contains("- exp_labels:");
        let e: &mut (bool, bool) = seen.entry(name).or_default();
        e.0 |= fires;
        e.1 |= quiet;
    }
    seen
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_is_tested_firing_and_quiet() {
    let dir = monitoring_dir();
    let run = |args: &[&str]| {
        let out = Command::new(tool("promtool"))
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{said}");
        said
    };
    let said = run(&["check", "rules", "billdb-alerts.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");
    let said = run(&["test", "rules", "billdb-alerts.test.yml"]);
    assert!(said.contains("SUCCESS"), "{said}");

    let rules = std::fs::read_to_string(dir.join("billdb-alerts.yml")).expect("rules");
    let alerts: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|s| s.trim().to_string())
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for must in [
        "BilldbNodeDown",
        "BilldbNoLeader",
        "BilldbApplyLag",
        "BilldbFsyncSlow",
        "BilldbDiskNearlyFull",
        "BilldbCertificateExpiring",
        "BilldbStorageFailed",
        "BilldbCorruptionDetected",
    ] {
        assert!(alerts.contains(must), "{must} missing from {alerts:?}");
    }
    let tests = std::fs::read_to_string(dir.join("billdb-alerts.test.yml")).expect("tests");
    let tested = alert_expectations(&tests);
    for alert in &alerts {
        assert_eq!(
            tested.get(alert),
            Some(&(true, true)),
            "{alert}: needs a unit test where it fires and one where it stays quiet"
        );
    }
    // Every alert points at its runbook section in docs/OPERATIONS.md.
    let ops = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md"),
    )
    .expect("OPERATIONS.md");
    for alert in &alerts {
        assert!(
            ops.contains(&format!("#### {alert}")),
            "docs/OPERATIONS.md has no runbook heading for {alert}"
        );
    }
    // The example Prometheus configuration loads.
    let said = Command::new(tool("promtool"))
        .args(["check", "config", "--syntax-only", "prometheus.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(
        said.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&said.stdout),
        String::from_utf8_lossy(&said.stderr)
    );
}

/// A Prometheus server on 127.0.0.1, killed on drop; its data in a tempdir.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(port: u16, targets: &[String], ca_file: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = monitoring_dir().join("billdb-alerts.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: billdb\n    scheme: https\n    tls_config:\n      ca_file: '{}'\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            ca_file.display(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for("prometheus ready", Duration::from_secs(60), || {
            p.get("/-/ready").ok().filter(|(code, _)| *code == 200)
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` from this Prometheus: (status, body).
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.addr
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        let code = answer
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, http_body(&answer)))
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = self
            .get(&format!("/api/v1/query?query={encoded}"))
            .expect("query");
        assert_eq!(code, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The `instance` labels of a query's result.
    fn instances(&self, promql: &str) -> BTreeSet<String> {
        self.query(promql)
            .iter()
            .filter_map(|r| r["metric"]["instance"].as_str().map(str::to_string))
            .collect()
    }
}

#[test]
fn a_real_prometheus_scrapes_the_cluster_names_the_leader_and_sees_a_killed_node_go_down() {
    let c = TestCluster::start(10500, 5);
    let targets: Vec<String> =
        c.c.node_ids()
            .into_iter()
            .map(|n| c.c.http_addr(n).expect("addr"))
            .collect();
    let prom = Prometheus::start(10990, &targets, &c.c.ca_bundle_path());

    // All five targets up, scraped over TLS with the cluster CA.
    let all: BTreeSet<String> = targets.iter().cloned().collect();
    wait_for("five targets up", Duration::from_secs(60), || {
        (prom.instances("up{job=\"billdb\"} == 1") == all).then_some(())
    });
    let (_, t) = prom.get("/api/v1/targets").expect("targets");
    let t: Value = serde_json::from_str(&t).expect("targets JSON");
    let active = t["data"]["activeTargets"].as_array().expect("targets");
    assert_eq!(active.len(), 5, "{t}");
    for target in active {
        assert_eq!(target["health"], "up", "{target}");
        assert_eq!(
            target["scrapeUrl"]
                .as_str()
                .map(|u| u.starts_with("https://")),
            Some(true)
        );
    }

    // The leader query names the real leader.
    let leader = c.leader();
    let leader_addr = c.c.http_addr(leader).expect("addr");
    wait_for(
        "Prometheus names the leader",
        Duration::from_secs(30),
        || {
            let named = prom.instances("billdb_raft_is_leader{job=\"billdb\"} == 1");
            (named == BTreeSet::from([leader_addr.clone()])).then_some(())
        },
    );
    assert_eq!(c.leader(), leader, "leadership moved during the test");
    // A healthy cluster raises no alert, once every target has been
    // scraped (an evaluation before that sees fewer nodes, and leaves
    // pending alerts that clear with the next).
    // The disk alerts are right to fire when this machine's own disk (the
    // one the nodes' data directories are on) is that full: they are
    // excused only then, and the test says so.
    let (free, capacity) =
        billdb_node::storage_guard::fs_space(&c.c.data_dir(leader)).expect("statvfs");
    let free_ratio = free as f64 / capacity.max(1) as f64;
    let excused: Vec<&str> = [
        ("BilldbDiskNearlyFull", 0.15),
        ("BilldbDiskCriticallyFull", 0.05),
    ]
    .into_iter()
    .filter(|(_, below)| free_ratio < *below)
    .map(|(name, _)| name)
    .collect();
    if !excused.is_empty() {
        eprintln!(
            "this machine's disk has {:.1} % free: {excused:?} are correct here and excused",
            free_ratio * 100.0
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts: Vec<Value> = prom
            .query("ALERTS")
            .into_iter()
            .filter(|a| {
                !a["metric"]["alertname"]
                    .as_str()
                    .is_some_and(|n| excused.contains(&n))
            })
            .collect();
        if alerts.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts on a healthy cluster after 30 s: {alerts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Kill a follower: its target goes down and BilldbNodeDown goes
    // pending (it fires after its minute); the others stay up.
    let victim =
        c.c.node_ids()
            .into_iter()
            .find(|n| *n != leader)
            .expect("follower");
    let victim_addr = c.c.http_addr(victim).expect("addr");
    assert!(c.c.kill(victim).expect("kill"), "node {victim} was running");
    wait_for(
        "the killed node's target down",
        Duration::from_secs(30),
        || {
            (prom.instances("up{job=\"billdb\"} == 0") == BTreeSet::from([victim_addr.clone()]))
                .then_some(())
        },
    );
    let alert = wait_for("BilldbNodeDown pending", Duration::from_secs(30), || {
        prom.query("ALERTS{alertname=\"BilldbNodeDown\"}")
            .into_iter()
            .find(|a| a["metric"]["instance"] == victim_addr.as_str())
    });
    assert_eq!(alert["metric"]["alertstate"], "pending", "{alert}");
    assert_eq!(alert["metric"]["severity"], "warning", "{alert}");
    let others: BTreeSet<String> = all.iter().filter(|a| **a != victim_addr).cloned().collect();
    assert_eq!(prom.instances("up{job=\"billdb\"} == 1"), others);
    // Only the killed node is alerted on.
    let down: BTreeSet<String> = prom.instances("ALERTS{alertname=\"BilldbNodeDown\"}");
    assert_eq!(
        down,
        BTreeSet::from([victim_addr.clone()]),
        "{}",
        prom.log()
    );
    // Still the one leader, seen by Prometheus.
    let leader = c.leader();
    let leader_addr = c.c.http_addr(leader).expect("addr");
    wait_for(
        "Prometheus names the leader",
        Duration::from_secs(30),
        || {
            (prom.instances("billdb_raft_is_leader{job=\"billdb\"} == 1")
                == BTreeSet::from([leader_addr.clone()]))
            .then_some(())
        },
    );
    // After its minute the alert fires.
    let alert = wait_for("BilldbNodeDown firing", Duration::from_secs(120), || {
        prom.query("ALERTS{alertname=\"BilldbNodeDown\",alertstate=\"firing\"}")
            .into_iter()
            .find(|a| a["metric"]["instance"] == victim_addr.as_str())
    });
    assert_eq!(alert["value"][1], "1", "{alert}");
}
