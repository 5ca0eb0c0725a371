//! The HTTP API against its own description: the document a node serves
//! at `/openapi.json` (no token) is the checked-in `api/openapi.json`, and a
//! property-based API tester (schemathesis, from the Python environment
//! `deploy/setup.sh` makes) fuzzes every billing, report and season route of
//! a real five-node cluster from it, positive and negative cases: no 5xx,
//! every answer matches its schema, no undocumented status code or content
//! type, every route refuses a request without a token (`ignored_auth`)
//! and an undocumented method (`unsupported_method`). Cluster administration and backup routes are described but not
//! fuzzed here (they remove members and rebuild nodes).
//!
//! `BILLDB_API_FUZZ_EXAMPLES` (default 25) sets the examples per route; the
//! longer documented run is in docs/INTEGRATION.md.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::json;

fn pyenv() -> PathBuf {
    let env = std::env::var_os("BILLDB_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/billdb-pyenv"));
    assert!(
        env.join("bin/st").exists(),
        "{}/bin/st is missing: run deploy/setup.sh (it makes the Python environment the API tests use)",
        env.display()
    );
    env
}

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

    // Some data for the fuzzer to find.
    let ops = c.http(1);
    ops.put_json(
        "/v1/tariffs/T1",
        &json!({"request_id": "tariff-T1", "kind": "flat", "price": "0.50"}),
    )
    .expect("tariff");
    ops.post(
        "/v1/accounts",
        &json!({"request_id": "open-A1", "account_id": "A1", "name": "Fuzz",
                "branch": "B01", "utility": "electricity", "tariff_id": "T1"}),
    )
    .expect("open");

    let examples = std::env::var("BILLDB_API_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = dir.path().join("openapi.json");
    std::fs::write(&doc, &checked_in).expect("write the document");
    let out = Command::new(pyenv().join("bin/st"))
        .current_dir(dir.path())
        .arg("--no-color")
        .arg("run")
        .arg(&doc)
        .args(["--url", &c.c.http_url(1).expect("url")])
        .arg("--tls-verify")
        .arg(c.c.ca_bundle_path())
        .args(["-H", &format!("Authorization: Bearer {}", c.c.token("ops").expect("token"))])
        .args(["--exclude-tag", "cluster", "--exclude-tag", "backup"])
        .args(["--max-examples", &examples, "--seed", "20261206", "--workers", "2"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth,unsupported_method",
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
