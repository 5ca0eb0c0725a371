//! The shell blocks a user copies from README.md and docs/*.md (INTEGRATION,
//! OPERATIONS, BENCHMARKS and the benchmark history), run as written, in
//! order, against the cluster `billdb local up` makes in a scratch
//! directory (the documented default ports 7001–7205 and `.billdb/local`),
//! with `$B` the directory of the built binaries and the test's Python
//! environment first on `PATH`. Every ```sh block of those files is either
//! run here or named below with the reason it is not (a build, a tool this
//! machine lacks, a long run, hosts of a real deployment); a new block
//! fails the test until it is one or the other.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How each block, by its first line, is handled.
enum Plan {
    Run,
    /// Not run here, and why (what covers it instead).
    NotRun(&'static str),
}

const README_BLOCKS: &[(&str, Plan)] = &[
    (
        "deploy/quickstart.sh",
        Plan::NotRun("builds the workspace; the test runs `billdb local up`, its last step"),
    ),
    (
        "eval \"$($B/billdb local env)\"          # BILLDB_CA",
        Plan::Run,
    ),
    (
        "eval \"$($B/billdb local env)\"                           # the CA",
        Plan::Run,
    ),
    ("deploy/test.sh", Plan::NotRun("the test command itself")),
    (
        "sudo $B/billdb-chaos run",
        Plan::NotRun(
            "the 30-minute chaos run, a documented long command (chaos/tests run the short one)",
        ),
    ),
];

const INTEGRATION_BLOCKS: &[(&str, Plan)] = &[
    (
        "BILLDB_API_FUZZ_EXAMPLES=200",
        Plan::NotRun("the long fuzzing run; node/tests/api_contract.rs runs the short one"),
    ),
    ("eval \"$(billdb local env)\"", Plan::Run),
    ("curl -s --cacert \"$BILLDB_CA\"", Plan::Run),
    (
        "grpcurl -cacert",
        Plan::NotRun(
            "grpcurl is not packaged in Debian 12; node/tests/grpc_discovery.rs does the same through reflection from Python",
        ),
    ),
];

const OPERATIONS_BLOCKS: &[(&str, Plan)] = &[
    (
        "$B/billdb cert cluster --cluster-id billing-prod",
        Plan::NotRun(
            "`--node 2=... ... --node 5=...` stand for the five hosts; client/tests/cli.rs runs `cert cluster` and `token add`",
        ),
    ),
    (
        "cargo build --release --workspace --locked",
        Plan::NotRun("a build (the test runs on the built binaries)"),
    ),
    (
        "sudo cp /etc/billdb/node.toml.example",
        Plan::NotRun("installs on a server; node/tests/deploy_package.rs installs the package"),
    ),
    (
        "deploy/container/build.sh [--bin-dir",
        Plan::NotRun("the option synopsis of the image build"),
    ),
    (
        "deploy/container/build.sh",
        Plan::NotRun("builds the image and starts compose; node/tests/deploy_compose.rs does"),
    ),
    (
        "export BILLDB_CA=deploy/container/secrets",
        Plan::NotRun("talks to the compose cluster; node/tests/deploy_compose.rs does"),
    ),
    (
        "$B/billdb cluster init --endpoint https://10.0.0.1:7001",
        Plan::NotRun("the five servers' addresses; `billdb local up` initialises the same way"),
    ),
    (
        "$B/billdb cluster add-learner 6",
        Plan::NotRun("a sixth server; node/tests/cluster.rs replaces a node"),
    ),
    (
        "$B/billdb cluster status --endpoint $EP --json | jq .op_level",
        Plan::NotRun(
            "a cluster in the middle of an upgrade; node/tests/upgrade.rs reads these fields",
        ),
    ),
    (
        "billdb node repair --endpoint https://node3:7001",
        Plan::NotRun("a damaged replica on a named host; client/tests/cli.rs repairs one"),
    ),
    ("billdb ops tariff HEAT-RES", Plan::Run),
    (
        "billdb season bill 2026-27 --endpoint https://node1:7001",
        Plan::NotRun("names a host node1; run below at the local cluster's endpoint"),
    ),
    (
        "# CSV: bank_ref,account_id,amount,time",
        Plan::NotRun(
            "a bank's file of 2026-03-07 on node1; client/tests/bank_cli.rs reconciles one",
        ),
    ),
    ("billdb bank reconciliations --bank ICBC", Plan::Run),
    (
        "$B/billdb cluster remove 3",
        Plan::NotRun("removes a dead server; node/tests/cluster.rs replaces a node"),
    ),
    (
        "$B/billdb backup keygen --out /secure/drill-operator",
        Plan::NotRun("a drill on a deployment; client/tests/drill.rs runs drills"),
    ),
    (
        "$B/billdb backup keygen --out /secure/billdb-backup",
        Plan::NotRun("backups to /backups; client/tests/backup_cli.rs runs the same commands"),
    ),
    (
        "# certificates of the new cluster first",
        Plan::NotRun("a restore into a new cluster; client/tests/backup_cli.rs restores one"),
    ),
    (
        "$B/billdb backup prune /backups/billdb --keep-daily",
        Plan::NotRun("the option synopsis; client/tests/backup_cli.rs prunes"),
    ),
    (
        "BILLDB_OUTAGE_S=300 cargo test",
        Plan::NotRun("the long outage run, a documented command (the test command runs 60 s)"),
    ),
    (
        "sudo $B/billdb-chaos run --dir /tmp/chaos",
        Plan::NotRun("the 30-minute chaos run (chaos/tests run the short one)"),
    ),
    ("$B/billdb cert ca --cluster-id heat-north", Plan::Run),
];

const BENCHMARKS_BLOCKS: &[(&str, Plan)] = &[
    (
        "cargo build --release --workspace --all-targets",
        Plan::NotRun(
            "the full-scale benchmark (hours); bench/tests/smoke.rs runs every workload briefly",
        ),
    ),
    (
        "cargo test --release -p billdb-node --test outage",
        Plan::NotRun("the outage tests, part of the test command"),
    ),
];

const HISTORY_BLOCKS: &[(&str, Plan)] = &[(
    "billdb-bench up --dir /var/tmp/bench-lc",
    Plan::NotRun("a record of an earlier benchmark run, kept as it was"),
)];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every ```sh block of a markdown file: (line number, text).
fn sh_blocks(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = md.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim_start() == "```sh" {
            let mut text = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim_start().starts_with("```") {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            out.push((i + 1, text));
        }
    }
    out
}

fn pyenv_bin() -> PathBuf {
    let env = std::env::var_os("BILLDB_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/billdb-pyenv"));
    let bin = env.join("bin");
    assert!(
        bin.join("python3").exists(),
        "{}/python3 is missing: run deploy/setup.sh",
        bin.display()
    );
    bin
}

/// The blocks of `file` to run, checked against its plan.
fn planned(file: &str, plan: &[(&str, Plan)]) -> Vec<(usize, String)> {
    let md = std::fs::read_to_string(repo().join(file)).expect("read the markdown");
    let blocks = sh_blocks(&md);
    let mut run = Vec::new();
    for (line, text) in &blocks {
        let first = text.lines().next().unwrap_or_default();
        let entry = plan.iter().find(|(start, _)| first.starts_with(start));
        match entry {
            Some((_, Plan::Run)) => run.push((*line, text.clone())),
            Some((_, Plan::NotRun(why))) => eprintln!("{file}:{line}: not run: {why}"),
            None => panic!(
                "{file}:{line}: a shell block this test does not know ({first:?}): run it here \
                 or name it with the reason it cannot run"
            ),
        }
    }
    assert_eq!(
        blocks.len(),
        plan.len(),
        "{file}: the plan names a block that is gone"
    );
    run
}

fn bash(cwd: &Path, b: &Path, block: &str, what: &str) -> String {
    let path = format!(
        "{}:{}:{}",
        b.display(),
        pyenv_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(block)
        .current_dir(cwd)
        .env("B", b)
        .env("PATH", path)
        .env_remove("BILLDB_TOKEN")
        .env_remove("BILLDB_CA")
        .env_remove("BILLDB_ENDPOINT")
        .env_remove("BILLDB_GRPC")
        .env_remove("BILLDB_LOCAL_DIR")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("== {what}\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{what} failed as written:\n{block}\n{stderr}"
    );
    stdout
}

#[test]
fn the_readme_and_integration_shell_blocks_run_as_written() {
    let b = Path::new(env!("CARGO_BIN_EXE_billdb"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let readme = planned("README.md", README_BLOCKS);
    let integration = planned("docs/INTEGRATION.md", INTEGRATION_BLOCKS);
    let operations = planned("docs/OPERATIONS.md", OPERATIONS_BLOCKS);
    assert!(planned("docs/BENCHMARKS.md", BENCHMARKS_BLOCKS).is_empty());
    assert!(planned("docs/benchmarks-history.md", HISTORY_BLOCKS).is_empty());
    assert_eq!(readme.len(), 2);
    assert_eq!(integration.len(), 2);
    assert_eq!(operations.len(), 3);

    // The examples' directory as the guide has it, beside the cluster.
    let work = tempfile::tempdir().expect("tempdir");
    let examples = work.path().join("docs/examples");
    std::fs::create_dir_all(&examples).expect("mkdir");
    for f in ["billdb_http.py", "counter_session.py", "bank_posting.py"] {
        std::fs::copy(repo().join("docs/examples").join(f), examples.join(f)).expect("copy");
    }
    let _down = Down(b.clone(), work.path().to_path_buf());

    // `deploy/quickstart.sh` ends with this (after building).
    bash(work.path(), &b, "$B/billdb local up", "billdb local up");
    // The cluster tour (kill, start, status, metrics, rotate certificates).
    let tour = bash(
        work.path(),
        &b,
        &readme[0].1,
        &format!("README.md:{}", readme[0].0),
    );
    assert!(tour.contains("billdb_"), "the metrics were printed: {tour}");
    // The billing walkthrough; it ends with `local down`.
    let billing = bash(
        work.path(),
        &b,
        &readme[1].1,
        &format!("README.md:{}", readme[1].0),
    );
    assert!(billing.contains("INV000000000001"), "{billing}");
    // The integration examples need the cluster up again.
    bash(
        work.path(),
        &b,
        "$B/billdb local up",
        "billdb local up (again)",
    );
    let py = bash(
        work.path(),
        &b,
        &integration[0].1,
        &format!("docs/INTEGRATION.md:{}", integration[0].0),
    );
    assert!(py.contains("\"verdict\""), "{py}");
    let curl = bash(
        work.path(),
        &b,
        &format!("eval \"$(billdb local env)\"\n{}", integration[1].1),
        &format!("docs/INTEGRATION.md:{}", integration[1].0),
    );
    assert!(curl.contains("\"verdict\""), "{curl}");

    // OPERATIONS.md, "The heating season": the two heat accounts it names
    // exist (as after a migration), then the block as written.
    let env = "eval \"$(billdb local env)\"\n";
    bash(
        work.path(),
        &b,
        &format!(
            "{env}billdb account open H-000123 --name Heat --branch B01 --utility heat --tariff-id HEAT-RES\n\
             billdb account open H-000456 --name Heat --branch B01 --utility heat --tariff-id HEAT-RES\n\
             billdb account contact H-000456 --area 60.00\n"
        ),
        "the heat accounts the season runbook names",
    );
    let season = bash(
        work.path(),
        &b,
        &format!("{env}{}", operations[0].1),
        &format!("docs/OPERATIONS.md:{}", operations[0].0),
    );
    assert!(season.contains("HEAT-RES"), "{season}");
    // The season bill, as the runbook has it, at this cluster's endpoint:
    // H-000123: 85.50 m² × 3.65 = 312.075 → 312.08 (half-even to the
    // cent); H-000456 suspended pays 30 %: 60.00 × 3.65 × 0.30 = 65.70.
    let bill = bash(
        work.path(),
        &b,
        &format!("{env}billdb season bill 2026-27"),
        "docs/OPERATIONS.md season bill (local endpoint)",
    );
    assert!(bill.contains("2 accounts billed, total 377.78"), "{bill}");
    // The bank's stored reconciliations and its day (none yet: still 0).
    bash(
        work.path(),
        &b,
        &format!("{env}{}", operations[1].1),
        &format!("docs/OPERATIONS.md:{}", operations[1].0),
    );
    // Certificates by hand, into the scratch directory.
    let certs = work.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    bash(
        &certs,
        &b,
        &operations[2].1,
        &format!("docs/OPERATIONS.md:{}", operations[2].0),
    );
    for f in ["ca/ca.pem", "node1/node1.pem", "node5/node5.key"] {
        assert!(certs.join(f).is_file(), "{f} was not made");
    }
    assert!(
        std::fs::read_dir(certs.join("clients"))
            .expect("clients/")
            .count()
            >= 2,
        "a client certificate and key"
    );
}

/// Stops the scratch cluster however the test ends.
struct Down(PathBuf, PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(self.0.join("billdb"))
            .args(["local", "down"])
            .current_dir(&self.1)
            .output();
    }
}
