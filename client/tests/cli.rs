//! The `billdb` CLI end to end against a real five-node local cluster that
//! the CLI itself starts (`billdb local up`): a counter day (tariff, account,
//! card, verify, purchase, duplicate guard, reissue, loaded, reprint), a
//! bank payment, reports and record lists, in `--json` and readable form.
//! Ports 17001–17205.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

const BASE_PORT: u16 = 17000;

fn billdb() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_billdb"))
}

/// The CA certificate of the cluster under test, once it is up (the CLI
/// trusts it through `BILLDB_CA`).
static CA: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Run the CLI; returns (exit success, stdout, stderr).
fn run(args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut c = Command::new(billdb());
    c.args(args)
        .env_remove("BILLDB_TOKEN")
        .env_remove("BILLDB_CA")
        .env("BILLDB_GRPC", grpc_endpoints());
    if let Some(ca) = CA.lock().unwrap().as_ref() {
        c.env("BILLDB_CA", ca);
    }
    if let Some(t) = token {
        c.env("BILLDB_TOKEN", t);
    }
    let out: Output = c.output().expect("billdb runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn grpc_endpoints() -> String {
    (1..=5)
        .map(|n| format!("127.0.0.1:{}", BASE_PORT + 100 + n))
        .collect::<Vec<_>>()
        .join(",")
}

/// Run and parse `--json` output; panics with the output on failure.
fn ok_json(args: &[&str], token: &str) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = run(&a, Some(token));
    assert!(ok, "billdb {args:?} failed:\nstdout {out}\nstderr {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Run expecting a refusal; returns the error document printed by `--json`.
fn refused_json(args: &[&str], token: &str) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = run(&a, Some(token));
    assert!(!ok, "billdb {args:?} should fail:\n{out}");
    assert!(!err.is_empty(), "a refusal says why on stderr");
    let v: Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    v["error"].clone()
}

struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(billdb())
            .args(["local", "down", "--dir", &self.0])
            .output();
    }
}

#[test]
fn counter_bank_and_report_commands_against_a_real_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lc");
    let dir_s = dir.to_string_lossy().into_owned();
    let (ok, out, err) = run(
        &[
            "local",
            "up",
            "--dir",
            &dir_s,
            "--base-port",
            &BASE_PORT.to_string(),
        ],
        None,
    );
    let _down = Down(dir_s.clone());
    assert!(ok, "local up failed:\n{out}\n{err}");
    *CA.lock().unwrap() = Some(dir.join("tls/ca.pem"));
    let token = |who: &str| {
        let (ok, out, err) = run(&["local", "token", who, "--dir", &dir_s], None);
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    let (ops, counter, bank, auditor) = (
        token("ops"),
        token("counter"),
        token("bank"),
        token("auditor"),
    );

    // Ops: a flat tariff, effective from 2020.
    let t = ok_json(
        &[
            "ops",
            "tariff",
            "T-FLAT",
            "--price",
            "0.50",
            "--effective-from",
            "2020-01-01T00:00:00Z",
        ],
        &ops,
    );
    assert_eq!(t["result"], "tariff_defined", "{t}");

    // Counter: open, issue a card, verify.
    let opened = ok_json(
        &[
            "account",
            "open",
            "CLI-1",
            "--name",
            "Li Wei",
            "--branch",
            "B01",
            "--utility",
            "electricity",
            "--tariff-id",
            "T-FLAT",
        ],
        &counter,
    );
    assert_eq!(opened["outcome"]["result"], "account_opened", "{opened}");
    let card = ok_json(&["card", "issue", "CLI-1", "CARD-CLI-1"], &counter);
    assert_eq!(card["result"], "card_issued", "{card}");
    let check = ok_json(
        &[
            "card",
            "verify",
            "CARD-CLI-1",
            "--generation",
            "1",
            "--seq-on-card",
            "0",
        ],
        &counter,
    );
    assert_eq!(check["verdict"], "OK", "{check}");

    // A purchase of 10.00 at 0.50 → 20 units; the operator comes from the token.
    let sale = ok_json(
        &[
            "purchase",
            "--card",
            "CARD-CLI-1",
            "--amount",
            "10.00",
            "--request-id",
            "cli-sale-1",
        ],
        &counter,
    );
    let units = sale["record"]["units"].as_str().unwrap_or("");
    assert_eq!(
        units.trim_end_matches('0').trim_end_matches('.'),
        "20",
        "{sale}"
    );
    assert_eq!(sale["record"]["operator_id"], "C-0101", "{sale}");
    let record_id = sale["record_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no record id in {sale}"));
    let invoice_no = sale["record"]["invoice_no"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!invoice_no.is_empty(), "{sale}");

    // The same request id again: the same outcome, no second record.
    let again = ok_json(
        &[
            "purchase",
            "--card",
            "CARD-CLI-1",
            "--amount",
            "10.00",
            "--request-id",
            "cli-sale-1",
        ],
        &counter,
    );
    assert_eq!(again["record"]["seq"], sale["record"]["seq"], "{again}");
    // Same card and amount, new request id, within 30 s: POSSIBLE_DUPLICATE.
    let dup = refused_json(
        &["purchase", "--card", "CARD-CLI-1", "--amount", "10.00"],
        &counter,
    );
    assert_eq!(dup["code"], "POSSIBLE_DUPLICATE", "{dup}");
    // Bad input is refused with its code and the exit status.
    let bad = refused_json(
        &["purchase", "--card", "CARD-CLI-1", "--amount", "1.001"],
        &counter,
    );
    assert_eq!(bad["code"], "TOO_MANY_DECIMALS", "{bad}");

    // Lost credit: reissue once, then loaded.
    let re = ok_json(&["record", "reissue", &record_id], &counter);
    assert_eq!(re["record"]["kind"], "reissue", "{re}");
    let twice = refused_json(&["record", "reissue", &record_id], &counter);
    assert!(twice["code"].is_string(), "{twice}");
    let loaded = ok_json(&["record", "loaded", &record_id], &counter);
    assert!(loaded["result"].is_string(), "{loaded}");
    let print = ok_json(&["invoice", "print", &invoice_no], &counter);
    assert!(print.to_string().contains(&invoice_no), "{print}");

    // Bank: a payment, then the same bank_ref under a new request id.
    let pay = ok_json(
        &[
            "pay",
            "CLI-1",
            "25.00",
            "--bank-code",
            "ICBC",
            "--bank-ref",
            "ICBC-REF-1",
        ],
        &bank,
    );
    assert_eq!(pay["outcome"]["result"], "payment_posted", "{pay}");
    let dup_ref = refused_json(
        &[
            "pay",
            "CLI-1",
            "25.00",
            "--bank-code",
            "ICBC",
            "--bank-ref",
            "ICBC-REF-1",
        ],
        &bank,
    );
    assert_eq!(dup_ref["code"], "DUPLICATE_PAYMENT", "{dup_ref}");

    // Balance: a counter sale is paid on the spot and a reissue moves no
    // money, so only the bank payment's 25.00 is on the account.
    let acct = ok_json(&["account", "get", "CLI-1"], &auditor);
    assert_eq!(acct["balance"], "25.00", "{acct}");

    // Records: purchase, reissue, payment — newest first, readable too.
    let recs = ok_json(
        &["account", "records", "CLI-1", "--segment", "all"],
        &auditor,
    );
    let kinds: Vec<&str> = recs["records"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["payment", "reissue", "purchase"], "{recs}");
    let (ok, text, err) = run(
        &["account", "records", "CLI-1", "--segment", "all"],
        Some(&auditor),
    );
    assert!(ok, "{err}");
    assert!(
        text.contains("record_id") && text.contains(&record_id),
        "{text}"
    );

    // Reports: this month's purchases by operator (from the token).
    let month = sale["record"]["ts"]
        .as_str()
        .map(|ts| ts[..7].to_string())
        .unwrap_or_else(|| panic!("no ts in {sale}"));
    let rep = ok_json(&["report", "monthly", &month], &auditor);
    let line = rep["lines"]
        .as_array()
        .and_then(|ls| {
            ls.iter()
                .find(|l| l["value"] == "C-0101" && l["kind"] == "purchase")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no C-0101 purchase line in {rep}"));
    assert_eq!(line["count"], 1, "{rep}");
    assert_eq!(line["amount"], "10.00", "{rep}");
    let (ok, text, err) = run(&["report", "monthly", &month], Some(&auditor));
    assert!(ok, "{err}");
    assert!(text.contains("C-0101"), "{text}");
    // One sale and its reissue: the reissued units are not sold units.
    assert!(
        text.contains("sales (purchases, each counted once): 1 sales, amount 10.00"),
        "{text}"
    );
    assert!(text.contains("total reissue: 1 records"), "{text}");

    // A tariff without --effective-from takes effect now: a sale under it
    // right after succeeds. Once the account is closed, a sale on its card
    // is refused ACCOUNT_CLOSED (what the cashier needs to hear).
    let t = ok_json(&["ops", "tariff", "T-NOW", "--price", "0.52"], &ops);
    assert_eq!(t["result"], "tariff_defined", "{t}");
    let opened = ok_json(
        &[
            "account",
            "open",
            "CLI-2",
            "--name",
            "Wang Fang",
            "--branch",
            "B01",
            "--utility",
            "electricity",
            "--tariff-id",
            "T-NOW",
        ],
        &counter,
    );
    assert_eq!(opened["outcome"]["result"], "account_opened", "{opened}");
    ok_json(&["card", "issue", "CLI-2", "CARD-CLI-2"], &counter);
    let sale = ok_json(
        &["purchase", "--card", "CARD-CLI-2", "--amount", "5.20"],
        &counter,
    );
    assert_eq!(sale["record"]["tariff_id"], "T-NOW", "{sale}");
    let closed = ok_json(&["account", "close", "CLI-2", "--reason", "moved"], &ops);
    assert!(closed.to_string().contains("closed"), "{closed}");
    let refused = refused_json(
        &["purchase", "--card", "CARD-CLI-2", "--amount", "5.20"],
        &counter,
    );
    assert_eq!(refused["code"], "ACCOUNT_CLOSED", "{refused}");

    // The heating utility's season in one command: an area tariff, a heat
    // account of 85.50 m², the season opened and billed.
    let t = ok_json(
        &[
            "ops",
            "tariff",
            "T-HEAT",
            "--price",
            "3.65",
            "--suspended-share",
            "0.30",
        ],
        &ops,
    );
    assert_eq!(t["result"], "tariff_defined", "{t}");
    ok_json(
        &[
            "account",
            "open",
            "CLI-H1",
            "--name",
            "Zhao Lei",
            "--branch",
            "B01",
            "--utility",
            "heat",
            "--tariff-id",
            "T-HEAT",
        ],
        &counter,
    );
    ok_json(
        &["account", "contact", "CLI-H1", "--area", "85.50"],
        &counter,
    );
    ok_json(&["ops", "season", "2026-27"], &ops);
    let endpoint = format!("127.0.0.1:{}", BASE_PORT + 1);
    let (ok, out, err) = run(
        &["season", "bill", "2026-27", "--endpoint", &endpoint],
        Some(&ops),
    );
    assert!(ok, "season bill failed:\n{out}\n{err}");
    assert!(out.contains("1 accounts billed, total 312.08"), "{out}");
    assert!(
        err.contains("billed in"),
        "progress and summary on stderr: {err}"
    );
    // Run again: nothing is charged twice.
    let r = ok_json(
        &[
            "season",
            "bill",
            "2026-27",
            "--endpoint",
            &endpoint,
            "--request-id",
            "again",
        ],
        &ops,
    );
    assert_eq!(
        (&r["accounts_billed"], &r["total"]),
        (&json!(1), &json!("312.08")),
        "{r}"
    );
    let acct = ok_json(&["account", "get", "CLI-H1"], &counter);
    assert_eq!(acct["balance"], "-312.08", "{acct}");
    // The customer's statement shows the season charge and closes on the
    // balance.
    let st = ok_json(
        &[
            "account",
            "statement",
            "CLI-H1",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2999-01-01T00:00:00Z",
        ],
        &counter,
    );
    assert_eq!(st["lines"][0]["kind"], "charge", "{st}");
    assert_eq!(st["closing_balance"], "-312.08", "{st}");
    let (ok, text, err) = run(
        &[
            "account",
            "statement",
            "CLI-H1",
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2999-01-01T00:00:00Z",
        ],
        Some(&counter),
    );
    assert!(ok, "{err}");
    assert!(text.contains("closing balance -312.08"), "{text}");

    // Roles: a counter may not post bank payments.
    let denied = refused_json(
        &[
            "pay",
            "CLI-1",
            "1.00",
            "--bank-code",
            "ICBC",
            "--bank-ref",
            "X",
        ],
        &counter,
    );
    assert_eq!(denied["code"], "PERMISSION_DENIED", "{denied}");

    // The stored outcome of the sale's request id.
    let req = ok_json(&["ops", "request", "cli-sale-1"], &ops);
    assert_eq!(req["request_id"], "cli-sale-1", "{req}");

    // The Rust client follows the leader: given a follower first, after one
    // answer it prefers the leader's endpoint.
    let cluster = billdb_client::local::LocalCluster::open(&dir).expect("open cluster");
    let leader = cluster
        .wait_leader(std::time::Duration::from_secs(30))
        .expect("leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let endpoints: Vec<String> = [follower, leader]
        .iter()
        .map(|n| cluster.grpc_addr(*n).expect("addr"))
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tls = cluster.client_tls().expect("client tls");
        let client =
            billdb_client::client::Client::with_tls(&endpoints, Some(&auditor), tls.as_ref())
                .expect("client");
        assert_eq!(client.preferred_endpoint(), 0);
        let a = client.get_account("CLI-1").await.expect("get account");
        assert_eq!(a.balance, "25.00");
        assert_eq!(client.preferred_endpoint(), 1, "the leader is endpoint 1");
    });

    // An operator rebuilds the leader from its peers (a disk no longer
    // trusted): a counter may not; ops may, and with --wait the command
    // follows it (hand-over, restart, rejoin) until the node is ready.
    let leader_ep = format!("127.0.0.1:{}", BASE_PORT + leader as u16);
    let (ok, _, err) = run(
        &["node", "repair", "--endpoint", &leader_ep],
        Some(&counter),
    );
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");
    let (ok, out, err) = run(
        &[
            "node",
            "repair",
            "--endpoint",
            &leader_ep,
            "--reason",
            "controller replaced",
            "--wait",
            "--wait-secs",
            "120",
        ],
        Some(&ops),
    );
    assert!(ok, "node repair failed:\n{out}\n{err}");
    assert!(out.contains("rebuilt from its peers and is ready"), "{out}");
    assert!(
        err.contains(&format!("node {leader}: fenced")),
        "progress shown: {err}"
    );
    let st = ok_json(&["cluster", "status", "--endpoint", &leader_ep], &ops);
    assert_eq!(st["storage"]["state"], "ok", "{st:#}");
    assert_eq!(
        st["storage"]["last_repair"]["reason"],
        "repair requested by an operator: controller replaced",
        "{st:#}"
    );
    assert_ne!(st["leader_id"], leader, "it handed leadership over: {st:#}");
    let kept: Vec<_> = std::fs::read_dir(cluster.data_dir(leader).join("damaged"))
        .expect("the old database is kept aside")
        .collect();
    assert_eq!(kept.len(), 1);
    // Its state equals the others' again.
    let tls = cluster.client_tls().expect("client tls");
    let digest = |n: u64| {
        billdb_client::admin::AdminClient::with_tls(
            &format!("127.0.0.1:{}", BASE_PORT + n as u16),
            std::time::Duration::from_secs(10),
            tls.as_ref(),
        )
        .with_token(Some(auditor.clone()))
        .get("/v1/cluster/digest")
        .map(|v| v["digest"].clone())
        .ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let all: Vec<_> = (1..=5).map(digest).collect();
        if all.iter().all(|d| d.is_some() && *d == all[0]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "digests differ after the repair: {all:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn cert_commands_make_a_ca_and_certificates_with_private_keys_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = |p: &str| tmp.path().join(p).to_string_lossy().into_owned();
    let (ok, _, err) = run(
        &[
            "cert",
            "ca",
            "--cluster-id",
            "heat-north",
            "--out",
            &d("ca"),
        ],
        None,
    );
    assert!(ok, "{err}");
    // A CA is never overwritten.
    let (ok, _, err) = run(
        &[
            "cert",
            "ca",
            "--cluster-id",
            "heat-north",
            "--out",
            &d("ca"),
        ],
        None,
    );
    assert!(!ok && err.contains("never overwritten"), "{err}");
    let (ok, _, err) = run(
        &[
            "cert",
            "node",
            "--ca-dir",
            &d("ca"),
            "--cluster-id",
            "heat-north",
            "--id",
            "3",
            "--host",
            "db3.example.net",
            "--host",
            "10.0.0.3",
            "--out",
            &d("n3"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &[
            "cert",
            "client",
            "--ca-dir",
            &d("ca"),
            "--cluster-id",
            "heat-north",
            "--name",
            "counter-0101",
            "--out",
            &d("clients"),
        ],
        None,
    );
    assert!(ok, "{err}");
    for key in [
        "ca/ca.key",
        "n3/node3.key",
        "clients/client-counter-0101.key",
    ] {
        let mode = std::fs::metadata(tmp.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
        let text = std::fs::read_to_string(tmp.path().join(key)).unwrap();
        assert!(text.contains("PRIVATE KEY"), "{key}");
    }
    for cert in [
        "ca/ca.pem",
        "n3/node3.pem",
        "clients/client-counter-0101.pem",
    ] {
        let text = std::fs::read_to_string(tmp.path().join(cert)).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    }
    // A cluster id that cannot be a DNS label is refused.
    let (ok, _, err) = run(
        &[
            "cert",
            "ca",
            "--cluster-id",
            "Heat North",
            "--out",
            &d("bad"),
        ],
        None,
    );
    assert!(!ok && err.contains("not a valid name"), "{err}");
}

#[test]
fn cert_cluster_gives_each_node_a_directory_with_only_its_own_key() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("secrets");
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec![
        "cert",
        "cluster",
        "--cluster-id",
        "heat-north",
        "--out",
        &out_s,
    ];
    let specs: Vec<String> = (1..=3)
        .map(|i| format!("{i}=db{i}.example.net,10.0.0.{i}"))
        .collect();
    for s in &specs {
        args.extend(["--node", s]);
    }
    let (ok, _, err) = run(&args, None);
    assert!(ok, "{err}");
    let list = |d: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        list(&out.join("node")),
        ["1", "2", "3"],
        "a directory per node"
    );
    let tokens = std::fs::read_to_string(out.join("tokens.toml")).expect("the token list");
    assert_eq!(tokens.matches("[[token]]").count(), 4);
    for i in 1..=3 {
        let d = out.join(format!("node/{i}"));
        let mut want = vec![
            "ca.pem".to_string(),
            format!("node{i}.key"),
            format!("node{i}.pem"),
            "tokens.toml".to_string(),
        ];
        want.sort();
        assert_eq!(list(&d), want, "node {i}: its own key only");
        let mode = std::fs::metadata(d.join(format!("node{i}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(d.join("tokens.toml")).unwrap(),
            tokens,
            "node {i} reads the cluster's token list"
        );
    }
    assert!(!out.join("node/ca.key").exists() && out.join("ca/ca.key").exists());
    // A second run changes nothing (the CA exists).
    let before = std::fs::read(out.join("node/2/node2.key")).unwrap();
    let (ok, stdout, err) = run(&args, None);
    assert!(ok && stdout.contains("nothing changed"), "{stdout}{err}");
    assert_eq!(std::fs::read(out.join("node/2/node2.key")).unwrap(), before);
    // A node given twice is refused before anything is written.
    let dup = tmp.path().join("dup").to_string_lossy().into_owned();
    let (ok, _, err) = run(
        &[
            "cert",
            "cluster",
            "--cluster-id",
            "c",
            "--out",
            &dup,
            "--node",
            "1=a",
            "--node",
            "1=b",
        ],
        None,
    );
    assert!(!ok && err.contains("given twice"), "{err}");
    assert!(!tmp.path().join("dup/ca/ca.key").exists());

    // `cert install` copies one node's files out of a directory holding
    // several, the key private; a node whose files are not there is refused.
    let inst = tmp.path().join("inst");
    let inst_s = inst.to_string_lossy().into_owned();
    let from = out.join("node/2").to_string_lossy().into_owned();
    let (ok, _, err) = run(
        &[
            "cert", "install", "--from", &from, "--id", "2", "--out", &inst_s,
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(
        list(&inst),
        ["ca.pem", "node2.key", "node2.pem", "tokens.toml"]
    );
    assert_eq!(std::fs::read(inst.join("node2.key")).unwrap(), before);
    let mode = std::fs::metadata(inst.join("node2.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let other = tmp.path().join("other").to_string_lossy().into_owned();
    let (ok, _, err) = run(
        &[
            "cert", "install", "--from", &from, "--id", "3", "--out", &other,
        ],
        None,
    );
    assert!(!ok && err.contains("node3.pem"), "{err}");
    assert!(!tmp.path().join("other").exists(), "nothing written");
}
