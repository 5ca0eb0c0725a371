//! `billdb drill` against real five-node local clusters, as an operator
//! runs it: every scenario with the local executor (short durations), the
//! manual executor with this test playing the operator, a cluster that
//! loses an acknowledged write (the node's test-only fault point) reported
//! FAILED with the request named, `drill verify` accepting an untouched
//! report and refusing a changed number, the summary recorded in the
//! cluster, and the status page at `/` in headless Chromium (five members,
//! the leader, a killed node shown down within 5 s, the last drills).
//! The partition scenarios run on a cluster whose nodes have their own
//! loopback addresses (127.0.2.N), cut by iptables (root).
//! The restore rehearsal restores a backup into a scratch cluster.
//! Ports (all in the range deploy/setup.sh reserves): clusters on base
//! 32500, 33000, 33300, 33600, 39300, 39600 and the scratch cluster on
//! 39000 (HTTP B+1..5, gRPC B+101..105, Raft B+201..205).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use billdb_client::local::{LocalCluster, RaftTimings, find_node_bin};
use serde_json::Value;

fn billdb() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_billdb"))
}

/// A running, initialised five-node cluster in a temp dir (killed on drop).
struct Cluster {
    c: LocalCluster,
    dir: tempfile::TempDir,
}

fn cluster(base: u16, failpoints: bool) -> Cluster {
    cluster_with(base, failpoints, RaftTimings::default())
}

fn cluster_with(base: u16, failpoints: bool, raft: RaftTimings) -> Cluster {
    cluster_full(base, failpoints, raft, None)
}

fn cluster_full(
    base: u16,
    failpoints: bool,
    raft: RaftTimings,
    host_prefix: Option<&str>,
) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = find_node_bin(None).expect("billdb-node next to the test binary");
    let c = LocalCluster::create_on_hosts(&dir.path().join("c"), &node, base, 5, raft, host_prefix)
        .expect("create");
    c.set_kill_on_drop(true);
    if failpoints {
        c.enable_failpoints();
    }
    c.start_all().expect("start");
    c.wait_all_healthy(Duration::from_secs(30))
        .expect("healthy");
    c.init().expect("init");
    c.wait_leader(Duration::from_secs(30)).expect("leader");
    Cluster { c, dir }
}

impl Drop for Cluster {
    /// Every node the cluster's description names now (a drill may have
    /// added one) is killed, not only those this handle knew.
    fn drop(&mut self) {
        if let Ok(fresh) = LocalCluster::open(self.c.dir()) {
            fresh.set_kill_on_drop(true);
        }
    }
}

impl Cluster {
    /// Read the cluster's description again (a drill added a node).
    fn reopen(&mut self) {
        let fresh = LocalCluster::open(self.c.dir()).expect("open");
        fresh.set_kill_on_drop(true);
        self.c.set_kill_on_drop(false);
        self.c = fresh;
    }
    fn keys(&self) -> (PathBuf, PathBuf) {
        let prefix = self.dir.path().join("operator");
        if !prefix.with_extension("key").exists() {
            let (ok, out, err) = run(&["backup", "keygen", "--out", prefix.to_str().unwrap()]);
            assert!(ok, "keygen: {out} {err}");
        }
        (prefix.with_extension("key"), prefix.with_extension("pub"))
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("reports")
    }
    fn status(&self, n: u64) -> Value {
        self.c.admin(n).expect("admin").status().expect("status")
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(billdb())
        .args(args)
        .env_remove("BILLDB_TOKEN")
        .env_remove("BILLDB_CA")
        .env_remove("BILLDB_ENDPOINT")
        .output()
        .expect("billdb runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Those needing no network cut (the partitions have their own test).
const SCENARIOS: [&str; 5] = [
    "leader-kill",
    "two-down",
    "rolling-restart",
    "full-power-loss",
    "node-replace",
];

const SHORT: &[&str] = &[
    "--warmup-s",
    "1",
    "--down-s",
    "1",
    "--after-s",
    "1",
    "--json",
];

/// `billdb drill run SCENARIO --executor local`: (passed, the JSON answer).
fn drill_local(c: &Cluster, scenario: &str, operator: &str) -> (bool, Value, String) {
    let (key, _) = c.keys();
    let dir = c.c.dir().to_str().unwrap().to_string();
    let out = c.out();
    let mut args = vec![
        "drill",
        "run",
        scenario,
        "--dir",
        &dir,
        "--private-key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--operator",
        operator,
    ];
    args.extend_from_slice(SHORT);
    let (ok, stdout, stderr) = run(&args);
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("drill {scenario}: not JSON ({e}): {stdout}\n{stderr}"));
    (ok, v, stderr)
}

fn report_json(v: &Value) -> PathBuf {
    PathBuf::from(
        v["files"]
            .as_array()
            .expect("files")
            .iter()
            .filter_map(Value::as_str)
            .find(|f| f.ends_with(".json"))
            .expect("a .json report"),
    )
}

fn assert_clean(scenario: &str, v: &Value, stderr: &str) {
    assert_eq!(v["result"], "PASS", "{scenario}: {v:#}\n{stderr}");
    assert_eq!(v["verification"]["lost"], 0, "{scenario}: {v:#}");
    assert_eq!(v["verification"]["duplicated"], 0, "{scenario}: {v:#}");
    assert_eq!(
        v["verification"]["digests_equal"], true,
        "{scenario}: {v:#}"
    );
    assert!(
        v["measured"]["write_gap_ms"].as_u64().is_some(),
        "{scenario}: writes recovered: {v:#}"
    );
}

fn chromium(args: &[&str], profile: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The test cluster's own CA is not in Chromium's trust store.
            "--ignore-certificate-errors",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs (Debian package chromium: deploy/setup.sh installs it)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn page_url(c: &Cluster, n: u64) -> String {
    let token = c.c.token("auditor").expect("auditor token");
    format!("{}/#token={token}", c.c.http_url(n).expect("url"))
}

fn node_states(dom: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("data-node=\"") {
        rest = &rest[i + 11..];
        let id: u64 = rest[..rest.find('"').unwrap()].parse().unwrap();
        let j = rest.find("data-state=\"").unwrap() + 12;
        let state = rest[j..j + rest[j..].find('"').unwrap()].to_string();
        out.push((id, state));
    }
    out
}

/// Every scenario by the local executor, reports verified (and a changed
/// one refused), the summaries in the cluster and on the status page.
#[test]
fn every_scenario_passes_with_evidence_and_the_status_page_shows_it() {
    // Snapshots often and a short log behind them: faults land on snapshot
    // builds, and node-replace's fresh node must catch up by snapshot.
    let mut c = cluster_with(
        33000,
        false,
        RaftTimings {
            snapshot_logs_since_last: Some(200),
            logs_to_keep_after_snapshot: Some(20),
            ..RaftTimings::default()
        },
    );
    let mut reports = Vec::new();
    for scenario in SCENARIOS {
        let (ok, v, stderr) = drill_local(&c, scenario, "Drill Tester");
        assert!(ok, "{scenario}: exit status: {v:#}\n{stderr}");
        assert_clean(scenario, &v, &stderr);
        // Progress went to stderr as the drill ran.
        assert!(stderr.contains("phase: verify"), "{scenario}: {stderr}");
        reports.push((scenario, report_json(&v), v));
    }
    let (_, public) = c.keys();
    c.reopen();
    // node-replace: node 6 replaced a follower and caught up by snapshot.
    let (_, path, _) = reports.last().unwrap();
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let replaced = &doc["data"]["cluster"]["replaced"];
    assert_eq!(replaced["added"], 6, "{replaced}");
    assert!(
        replaced["new_node_snapshot_index_after_catch_up"]
            .as_u64()
            .is_some(),
        "caught up by snapshot: {replaced}"
    );
    let members: Vec<u64> = c.status(6)["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(members.len(), 5);
    assert!(
        members.contains(&6) && !members.contains(&replaced["removed"].as_u64().unwrap()),
        "{members:?}"
    );

    // The report: verified as written, as HTML too; a changed number refused.
    let (scenario, path, v) = &reports[0];
    let (ok, out, err) = run(&[
        "drill",
        "verify",
        path.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "verify: {out} {err}");
    for (s, p, _) in &reports[1..] {
        let (ok, out, err) = run(&[
            "drill",
            "verify",
            p.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ]);
        assert!(ok, "verify {s}: {out} {err}");
    }
    let html = path.with_extension("html");
    let text = std::fs::read_to_string(&html).expect("html report");
    assert!(
        text.contains("<svg") && !text.contains("src=\"http") && !text.contains("href=\"http"),
        "self-contained HTML with its chart"
    );
    let (ok, out, err) = run(&[
        "drill",
        "verify",
        html.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "verify html: {out} {err}");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["data"]["scenario"], *scenario);
    assert_eq!(doc["data"]["operator"], "Drill Tester");
    assert_eq!(
        doc["data"]["cluster"]["members"].as_array().map(Vec::len),
        Some(5)
    );
    let acked = doc["data"]["workload"]["acknowledged"].as_u64().unwrap();
    assert!(acked > 0);
    assert_eq!(v["verification"]["lost"], 0);
    doc["data"]["workload"]["acknowledged"] = Value::from(acked + 1);
    let changed = c.dir.path().join("changed.json");
    std::fs::write(&changed, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let (ok, out, err) = run(&[
        "drill",
        "verify",
        changed.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(!ok, "a changed number must be refused: {out}");
    assert!(err.contains("changed after signing"), "{err}");
    // Another operator's key does not verify it either.
    let other = c.dir.path().join("other");
    assert!(run(&["backup", "keygen", "--out", other.to_str().unwrap()]).0);
    let (ok, _, err) = run(&[
        "drill",
        "verify",
        path.to_str().unwrap(),
        "--public-key",
        other.with_extension("pub").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("signature"), "{err}");

    // Bad input changes nothing: an unknown scenario is refused before any fault.
    let leader_before = c.c.wait_leader(Duration::from_secs(10)).unwrap();
    let term_before = c.status(leader_before)["term"].as_u64();
    let (key, _) = c.keys();
    let (ok, _, err) = run(&[
        "drill",
        "run",
        "meteor-strike",
        "--dir",
        c.c.dir().to_str().unwrap(),
        "--private-key",
        key.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
    let dir = c.c.dir().to_str().unwrap().to_string();
    let (ok, _, err) = run(&[
        "drill",
        "run",
        "leader-kill",
        "--dir",
        &dir,
        "--private-key",
        key.to_str().unwrap(),
        "--writers",
        "0",
    ]);
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");
    let missing = c.dir.path().join("no-such.key");
    let (ok, _, err) = run(&[
        "drill",
        "run",
        "leader-kill",
        "--dir",
        &dir,
        "--private-key",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no-such.key"), "{err}");
    let (ok, _, err) = run(&[
        "drill",
        "run",
        "node-replace",
        "--executor",
        "manual",
        "--endpoint",
        &c.c.http_addr(leader_before).unwrap(),
        "--ca",
        c.c.ca_bundle_path().to_str().unwrap(),
        "--token",
        &c.c.token("ops").unwrap(),
        "--private-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("the local or compose executor"),
        "{err}"
    );
    assert_eq!(
        c.status(leader_before)["term"].as_u64(),
        term_before,
        "no fault was done"
    );
    assert_eq!(
        c.c.wait_leader(Duration::from_secs(10)).unwrap(),
        leader_before
    );

    // The cluster knows its last drill per scenario, on every node.
    let members: Vec<u64> = c.status(6)["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    for n in members.iter().copied() {
        let drills = c.status(n)["drills"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut names: Vec<&str> = drills
            .iter()
            .filter_map(|d| d["summary"]["scenario"].as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "full-power-loss",
                "leader-kill",
                "node-replace",
                "rolling-restart",
                "two-down"
            ],
            "node {n}"
        );
        for d in &drills {
            assert_eq!(d["summary"]["result"], "PASS");
            assert_eq!(d["summary"]["run_by"], "Drill Tester");
        }
    }

    // The status page in headless Chromium, served by the leader.
    let leader = c.c.wait_leader(Duration::from_secs(10)).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(
        &["--dump-dom", &page_url(&c, leader)],
        &profile.path().join("p1"),
    );
    let states = node_states(&dom);
    assert_eq!(states.len(), 5, "five members: {states:?}");
    assert!(states.iter().all(|(_, s)| s == "up"), "{states:?}");
    assert!(
        dom.contains(&format!("node {leader}")),
        "the leader is named"
    );
    for s in SCENARIOS {
        assert!(
            dom.contains(&format!("data-scenario=\"{s}\"")),
            "drill {s} on the page"
        );
    }
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("drill-status-page.png");
    chromium(
        &[
            "--window-size=1280,1400",
            &format!("--screenshot={}", shot.display()),
            &page_url(&c, leader),
        ],
        &profile.path().join("p2"),
    );
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot {}",
        shot.display()
    );
    // A stranger gets the empty shell, no data: the data needs a token.
    let stranger = chromium(
        &["--dump-dom", &c.c.http_url(leader).unwrap()],
        &profile.path().join("p3"),
    );
    assert!(
        node_states(&stranger).is_empty() && stranger.contains("id=\"login\""),
        "no data without a token"
    );

    // A killed follower is shown down within 5 s.
    let victim = members.iter().copied().find(|n| *n != leader).unwrap();
    c.c.kill(victim).unwrap();
    let killed = Instant::now();
    let mut k = 0;
    loop {
        k += 1;
        let dom = chromium(
            &["--dump-dom", &page_url(&c, leader)],
            &profile.path().join(format!("k{k}")),
        );
        if node_states(&dom).contains(&(victim, "down".to_string())) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "node {victim} not shown down within 5 s: {:?}",
            node_states(&dom)
        );
    }
    c.c.start(victim).unwrap();
}

/// The manual executor, with this test as the operator: it reads each
/// prompt, does what it says with the local cluster, and confirms.
#[test]
fn manual_executor_played_by_the_test() {
    let c = cluster(33300, false);
    let (key, public) = c.keys();
    let leader = c.c.wait_leader(Duration::from_secs(10)).unwrap();
    let out = c.out();
    let mut child = Command::new(billdb())
        .args(["drill", "run", "leader-kill", "--executor", "manual"])
        .args(["--endpoint", &c.c.http_addr(2).unwrap()])
        .args(["--ca", c.c.ca_bundle_path().to_str().unwrap()])
        .args([
            "--private-key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--operator", "Night Shift"])
        .args(SHORT)
        .env("BILLDB_TOKEN", c.c.token("ops").unwrap())
        .env_remove("BILLDB_CA")
        .env_remove("BILLDB_ENDPOINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("billdb drill");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut did = Vec::new();
    let mut last = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(what) = line.strip_prefix("ACTION: ") {
            let server = |s: &str| -> u64 {
                let i = s.find("server ").expect("names a server") + 7;
                s[i..]
                    .split(|ch: char| !ch.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            if what.starts_with("power off") {
                let n = server(what);
                c.c.kill(n).unwrap();
                did.push(format!("kill {n}"));
            } else if what.starts_with("power on") {
                let n = server(what);
                c.c.start(n).unwrap();
                did.push(format!("start {n}"));
            } else if what.starts_with("type `done`") {
                writeln!(stdin, "done").unwrap();
                stdin.flush().unwrap();
            } else {
                panic!("unexpected prompt: {what}");
            }
        } else if !line.trim().is_empty() {
            last = line;
        }
    }
    let status = child.wait().unwrap();
    assert_eq!(
        did,
        [format!("kill {leader}"), format!("start {leader}")],
        "told to power off the leader, then on"
    );
    let v: Value = serde_json::from_str(last.trim()).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert!(status.success(), "{v:#}");
    assert_clean("leader-kill (manual)", &v, "");
    let path = report_json(&v);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["data"]["executor"], "manual");
    assert_eq!(doc["data"]["operator"], "Night Shift");
    let (ok, out, err) = run(&[
        "drill",
        "verify",
        path.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "{out} {err}");

    // POST /v1/drills: bad input and the wrong role are refused with a
    // code and change nothing.
    let ops = c.c.admin(2).unwrap();
    let before = ops.get("/v1/drills").unwrap();
    assert_eq!(
        before["drills"][0]["summary"]["run_by"], "Night Shift",
        "{before}"
    );
    let good = serde_json::json!({
        "request_id": "bad-drill-1", "scenario": "leader-kill", "result": "PASS",
        "started_ms": 1_796_000_000_000i64, "write_gap_ms": 1, "read_gap_ms": 1, "health_ms": 1,
        "acknowledged": 1, "lost": 0, "duplicated": 0, "digests_equal": true,
        "report_sha256": "ab".repeat(32), "run_by": "someone"
    });
    let mut cases = Vec::new();
    for (field, bad) in [
        ("result", Value::from("MAYBE")),
        ("report_sha256", Value::from("xyz")),
        ("scenario", Value::from("no spaces allowed")),
        ("extra", Value::from(1)),
        ("write_gap_ms", Value::from(-1)),
        ("health_ms", Value::from(100_000_000_000u64)),
    ] {
        let mut v = good.clone();
        v[field] = bad;
        cases.push(v);
    }
    for body in cases {
        let e = ops.post("/v1/drills", &body).expect_err("refused");
        assert_eq!(e.code(), Some("INVALID_ARGUMENT"), "{body}: {e}");
    }
    let auditor =
        c.c.http_client(2, Duration::from_secs(5))
            .unwrap()
            .with_token(Some(c.c.token("auditor").unwrap()));
    let e = auditor
        .post("/v1/drills", &good)
        .expect_err("an auditor may not record a drill");
    assert_eq!(e.code(), Some("PERMISSION_DENIED"), "{e}");
    assert_eq!(
        auditor.get("/v1/drills").unwrap(),
        before,
        "nothing changed; an auditor reads drills"
    );
    let stranger = c.c.http_client(2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        stranger.get("/v1/drills").expect_err("no token").code(),
        Some("UNAUTHENTICATED")
    );
}

/// A cluster that acknowledges a write it never wrote (the node's
/// test-only fault point, on every node): the drill is FAILED, names the
/// missing request, exits 1, and the cluster records the FAILED drill.
#[test]
fn a_lost_acknowledged_write_fails_the_drill_and_is_named() {
    let c = cluster(33600, true);
    for n in c.c.node_ids() {
        std::fs::write(
            c.c.data_dir(n)
                .join(billdb_api::failpoints::ACK_WITHOUT_WRITE_FILE),
            "-w0-6",
        )
        .unwrap();
    }
    let (ok, v, stderr) = drill_local(&c, "leader-kill", "Drill Tester");
    assert!(!ok, "a drill that lost a write must fail: {v:#}");
    assert_eq!(v["result"], "FAILED", "{v:#}\n{stderr}");
    let fired: Vec<String> =
        c.c.node_ids()
            .into_iter()
            .filter_map(|n| {
                std::fs::read_to_string(
                    c.c.data_dir(n)
                        .join(billdb_api::failpoints::ACK_WITHOUT_WRITE_FIRED_FILE),
                )
                .ok()
            })
            .collect();
    assert_eq!(fired.len(), 1, "the fault point fired once: {fired:?}");
    let lost: Vec<&str> = v["verification"]["lost_requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    assert_eq!(lost, [fired[0].as_str()], "{v:#}");
    assert_eq!(v["verification"]["lost"], 1);
    let failures = v["failures"].to_string();
    assert!(
        failures.contains(&fired[0]) && failures.contains("RPO"),
        "{failures}"
    );
    let leader = c.c.wait_leader(Duration::from_secs(10)).unwrap();
    let drills = c.status(leader)["drills"].clone();
    assert_eq!(drills[0]["summary"]["result"], "FAILED", "{drills}");
    assert_eq!(drills[0]["summary"]["lost"], 1, "{drills}");
}

/// The partition scenarios with the local executor, on nodes with their own
/// loopback addresses: the leader cut off alone, then the leader and one
/// follower (a minority) cut off from the other three. The processes keep
/// running; the majority elects a leader and writes go on; after the links
/// return nothing acknowledged is lost and the drill's firewall chain is
/// gone. A cluster whose nodes share 127.0.0.1 is refused with the way out.
#[test]
fn partition_scenarios_cut_links_and_lose_nothing() {
    let c = cluster_full(39300, false, RaftTimings::default(), Some("127.0.2."));
    for scenario in ["leader-isolated", "minority-partition"] {
        let leader_before = c.c.wait_leader(Duration::from_secs(30)).unwrap();
        let (ok, v, stderr) = drill_local(&c, scenario, "Partition Tester");
        assert!(ok, "{scenario}: exit status: {v:#}\n{stderr}");
        assert_clean(scenario, &v, &stderr);
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(report_json(&v)).unwrap()).unwrap();
        let d = &doc["data"];
        let actions = d["actions"].as_array().expect("actions");
        let cut = actions
            .iter()
            .find(|a| a["action"] == "partition")
            .unwrap_or_else(|| panic!("{scenario}: a partition action: {actions:?}"));
        let isolated: Vec<u64> = cut["isolated"]
            .as_array()
            .expect("isolated")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        let want = if scenario == "leader-isolated" { 1 } else { 2 };
        assert_eq!(isolated.len(), want, "{scenario}: {cut}");
        assert!(isolated.contains(&leader_before), "{scenario}: {cut}");
        assert_eq!(cut["fault"], true);
        let healed = actions
            .iter()
            .position(|a| a["action"] == "heal-network")
            .expect("the network healed");
        assert!(
            healed
                > actions
                    .iter()
                    .position(|a| a["action"] == "partition")
                    .unwrap(),
            "{actions:?}"
        );
        // The cut was real: while it lasted, a node of the majority led in
        // a later term than the leader before (nothing else ends a term).
        let term_before = d["cluster"]["term_before"].as_u64().expect("term");
        let from_s = cut["t_ms"].as_u64().unwrap() / 1000;
        let new_leader = d["timeline"].as_array().unwrap().iter().any(|sec| {
            sec["t_s"].as_u64().unwrap() >= from_s
                && sec["nodes"].as_object().is_some_and(|m| {
                    m.iter().any(|(id, st)| {
                        st["role"] == "leader"
                            && st["term"].as_u64().is_some_and(|t| t > term_before)
                            && !isolated.contains(&id.parse::<u64>().unwrap())
                    })
                })
        });
        assert!(
            new_leader,
            "{scenario}: no majority leader seen: {:#}",
            d["timeline"]
        );
        eprintln!(
            "{scenario}: nodes {isolated:?} cut off; write gap {} ms, read gap {} ms, all ready after {} ms, {} writes acknowledged",
            d["measured"]["write_gap_ms"],
            d["measured"]["read_gap_ms"],
            d["measured"]["health_ms"],
            d["workload"]["acknowledged"]
        );
        let chains = Command::new("iptables")
            .arg("-S")
            .output()
            .expect("iptables");
        let text = String::from_utf8_lossy(&chains.stdout);
        assert!(!text.contains("BDBDRILL39300"), "chain left behind: {text}");
    }

    // Nodes sharing 127.0.0.1 cannot be cut apart: refused before anything
    // is done to the cluster, with the way out.
    let shared = cluster(39600, false);
    let (key, _) = shared.keys();
    let term = shared.status(1)["term"].clone();
    let (ok, out, err) = run(&[
        "drill",
        "run",
        "leader-isolated",
        "--dir",
        shared.c.dir().to_str().unwrap(),
        "--private-key",
        key.to_str().unwrap(),
        "--out",
        shared.out().to_str().unwrap(),
    ]);
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("own loopback addresses") && err.contains("--host-prefix"),
        "{err}"
    );
    assert!(!shared.out().exists(), "no report for a refused drill");
    assert_eq!(
        shared.status(1)["term"],
        term,
        "nothing done to the cluster"
    );
}

/// `billdb drill run restore-rehearsal`: the newest backup of a cluster
/// under load restored into a scratch cluster of three (its own cluster id
/// and ports), every scratch node's digest and fingerprints equal to the
/// backup's, a write taken and read back on every node, the scratch
/// cluster removed, the report verified and the summary recorded in the
/// production cluster. A backup with a damaged file, or older than the
/// objective, is a FAILED rehearsal naming why.
#[test]
fn restore_rehearsal_brings_the_newest_backup_up_in_a_scratch_cluster() {
    let c = cluster(32500, false);
    let (key, public) = c.keys();
    let dir = c.c.dir().to_str().unwrap().to_string();
    // Some business history, then a backup of it.
    let (ok, v, stderr) = drill_local(&c, "leader-kill", "History Maker");
    assert!(ok, "{v:#}\n{stderr}");
    let dest = c.dir.path().join("backups");
    let (ok, out, err) = run(&["backup", "init", dest.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let endpoint = c.c.http_addr(1).unwrap();
    let ca = c.c.ca_bundle_path();
    let create = Command::new(billdb())
        .args(["backup", "create", "--endpoint", &endpoint, "--json"])
        .arg("--ca")
        .arg(&ca)
        .arg("--to")
        .arg(&dest)
        .arg("--private-key")
        .arg(&key)
        .env("BILLDB_TOKEN", c.c.token("ops").unwrap())
        .output()
        .expect("backup create");
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    let b: Value = serde_json::from_slice(&create.stdout).expect("create JSON");

    let scratch = c.dir.path().join("scratch");
    let reports = c.out();
    let rehearse = |backup_dir: &Path, extra: &[&str]| -> (bool, Value, String) {
        let mut args = vec![
            "drill",
            "run",
            "restore-rehearsal",
            "--dir",
            &dir,
            "--backup-dir",
            backup_dir.to_str().unwrap(),
            "--backup-public-key",
            public.to_str().unwrap(),
            "--private-key",
            key.to_str().unwrap(),
            "--scratch-dir",
            scratch.to_str().unwrap(),
            "--scratch-base-port",
            "39000",
            "--out",
            reports.to_str().unwrap(),
            "--operator",
            "Restore Tester",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = run(&args);
        let v: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        (ok, v, stderr)
    };
    let (ok, v, stderr) = rehearse(&dest, &[]);
    assert!(ok, "{v:#}\n{stderr}");
    assert_eq!(v["result"], "PASS", "{v:#}");
    assert_eq!(
        v["backup"]["backup_id"], b["backup_id"],
        "the newest backup"
    );
    assert_eq!(v["backup"]["deep_verified"], true, "{v:#}");
    assert_eq!(v["scratch"]["nodes"], 3);
    assert!(
        v["scratch"]["cluster_id"]
            .as_str()
            .unwrap()
            .starts_with("rehearsal-"),
        "a new cluster id: {v:#}"
    );
    assert_eq!(v["verification"]["digests_equal"], true, "{v:#}");
    assert_eq!(v["verification"]["fingerprints_equal"], true, "{v:#}");
    let read_back = v["scratch"]["read_back"].as_array().expect("read back");
    assert_eq!(read_back.len(), 3, "{v:#}");
    assert!(read_back.iter().all(|r| r["balance"] == "1.00"), "{v:#}");
    assert!(
        v["measured"]["write_gap_ms"].as_u64().is_some(),
        "restore time measured: {v:#}"
    );
    assert!(
        stderr.contains("phase: restore the backup into it"),
        "progress: {stderr}"
    );
    assert!(
        !scratch.exists(),
        "the scratch cluster is removed afterwards"
    );
    // Nothing of the scratch cluster still listens.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 39001)).is_err(),
        "scratch node 1 stopped"
    );
    let json = report_json(&v);
    let (ok, out, err) = run(&[
        "drill",
        "verify",
        json.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert!(ok, "verify: {out} {err}");
    let md = std::fs::read_to_string(json.with_extension("md")).expect("markdown");
    assert!(md.contains("# Restore rehearsal — PASS"), "{md}");
    let drills = c.status(1)["drills"].clone();
    let rec = drills
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|d| d["summary"]["scenario"] == "restore-rehearsal")
        })
        .unwrap_or_else(|| panic!("recorded in the cluster: {drills:#}"))
        .clone();
    assert_eq!(rec["summary"]["result"], "PASS", "{rec:#}");
    assert_eq!(rec["summary"]["report_sha256"], v["sha256"], "{rec:#}");

    // Too old for the objective: FAILED, saying so.
    let (ok, v, stderr) = rehearse(&dest, &["--max-backup-age-s", "0"]);
    assert!(!ok, "{v:#}\n{stderr}");
    assert_eq!(v["result"], "FAILED");
    assert!(v["failures"].to_string().contains("RPO"), "{v:#}");

    // A damaged copy of the backup: FAILED naming the file, nothing started.
    let copy = c.dir.path().join("backups-copy");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&dest)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(cp.success());
    let files = copy.join("files");
    let victim = std::fs::read_dir(&files)
        .expect("files")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a backup file");
    let mut bytes = std::fs::read(&victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("write");
    let (ok, v, stderr) = rehearse(&copy, &[]);
    assert!(!ok, "{v:#}\n{stderr}");
    assert_eq!(v["result"], "FAILED");
    let failures = v["failures"].to_string();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(failures.contains(&name), "names {name}: {failures}");
    assert_eq!(
        v["scratch"],
        Value::Null,
        "no scratch cluster for a bad backup"
    );
}
