//! The shell blocks a user copies from README.md and docs/INTEGRATION.md,
//! run as written, in order, against the cluster `billdb local up` makes in
//! a scratch directory (the documented default ports 7001–7205 and
//! `.billdb/local`), with `$B` the directory of the built binaries and the
//! test's Python environment first on `PATH`. Every ```sh block of those
//! two files is either run here or named below with the reason it is not
//! (a build, a tool this machine lacks, a long run); a new block fails the
//! test until it is one or the other.

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
    assert_eq!(readme.len(), 2);
    assert_eq!(integration.len(), 2);

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
