//! The HTTP API against its own description: the document a node serves
//! at `/openapi.json` (no token) is the checked-in `api/openapi.json`, and a
//! property-based API tester (schemathesis, from the Python environment
//! `deploy/setup.sh` makes) fuzzes every billing, report and season route of
//! a real five-node cluster from it, positive and negative cases: no 5xx,
//! every answer matches its schema, no undocumented status code or content
//! type, every request the description calls invalid is refused
//! (`negative_data_rejection`), every route refuses a request without a
//! token (`ignored_auth`) and an undocumented method (`unsupported_method`). Cluster administration and backup routes are described but not
//! fuzzed here (they remove members and rebuild nodes).
//!
//! `BILLDB_API_FUZZ_EXAMPLES` (default 25) sets the examples per route; the
//! longer documented run is in docs/INTEGRATION.md.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::json;

/// Identifiers that exist (seeded above), each offered for its parameter
/// in most generated requests; the rest stay random.
const CONFIG: &str = r#"
[dictionaries.accounts]
values = ["A1", "H2"]
[dictionaries.cards]
values = ["CARD-1"]
[dictionaries.records]
values = ["A1:1", "H2:1", "H2:2"]
[dictionaries.invoices]
values = ["INV000000000001"]
[dictionaries.tariffs]
values = ["T1", "H1"]
[dictionaries.seasons]
values = ["2026-2027"]
[dictionaries.banks]
values = ["ICBC"]
[dictionaries.branches]
values = ["B01", "B02"]

[parameters]
"path.account_id" = { dictionary = "accounts", probability = 0.6 }
"path.card_no" = { dictionary = "cards", probability = 0.6 }
"path.record_id" = { dictionary = "records", probability = 0.6 }
"path.invoice_no" = { dictionary = "invoices", probability = 0.6 }
"path.tariff_id" = { dictionary = "tariffs", probability = 0.6 }
"path.season_id" = { dictionary = "seasons", probability = 0.6 }
"path.bank_code" = { dictionary = "banks", probability = 0.6 }
"body.account_id" = { dictionary = "accounts", probability = 0.6 }
"body.card_no" = { dictionary = "cards", probability = 0.6 }
"body.tariff_id" = { dictionary = "tariffs", probability = 0.6 }
"body.bank_code" = { dictionary = "banks", probability = 0.6 }
"body.branch" = { dictionary = "branches", probability = 0.6 }
"#;

#[test]
fn the_served_description_is_the_checked_in_one_and_the_api_keeps_it() {
    let c = TestCluster::start(37300, 5);
    let checked_in = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json"),
    )
    .expect("api/openapi.json");

    // Served without a token, byte for byte the checked-in document.
    let served = c
        .http_as(2, "none")
        .get("/openapi.json")
        .expect("GET /openapi.json");
    let checked: serde_json::Value = serde_json::from_str(&checked_in).expect("checked-in JSON");
    assert_eq!(
        served, checked,
        "the served document differs from api/openapi.json"
    );
    assert_eq!(served["openapi"], "3.1.0");

    // Every worked example in the document fits the schema it shows; and
    // the check can fail (a money amount as a number is caught).
    let check_examples = |doc: &serde_json::Value| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("openapi.json");
        std::fs::write(&path, doc.to_string()).expect("write");
        let out = Command::new(py_tool("python"))
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/py/check_openapi_examples.py"),
            )
            .arg(&path)
            .output()
            .expect("run the examples check");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.success(), v)
    };
    let (ok, v) = check_examples(&served);
    assert!(ok, "examples that do not fit their schema: {v}");
    assert!(v["checked"].as_u64().unwrap_or(0) >= 10, "{v}");
    eprintln!("OpenAPI examples checked against their schemas: {v}");
    let mut broken = served.clone();
    broken["paths"]["/v1/payments"]["post"]["requestBody"]["content"]["application/json"]["example"]
        ["amount"] = json!(200);
    let (ok, v) = check_examples(&broken);
    assert!(!ok, "a number for a money string went unnoticed: {v}");

    // Data for the fuzzer to find: the identifiers in CONFIG's
    // dictionaries exist, so generated requests reach past "not found".
    let ops = c.http(1);
    let bank = c.http_as(1, "bank");
    let seed: &[(&str, &str, serde_json::Value)] = &[
        (
            "PUT",
            "/v1/tariffs/T1",
            json!({"request_id": "s-1", "kind": "flat", "price": "0.50"}),
        ),
        (
            "PUT",
            "/v1/tariffs/H1",
            json!({"request_id": "s-2", "kind": "area", "price": "25.00", "suspended_share": "0.3"}),
        ),
        (
            "POST",
            "/v1/accounts",
            json!({"request_id": "s-3", "account_id": "A1", "name": "Fuzz", "branch": "B01", "utility": "electricity", "tariff_id": "T1"}),
        ),
        (
            "POST",
            "/v1/accounts",
            json!({"request_id": "s-4", "account_id": "H2", "name": "Heat", "branch": "B02", "utility": "heat", "tariff_id": "H1"}),
        ),
        (
            "PATCH",
            "/v1/accounts/H2",
            json!({"request_id": "s-5", "area": "80.50"}),
        ),
        (
            "POST",
            "/v1/cards",
            json!({"request_id": "s-6", "account_id": "A1", "card_no": "CARD-1"}),
        ),
        (
            "POST",
            "/v1/purchases",
            json!({"request_id": "s-7", "card_no": "CARD-1", "amount": "100.00"}),
        ),
        (
            "POST",
            "/v1/seasons",
            json!({"request_id": "s-8", "season_id": "2026-2027"}),
        ),
        (
            "POST",
            "/v1/seasons/2026-2027/bill",
            json!({"request_id": "s-9"}),
        ),
    ];
    for (method, path, body) in seed {
        let r = match *method {
            "PUT" => ops.put_json(path, body),
            "PATCH" => {
                let addr = c.c.http_addr(1).expect("addr");
                let token = c.c.token("ops").expect("token");
                let (status, v) = raw_request(&addr, "PATCH", path, &body.to_string(), &token);
                assert_eq!(status, 200, "PATCH {path}: {v}");
                Ok(v)
            }
            _ => ops.post(path, body),
        };
        r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    }
    bank.post(
        "/v1/payments",
        &json!({"request_id": "s-10", "account_id": "H2", "amount": "50.00", "bank_code": "ICBC", "bank_ref": "R1"}),
    )
    .expect("payment");

    let examples = std::env::var("BILLDB_API_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("openapi.json");
    std::fs::write(&doc, &checked_in).expect("write the document");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write the config");
    let out = Command::new(py_tool("st"))
        .current_dir(dir.path())
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(&doc)
        .args(["--url", &c.c.http_url(1).expect("url")])
        .arg("--tls-verify")
        .arg(c.c.ca_bundle_path())
        .args(["-H", &format!("Authorization: Bearer {}", c.c.token("ops").expect("token"))])
        .args(["--exclude-tag", "cluster", "--exclude-tag", "backup"])
        // One worker: schemathesis's workers are threads, and CPython
        // 3.11's `ast` keeps its recursion-depth counter per interpreter,
        // not per thread, so two threads describing Hypothesis lambdas
        // at once can fail inside the tool with "AST constructor
        // recursion depth mismatch" — a runtime error of the tester,
        // not of the API.
        .args(["--max-examples", &examples, "--seed", "20261206", "--workers", "1"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection,ignored_auth,unsupported_method",
        ])
        .args(["--report", "junit", "--report-dir"])
        .arg(dir.path())
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the API broke its description (see above)"
    );
    // It really tested: every selected route, thousands of cases.
    let tested = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .expect("a 'Tested: N' line");
    assert!(tested >= 35, "only {tested} operations tested");
    let cases = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" generated, ")
                .map(|(n, _)| n.trim().to_string())
        })
        .and_then(|n| n.parse::<u32>().ok())
        .expect("an 'N generated' line");
    assert!(cases >= 500, "only {cases} cases generated");
    eprintln!("schemathesis: {tested} operations, {cases} cases, no failure");
}
