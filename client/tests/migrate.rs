//! `billdb import` end to end: the real `billdb` binary against a real
//! five-node local cluster (TLS, `billdb local up`) with a legacy dataset
//! whose faults are seeded and known: edited receivables, an area changed
//! mid-season without a record, duplicate invoice numbers, bad dates,
//! unknown tariff codes, rows with missing fields, a second active card,
//! cards and records of rejected accounts. The import is SIGKILLed half
//! way and run again: the rejects file names exactly the seeded bad rows
//! (file and line), the reconciliation finds exactly the seeded
//! differences with their causes, billdb's totals per branch equal the
//! imported rows' to the cent (so nothing was imported twice or missed),
//! and the balance report agrees. A second wave holding rows billdb
//! already has shows the cluster's refusals withdrawn to the rejects file
//! and exit 3 (billdb holds more than that wave). Ports 38701–38905.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

const BASE_PORT: u16 = 38700;

fn billdb() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_billdb"))
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Env {
    dir: String,
    ca: String,
}

fn cmd(env: &Env, args: &[&str], token: Option<&str>) -> Command {
    let mut c = Command::new(billdb());
    c.args(args)
        .env_remove("BILLDB_TOKEN")
        .env("BILLDB_CA", &env.ca)
        .env("BILLDB_ENDPOINT", format!("127.0.0.1:{}", BASE_PORT + 2))
        .env(
            "BILLDB_GRPC",
            (1..=5)
                .map(|n| format!("127.0.0.1:{}", BASE_PORT + 100 + n))
                .collect::<Vec<_>>()
                .join(","),
        );
    if let Some(t) = token {
        c.env("BILLDB_TOKEN", t);
    }
    c
}

/// Run the CLI; returns (exit code, stdout, stderr).
fn run(env: &Env, args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let out = cmd(env, args, token).output().expect("billdb runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(billdb())
            .args(["local", "down", "--dir", &self.0])
            .output();
    }
}

/// A CSV file built line by line, knowing each line's number.
struct Csv {
    text: String,
    line: u64,
}

impl Csv {
    fn new(header: &str) -> Self {
        Csv {
            text: format!("{header}\n"),
            line: 1,
        }
    }
    /// Appends a row; returns its line number.
    fn row(&mut self, fields: &[&str]) -> u64 {
        let quoted: Vec<String> = fields
            .iter()
            .map(|f| {
                if f.contains(',') || f.contains('"') {
                    format!("\"{}\"", f.replace('"', "\"\""))
                } else {
                    f.to_string()
                }
            })
            .collect();
        self.text.push_str(&quoted.join(","));
        self.text.push('\n');
        self.line += 1;
        self.line
    }
    fn write(&self, path: &Path) {
        std::fs::write(path, &self.text).expect("write csv");
    }
}

const PRICE_PER_M2: &str = "25.50";

/// A branch's accounts, Σ balance, and per kind (count, Σ amount).
type BranchWant = (u64, Decimal, BTreeMap<String, (u64, Decimal)>);

/// The legacy dataset, its seeded faults and what the import must find.
struct Legacy {
    accounts: Csv,
    cards: Csv,
    records: Csv,
    /// (file, line) of every row that must be rejected.
    bad: BTreeSet<(String, u64)>,
    /// account → (difference, causes in order).
    differences: BTreeMap<String, (Decimal, Vec<&'static str>)>,
    /// Per branch: accounts, Σ balance, per kind (count, Σ amount), of the
    /// rows that must be imported.
    totals: BTreeMap<String, BranchWant>,
}

fn branch_of(i: u32) -> (&'static str, &'static str) {
    match i % 3 {
        0 => ("01", "BR1"),
        1 => ("02", "BR2"),
        _ => ("03", "BR3"),
    }
}

fn legacy() -> Legacy {
    let mut l = Legacy {
        accounts: Csv::new(
            "account_id,name,address,branch,utility,meter_id,tariff_code,area_m2,status,balance,opened,closed",
        ),
        cards: Csv::new("card_no,account_id,generation,status"),
        records: Csv::new(
            "account_id,kind,amount,units,time,operator,branch,tariff_code,invoice_no,bank_code,bank_ref,card_no,card_seq",
        ),
        bad: BTreeSet::new(),
        differences: BTreeMap::new(),
        totals: BTreeMap::new(),
    };
    let mut invoice = 0u32;
    let mut bank_ref = 0u32;
    for i in 1..=60u32 {
        let id = format!("A{i:03}");
        let heat = i > 30;
        let (bcode, branch) = branch_of(i);
        let mut recs: Vec<(String, Vec<String>)> = Vec::new();
        let mut implied = Decimal::ZERO;
        // Two years of history, in time order.
        for year in [2023, 2024] {
            if heat {
                let area = d("80") + Decimal::from(i % 7) + d("0.3");
                let charge = (area * d(PRICE_PER_M2))
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
                recs.push((
                    "CHG".into(),
                    vec![
                        charge.to_string(),
                        area.to_string(),
                        format!("{year}-11-15 09:00:00"),
                    ],
                ));
                implied -= charge;
                let paid = d("1500.00") + Decimal::from(i);
                bank_ref += 1;
                invoice += 1;
                recs.push((
                    "PAY".into(),
                    vec![
                        paid.to_string(),
                        "0".into(),
                        format!("{year}-12-0{} 14:30:00", 1 + i % 9),
                        format!("L-{invoice:05}"),
                        "ICBC".into(),
                        format!("R{bank_ref:06}"),
                    ],
                ));
                implied += paid;
            } else {
                for m in [3, 7, 10] {
                    invoice += 1;
                    let amount = Decimal::from(50 + i) + d("0.25");
                    recs.push((
                        "SALE".into(),
                        vec![
                            amount.to_string(),
                            (amount * d("2")).to_string(),
                            format!("{year}-{m:02}-1{} 10:00:00", i % 9),
                            format!("L-{invoice:05}"),
                        ],
                    ));
                }
                if i % 10 == 0 {
                    recs.push((
                        "ADJ".into(),
                        vec!["-3.10".into(), "0".into(), format!("{year}-12-20 16:00:00")],
                    ));
                    implied += d("-3.10");
                }
            }
        }
        // The legacy balance: what the records imply, except where seeded.
        let area_now = if heat {
            d("80") + Decimal::from(i % 7) + d("0.3")
        } else {
            Decimal::ZERO
        };
        let mut balance = implied;
        let mut area_col = area_now;
        match i {
            35 => {
                balance -= d("12.40");
                l.differences
                    .insert(id.clone(), (d("-12.40"), vec!["edited_without_record"]));
            }
            41 => {
                balance += d("100.00");
                l.differences
                    .insert(id.clone(), (d("100.00"), vec!["edited_without_record"]));
            }
            36 => {
                // A payment the legacy balance counted, whose row is
                // rejected (a duplicate invoice number, seeded below).
                balance += d("77.70");
            }
            50 => {
                // The area changed after the 2024 charge; the legacy system
                // re-priced the receivable without a record.
                area_col = area_now + d("2.7");
                let old = (area_now * d(PRICE_PER_M2))
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
                let new = (area_col * d(PRICE_PER_M2))
                    .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
                balance -= new - old;
                l.differences
                    .insert(id.clone(), (old - new, vec!["area_changed"]));
            }
            _ => {}
        }
        let (utility, tariff) = if heat { ("H", "T-H1") } else { ("E", "T-E1") };
        let status = if i == 59 { "9" } else { "0" };
        let closed = if i == 59 { "2025-01-31" } else { "" };
        l.accounts.row(&[
            &id,
            &format!("Customer {i}, Building {}", i % 5),
            "1 \"Heat\" Road",
            bcode,
            utility,
            &format!("M{i:04}"),
            tariff,
            &area_col.to_string(),
            status,
            &balance.to_string(),
            "2019-05-01",
            closed,
        ]);
        let t = l
            .totals
            .entry(branch.to_string())
            .or_insert_with(|| (0, Decimal::ZERO, BTreeMap::new()));
        t.0 += 1;
        t.1 += balance;
        if !heat {
            l.cards.row(&[&format!("C{i:03}-2"), &id, "2", "active"]);
            l.cards.row(&[&format!("C{i:03}-1"), &id, "1", "replaced"]);
        }
        for (kind, f) in recs {
            let billdb_kind = match kind.as_str() {
                "CHG" => "charge",
                "PAY" => "payment",
                "SALE" => "purchase",
                _ => "adjustment",
            };
            let empty = String::new();
            let g = |k: usize| f.get(k).unwrap_or(&empty).as_str();
            let row: Vec<&str> = match kind.as_str() {
                "PAY" => vec![
                    &id,
                    &kind,
                    g(0),
                    g(1),
                    g(2),
                    "clerk7",
                    "",
                    "",
                    g(3),
                    g(4),
                    g(5),
                    "",
                    "",
                ],
                "SALE" => vec![
                    &id,
                    &kind,
                    g(0),
                    g(1),
                    g(2),
                    "clerk3",
                    "",
                    "",
                    g(3),
                    "",
                    "",
                    "",
                    "1",
                ],
                _ => vec![&id, &kind, g(0), g(1), g(2), "", "", "", "", "", "", "", ""],
            };
            l.records.row(&row);
            let t = l.totals.get_mut(branch).unwrap();
            let k =
                t.2.entry(billdb_kind.to_string())
                    .or_insert((0, Decimal::ZERO));
            k.0 += 1;
            k.1 += d(g(0));
        }
    }
    // ---- seeded bad rows ----
    let bad = |l: &mut Legacy, file: &str, line: u64| {
        l.bad.insert((file.to_string(), line));
    };
    // Accounts: a bad date, an unknown tariff code, a missing branch, a
    // short row, a duplicate id.
    let acct = |id: &str, branch: &str, tariff: &str, opened: &str| {
        vec![
            id.to_string(),
            "X".into(),
            "".into(),
            branch.into(),
            "E".into(),
            "".into(),
            tariff.into(),
            "0".into(),
            "0".into(),
            "0.00".into(),
            opened.into(),
            "".into(),
        ]
    };
    for (id, branch, tariff, opened) in [
        ("A061", "01", "T-E1", "2019-13-01"),
        ("A062", "01", "T-X9", "2019-05-01"),
        ("A063", "", "T-E1", "2019-05-01"),
        ("A001", "01", "T-E1", "2019-05-01"),
    ] {
        let f = acct(id, branch, tariff, opened);
        let r: Vec<&str> = f.iter().map(String::as_str).collect();
        let line = l.accounts.row(&r);
        bad(&mut l, "accounts.csv", line);
    }
    let line = l.accounts.row(&["A064", "Short", "row"]);
    bad(&mut l, "accounts.csv", line);
    // Cards: a second active card, a card of a rejected account, a card of
    // an account nobody has, a bad generation.
    for row in [
        ["C001-9", "A001", "3", "active"],
        ["C061-1", "A061", "1", "active"],
        ["C099-1", "A099", "1", "active"],
        ["C002-X", "A002", "first", "active"],
    ] {
        let line = l.cards.row(&row);
        bad(&mut l, "cards.csv", line);
    }
    // Records (appended after each account's history, later in time):
    // a duplicate invoice number on a sale (no balance effect), a duplicate
    // invoice number on a payment the legacy balance counted (A036), a bad
    // date, an unknown tariff code, a row with missing fields, a record of
    // a rejected account, a negative charge.
    let later = "2025-03-01 10:00:00";
    let line = l.records.row(&[
        "A002", "SALE", "10.00", "20", later, "", "", "", "L-00001", "", "", "", "2",
    ]);
    bad(&mut l, "records.csv", line);
    let line = l.records.row(&[
        "A036", "PAY", "77.70", "0", later, "", "", "", "L-00002", "ICBC", "R999001", "", "",
    ]);
    bad(&mut l, "records.csv", line);
    l.differences
        .insert("A036".into(), (d("77.70"), vec!["rejected_records"]));
    let line = l.records.row(&[
        "A003",
        "SALE",
        "10.00",
        "20",
        "2025-02-30 10:00:00",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]);
    bad(&mut l, "records.csv", line);
    let line = l.records.row(&[
        "A004", "SALE", "10.00", "20", later, "", "", "T-ZZ", "", "", "", "", "",
    ]);
    bad(&mut l, "records.csv", line);
    let line = l.records.row(&["A005", "SALE", "10.00"]);
    bad(&mut l, "records.csv", line);
    let line = l.records.row(&[
        "A061", "SALE", "10.00", "20", later, "", "", "", "", "", "", "", "",
    ]);
    bad(&mut l, "records.csv", line);
    let line = l.records.row(&[
        "A031", "CHG", "-5.00", "1", later, "", "", "", "", "", "", "", "",
    ]);
    bad(&mut l, "records.csv", line);
    // A -5.00 charge's effect cannot be read as a charge: the legacy
    // balance ignored it too, so it makes no difference.
    l
}

/// One CSV line's fields (the csv crate, as the importer reads them).
fn split_csv(s: &str) -> Vec<String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(s.as_bytes());
    r.records()
        .next()
        .expect("a row")
        .expect("a CSV row")
        .iter()
        .map(str::to_string)
        .collect()
}

const MAPPING: &str = "category,legacy,billdb\n\
tariff,T-E1,RES\n\
tariff,T-H1,HEAT1\n\
branch,01,BR1\n\
branch,02,BR2\n\
branch,03,BR3\n\
utility,E,electricity\n\
utility,H,heat\n\
status,0,active\n\
status,1,suspended\n\
status,9,closed\n\
kind,SALE,purchase\n\
kind,PAY,payment\n\
kind,CHG,charge\n\
kind,ADJ,adjustment\n";

fn import_args<'a>(dir: &'a Path, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let mut v = vec![
        "import".to_string(),
        "--accounts".into(),
        p("accounts.csv"),
        "--cards".into(),
        p("cards.csv"),
        "--records".into(),
        p("records.csv"),
        "--mapping".into(),
        p("mapping.csv"),
        "--out".into(),
        out.to_string(),
        "--utc-offset".into(),
        "+08:00".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn read_rejects(out: &Path) -> BTreeMap<(String, u64), String> {
    let text = std::fs::read_to_string(out.join("rejects.csv")).expect("rejects.csv");
    let mut m = BTreeMap::new();
    for (i, row) in text.lines().enumerate() {
        if i == 0 {
            assert_eq!(row, "file,line,account_id,reason");
            continue;
        }
        let f = split_csv(row);
        m.insert((f[0].clone(), f[1].parse().unwrap()), f[3].clone());
    }
    m
}

#[test]
fn a_seeded_legacy_dataset_imports_resumes_and_reconciles_to_the_cent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lc");
    let env = Env {
        dir: dir.to_string_lossy().into_owned(),
        ca: dir.join("tls/ca.pem").to_string_lossy().into_owned(),
    };
    let (code, out, err) = run(
        &env,
        &[
            "local",
            "up",
            "--dir",
            &env.dir,
            "--base-port",
            &BASE_PORT.to_string(),
        ],
        None,
    );
    let _down = Down(env.dir.clone());
    assert_eq!(code, 0, "local up failed:\n{out}\n{err}");
    let token = |who: &str| {
        let (code, out, err) = run(&env, &["local", "token", who, "--dir", &env.dir], None);
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    };
    let (ops, auditor) = (token("ops"), token("auditor"));

    let files = tmp.path().join("legacy");
    std::fs::create_dir_all(&files).unwrap();
    let l = legacy();
    l.accounts.write(&files.join("accounts.csv"));
    l.cards.write(&files.join("cards.csv"));
    l.records.write(&files.join("records.csv"));
    std::fs::write(files.join("mapping.csv"), MAPPING).unwrap();
    let out_dir: PathBuf = tmp.path().join("out");
    let out_s = out_dir.to_string_lossy().into_owned();

    // Small batches, one at a time, so the kill lands half way.
    let small = ["--batch-items", "7", "--loaders", "1"];
    let args = import_args(&files, &out_s, &small);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = cmd(&env, &args_ref, Some(&ops))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("import starts");
    let progress = out_dir.join("progress.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lines = std::fs::read_to_string(&progress)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        // The accounts' batches and some records' batches are done.
        if lines > 20 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the import ended before it could be killed: {status}");
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let done_before = std::fs::read_to_string(&progress).unwrap().lines().count() - 1;

    // The same command again resumes.
    let mut json_args = args_ref.clone();
    json_args.push("--json");
    let (code, stdout, err) = run(&env, &json_args, Some(&ops));
    assert_eq!(code, 0, "the resumed import:\n{stdout}\n{err}");
    let s: Value = serde_json::from_str(&stdout).expect("summary JSON");
    assert!(
        s["batches_skipped_as_done"].as_u64().unwrap() >= done_before as u64,
        "{done_before} batches were done before the kill: {}",
        s["batches_skipped_as_done"]
    );
    assert!(err.contains("resuming"), "{err}");

    // Rejects: exactly the seeded bad rows, each with a reason.
    let rejects = read_rejects(&out_dir);
    let got: BTreeSet<(String, u64)> = rejects.keys().cloned().collect();
    assert_eq!(got, l.bad, "rejects.csv:\n{rejects:#?}");
    let reason = |file: &str, needle: &str| {
        assert!(
            rejects
                .iter()
                .any(|((f, _), r)| f == file && r.contains(needle)),
            "no {file} reject says {needle:?}: {rejects:#?}"
        )
    };
    reason("accounts.csv", "month 13");
    reason("accounts.csv", "unknown tariff code \"T-X9\"");
    reason("accounts.csv", "branch is empty");
    reason("accounts.csv", "missing fields");
    reason("accounts.csv", "already at accounts.csv line");
    reason("cards.csv", "one meter, one card");
    reason("cards.csv", "generation");
    reason("records.csv", "invoice_no L-00001 already used");
    reason("records.csv", "2025-02-30 is not a date");
    reason("records.csv", "unknown tariff code \"T-ZZ\"");
    reason("records.csv", "missing fields");
    reason("records.csv", "account A061 is not imported");

    // Reconciliation: exactly the seeded differences, with their causes.
    let mut found = BTreeMap::new();
    for diff in s["differences"].as_array().unwrap() {
        let causes: Vec<&str> = diff["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cause"].as_str().unwrap())
            .collect();
        let sum: Decimal = diff["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| d(c["amount"].as_str().unwrap()))
            .sum();
        let difference = d(diff["difference"].as_str().unwrap());
        assert_eq!(sum, difference, "causes sum to the difference: {diff}");
        found.insert(
            diff["account_id"].as_str().unwrap().to_string(),
            (
                difference,
                causes.into_iter().map(str::to_string).collect::<Vec<_>>(),
            ),
        );
    }
    let want: BTreeMap<String, (Decimal, Vec<String>)> = l
        .differences
        .iter()
        .map(|(k, (a, c))| (k.clone(), (*a, c.iter().map(|s| s.to_string()).collect())))
        .collect();
    assert_eq!(found, want, "reconciliation differences");

    // Totals: the expected imported rows = the import's legacy side =
    // billdb's, per branch, to the cent.
    let totals = &s["totals"];
    assert_eq!(totals["agree"], true, "{totals:#}");
    for b in totals["by_branch"].as_array().unwrap() {
        let name = b["branch"].as_str().unwrap();
        let (accounts, balance, kinds) = &l.totals[name];
        for side in ["legacy", "billdb"] {
            assert_eq!(
                b[side]["accounts"].as_u64().unwrap(),
                *accounts,
                "{name} {side}"
            );
            assert_eq!(
                d(b[side]["balance"].as_str().unwrap()),
                *balance,
                "{name} {side}"
            );
            for (kind, (count, amount)) in kinds {
                let k = &b[side]["records"][kind];
                assert_eq!(k["count"].as_u64().unwrap(), *count, "{name} {side} {kind}");
                assert_eq!(
                    d(k["amount"].as_str().unwrap()),
                    *amount,
                    "{name} {side} {kind}"
                );
            }
            assert_eq!(b[side]["records"].as_object().unwrap().len(), kinds.len());
        }
    }
    assert_eq!(
        s["cards_not_active"], 30,
        "the replaced legacy cards are counted"
    );
    // Every row is imported, rejected, or (a replaced card) counted apart.
    let rows = &s["rows"];
    assert_eq!(rows["accounts.csv"]["read"], 65, "{rows}");
    assert_eq!(rows["accounts.csv"]["imported"], 60, "{rows}");
    assert_eq!(rows["cards.csv"]["read"], 64, "{rows}");
    assert_eq!(rows["cards.csv"]["imported"], 30, "{rows}");
    assert_eq!(rows["cards.csv"]["rejected"], 4, "{rows}");
    let r = &rows["records.csv"];
    assert_eq!(
        r["read"].as_u64().unwrap(),
        r["imported"].as_u64().unwrap() + r["rejected"].as_u64().unwrap(),
        "{rows}"
    );
    assert_eq!(r["rejected"], 7, "{rows}");

    // The balance report (CLI) says the same as the files.
    let (code, rep, err) = run(&env, &["report", "balances", "--json"], Some(&auditor));
    assert_eq!(code, 0, "{err}");
    let rep: Value = serde_json::from_str(&rep).unwrap();
    let all: Decimal = l.totals.values().map(|t| t.1).sum();
    assert_eq!(d(rep["total"]["balance"].as_str().unwrap()), all, "{rep:#}");
    assert_eq!(rep["total"]["accounts"], 60);
    assert_eq!(rep["total"]["closed"], 1);
    let (code, text, _) = run(&env, &["report", "balances"], Some(&auditor));
    assert_eq!(code, 0);
    assert!(
        text.contains("TOTAL") && text.contains(&all.to_string()),
        "{text}"
    );

    // An imported account answers as the legacy system left it.
    let (code, acct, err) = run(&env, &["account", "get", "A050", "--json"], Some(&auditor));
    assert_eq!(code, 0, "{err}");
    let acct: Value = serde_json::from_str(&acct).unwrap();
    assert_eq!(acct["branch"], "BR3");
    assert_eq!(acct["utility"], "heat");

    // Run once more: every batch is done, nothing is sent twice.
    let (code, stdout, err) = run(&env, &json_args, Some(&ops));
    assert_eq!(code, 0, "{stdout}\n{err}");
    let again: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again["batches"], again["batches_skipped_as_done"]);
    assert_eq!(again["totals"]["agree"], true);

    // A second wave: an account billdb already holds, and a new account
    // whose payment carries a bank reference billdb already holds. The
    // cluster refuses both rows; they are withdrawn to the rejects file
    // and the rest is imported. billdb now holds more than this wave:
    // the totals differ, exit 3.
    let wave = tmp.path().join("wave2");
    std::fs::create_dir_all(&wave).unwrap();
    let mut a = Csv::new(
        "account_id,name,address,branch,utility,meter_id,tariff_code,area_m2,status,balance,opened,closed",
    );
    let dup_line = a.row(&[
        "A001",
        "X",
        "",
        "01",
        "E",
        "",
        "T-E1",
        "0",
        "0",
        "0.00",
        "2019-05-01",
        "",
    ]);
    a.row(&[
        "B001",
        "Y",
        "",
        "02",
        "H",
        "",
        "T-H1",
        "70",
        "0",
        "20.00",
        "2020-05-01",
        "",
    ]);
    a.write(&wave.join("accounts.csv"));
    Csv::new("card_no,account_id,generation,status").write(&wave.join("cards.csv"));
    let mut r = Csv::new(
        "account_id,kind,amount,units,time,operator,branch,tariff_code,invoice_no,bank_code,bank_ref,card_no,card_seq",
    );
    let pay_line = r.row(&[
        "B001",
        "PAY",
        "20.00",
        "0",
        "2024-12-01 10:00",
        "",
        "",
        "",
        "",
        "ICBC",
        "R000001",
        "",
        "",
    ]);
    r.row(&[
        "B001",
        "ADJ",
        "1.00",
        "0",
        "2024-12-02 10:00",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]);
    // A record of the refused account: billdb's A001 is another account.
    let refused_rec = r.row(&[
        "A001",
        "SALE",
        "5.00",
        "10",
        "2025-06-01 10:00",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ]);
    r.write(&wave.join("records.csv"));
    std::fs::write(wave.join("mapping.csv"), MAPPING).unwrap();
    let out2 = tmp.path().join("out2").to_string_lossy().into_owned();
    let args = import_args(&wave, &out2, &["--json"]);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, err) = run(&env, &args_ref, Some(&ops));
    assert_eq!(code, 3, "billdb holds more than the wave:\n{stdout}\n{err}");
    let rejects = read_rejects(Path::new(&out2));
    assert!(
        rejects[&("accounts.csv".to_string(), dup_line)].contains("ACCOUNT_EXISTS"),
        "{rejects:#?}"
    );
    assert!(
        rejects[&("records.csv".to_string(), pay_line)].contains("DUPLICATE_PAYMENT"),
        "{rejects:#?}"
    );
    assert!(
        rejects[&("records.csv".to_string(), refused_rec)].contains("refused by billdb"),
        "{rejects:#?}"
    );
    assert_eq!(rejects.len(), 3, "{rejects:#?}");
    let s2: Value = serde_json::from_str(&stdout).unwrap();
    // B001's legacy balance counted the payment billdb refused.
    let diffs = s2["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!(diffs[0]["account_id"], "B001");
    assert_eq!(diffs[0]["causes"][0]["cause"], "rejected_records");
    let (code, acct, err) = run(&env, &["account", "get", "B001", "--json"], Some(&auditor));
    assert_eq!(code, 0, "{err}");
    let acct: Value = serde_json::from_str(&acct).unwrap();
    assert_eq!(acct["balance"], "20.00", "the legacy balance, as given");
}
