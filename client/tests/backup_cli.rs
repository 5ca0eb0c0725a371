//! `billdb backup keygen | init | create | verify | list | prune | archive |
//! archive-verify` and `billdb restore [--until]` driven as an operator would, against a real three-node local
//! cluster the CLI starts (`billdb local up`): the good path in `--json`
//! and readable form, and for each command a bad input refused with a
//! machine-readable error (`{"error": {"code", "message"}}` with `--json`,
//! `error: CODE: …` on stderr) that changes nothing, a full disk (a real
//! tmpfs: root) among them. Ports 6901–6903,
//! 7001–7003, 7101–7103.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BASE_PORT: u16 = 6900;
const NODES: u16 = 3;

fn billdb() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_billdb"))
}

struct Env {
    ca: PathBuf,
    token: String,
}

/// Run the CLI; returns (exit success, stdout, stderr).
fn run(env: Option<&Env>, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(billdb());
    c.args(args)
        .env_remove("BILLDB_TOKEN")
        .env_remove("BILLDB_CA")
        .env_remove("BILLDB_ENDPOINT");
    if let Some(e) = env {
        c.env("BILLDB_CA", &e.ca).env("BILLDB_TOKEN", &e.token).env(
            "BILLDB_GRPC",
            (1..=NODES)
                .map(|n| format!("127.0.0.1:{}", BASE_PORT + 100 + n))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let out = c.output().expect("billdb runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok_json(env: Option<&Env>, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (ok, out, err) = run(env, &a);
    assert!(ok, "billdb {args:?} failed:\nstdout {out}\nstderr {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// A refusal: exit status 1, `error: CODE: …` on stderr, and with `--json`
/// the same code in `{"error": {...}}` on stdout. Returns the message.
fn refused(env: Option<&Env>, args: &[&str], json: bool, code: &str) -> String {
    let mut a = args.to_vec();
    if json {
        a.push("--json");
    }
    let (ok, out, err) = run(env, &a);
    assert!(!ok, "billdb {a:?} should fail:\n{out}");
    assert!(
        err.contains(&format!("error: {code}: ")),
        "billdb {a:?}: stderr does not name {code}: {err}"
    );
    if json {
        let v: Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        assert_eq!(v["error"]["code"], code, "{v}");
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        err
    }
}

/// Every path under `dir` with its size and content hash (to show that
/// nothing changed).
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
                out.insert(p, (0, String::new()));
            } else {
                let bytes = std::fs::read(&p).expect("read");
                let h = billdb_node_hash(&bytes);
                out.insert(p, (bytes.len() as u64, h));
            }
        }
    }
    out
}

fn billdb_node_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
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
fn backup_commands_as_an_operator_runs_them() {
    let t0 = std::time::Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lc");
    let dir_s = dir.to_string_lossy().into_owned();
    let (ok, out, err) = run(
        None,
        &[
            "local",
            "up",
            "--dir",
            &dir_s,
            "--nodes",
            &NODES.to_string(),
            "--base-port",
            &BASE_PORT.to_string(),
        ],
    );
    let _down = Down(dir_s.clone());
    assert!(ok, "local up failed:\n{out}\n{err}");
    let (ok, token, err) = run(None, &["local", "token", "ops", "--dir", &dir_s]);
    assert!(ok, "{err}");
    let env = Env {
        ca: dir.join("tls/ca.pem"),
        token: token.trim().to_string(),
    };
    let env = Some(&env);
    let endpoint = format!("127.0.0.1:{}", BASE_PORT + 1);
    let p = |p: &Path| p.to_string_lossy().into_owned();

    // keygen; a second keygen over the same key is refused, the key kept.
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    let prefix = p(&keys.join("backup"));
    let (ok, out, err) = run(None, &["backup", "keygen", "--out", &prefix]);
    assert!(ok, "{out}{err}");
    let private = keys.join("backup.key");
    let public = keys.join("backup.pub");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is private");
    }
    let key_before = std::fs::read(&private).expect("key");
    refused(
        None,
        &["backup", "keygen", "--out", &prefix],
        false,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        std::fs::read(&private).expect("key"),
        key_before,
        "key unchanged"
    );
    let (ok, _, err) = run(
        None,
        &["backup", "keygen", "--out", &p(&keys.join("other"))],
    );
    assert!(ok, "{err}");

    // create: into a directory that is not a backup: refused, untouched.
    let stranger = tmp.path().join("photos");
    std::fs::create_dir_all(&stranger).expect("dir");
    std::fs::write(stranger.join("holiday.jpg"), b"not a backup").expect("file");
    let stranger_before = tree(&stranger);
    let create = |to: &Path| -> Vec<String> {
        vec![
            "backup".into(),
            "create".into(),
            "--endpoint".into(),
            endpoint.clone(),
            "--to".into(),
            p(to),
            "--private-key".into(),
            p(&private),
        ]
    };
    let args: Vec<String> = create(&stranger);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(env, &args, true, "NOT_A_BACKUP");
    assert_eq!(tree(&stranger), stranger_before);

    // init: a new destination; a stranger directory: refused, untouched.
    refused(
        None,
        &["backup", "init", &p(&stranger)],
        false,
        "NOT_A_BACKUP",
    );
    assert_eq!(tree(&stranger), stranger_before);
    let dest = tmp.path().join("dest");
    let (ok, out, err) = run(None, &["backup", "init", &p(&dest)]);
    assert!(ok, "{out}{err}");
    assert!(dest.join("billdb-backup.json").is_file());

    // create twice, with a write between: the second is incremental.
    let args: Vec<String> = create(&dest);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let b1 = ok_json(env, &args);
    assert_eq!(b1["source_was_leader"], false, "{b1}");
    assert_eq!(b1["files_copied"], b1["files"], "{b1}");
    let t = ok_json(
        env,
        &[
            "ops",
            "tariff",
            "T-BACKUP",
            "--price",
            "0.50",
            "--effective-from",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert!(t.is_object(), "{t}");
    let (ok, text, err) = run(env, &args);
    assert!(ok, "{err}");
    assert!(text.starts_with("backup "), "{text}");
    let b2_id = text
        .split_whitespace()
        .nth(1)
        .expect("the backup id")
        .to_string();

    // list: both, oldest first; a directory that is not a backup: refused.
    let list = ok_json(None, &["backup", "list", &p(&dest)]);
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["backup_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        vec![b1["backup_id"].as_str().expect("id"), b2_id.as_str()]
    );
    assert!(list[1]["applied_index"].as_u64() > list[0]["applied_index"].as_u64());
    refused(
        None,
        &["backup", "list", &p(&stranger)],
        true,
        "NOT_A_BACKUP",
    );

    // verify: ok with the right key; another key's public half: a report
    // that says so (exit 1); a backup that is not there: refused.
    let v = ok_json(
        None,
        &["backup", "verify", &p(&dest), "--public-key", &p(&public)],
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["backup_id"], b2_id.as_str());
    let (ok, out, _) = run(
        None,
        &[
            "backup",
            "verify",
            &p(&dest),
            "--public-key",
            &p(&keys.join("other.pub")),
            "--json",
        ],
    );
    assert!(!ok, "another key must not verify");
    let v: Value = serde_json::from_str(out.trim()).expect("a JSON report");
    assert_eq!(v["ok"], false);
    assert_eq!(v["signature_ok"], false, "{v}");
    assert_eq!(v["error"]["code"], "VERIFY_FAILED", "{v}");
    refused(
        None,
        &[
            "backup",
            "verify",
            &p(&dest),
            "--backup",
            "20990101T000000Z-000000000001",
            "--public-key",
            &p(&public),
        ],
        true,
        "NO_SUCH_BACKUP",
    );

    // prune: a rule that keeps nothing is refused and changes nothing; a
    // dry run changes nothing; then --keep-last 1 deletes the first.
    let dest_before = tree(&dest);
    refused(
        None,
        &["backup", "prune", &p(&dest)],
        true,
        "INVALID_ARGUMENT",
    );
    assert_eq!(tree(&dest), dest_before);
    let dry = ok_json(
        None,
        &[
            "backup",
            "prune",
            &p(&dest),
            "--keep-last",
            "1",
            "--dry-run",
        ],
    );
    assert_eq!(tree(&dest), dest_before, "a dry run changes nothing");
    assert_eq!(dry["deleted_backups"], serde_json::json!([b1["backup_id"]]));
    let (ok, text, err) = run(None, &["backup", "prune", &p(&dest), "--keep-last", "1"]);
    assert!(ok, "{err}");
    assert!(
        text.contains(&format!(
            "deleted backup {}",
            b1["backup_id"].as_str().expect("id")
        )),
        "{text}"
    );
    assert!(text.contains("bytes freed"), "{text}");
    let list = ok_json(None, &["backup", "list", &p(&dest)]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let v = ok_json(
        None,
        &["backup", "verify", &p(&dest), "--public-key", &p(&public)],
    );
    assert_eq!(v["ok"], true, "the kept backup verifies after prune: {v}");

    // restore: over a data directory that is not empty: refused, untouched;
    // then into empty ones: a verified report.
    let members: Vec<String> = (1..=3u16)
        .map(|n| {
            format!(
                "id={n},raft=127.0.0.1:{},grpc=127.0.0.1:{},http=127.0.0.1:{}",
                6800 + 200 + n,
                6800 + 100 + n,
                6800 + n
            )
        })
        .collect();
    let restore_args = |dirs: &[PathBuf]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "restore".into(),
            "--from".into(),
            p(&dest),
            "--public-key".into(),
            p(&public),
            "--to-cluster".into(),
            "restored-cli".into(),
        ];
        for m in &members {
            a.push("--member".into());
            a.push(m.clone());
        }
        for (i, d) in dirs.iter().enumerate() {
            a.push("--data-dir".into());
            a.push(format!("{}={}", i + 1, p(d)));
        }
        a
    };
    let target = tmp.path().join("restore");
    let dirs: Vec<PathBuf> = (1..=3).map(|n| target.join(format!("n{n}"))).collect();
    std::fs::create_dir_all(&dirs[1]).expect("dir");
    std::fs::write(dirs[1].join("precious"), b"keep me").expect("file");
    let target_before = tree(&target);
    let a = restore_args(&dirs);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    refused(None, &a, true, "NOT_EMPTY");
    assert_eq!(tree(&target), target_before, "nothing written");
    std::fs::remove_file(dirs[1].join("precious")).expect("rm");
    let r = ok_json(None, &a);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["backup_id"], b2_id.as_str());
    assert_eq!(r["nodes"].as_array().map(Vec::len), Some(3));
    for d in &dirs {
        assert!(d.join("db").is_dir(), "{} restored", d.display());
    }

    // Point in time: two tariffs after the backup, archived; restore
    // --until a time between them holds the first and not the second.
    // Bad --until values are refused, nothing written.
    let tariff = |id: &str| {
        let t = ok_json(
            env,
            &[
                "ops",
                "tariff",
                id,
                "--price",
                "0.60",
                "--effective-from",
                "2020-01-01T00:00:00Z",
            ],
        );
        assert!(t.is_object(), "{t}");
    };
    tariff("T-PIT-1");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let between = {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        billdb_node::api::validate::to_rfc3339(ms)
    };
    std::thread::sleep(std::time::Duration::from_millis(1200));
    tariff("T-PIT-2");
    let archive_args: Vec<String> = vec![
        "backup".into(),
        "archive".into(),
        "--endpoint".into(),
        endpoint.clone(),
        "--to".into(),
        p(&dest),
        "--private-key".into(),
        p(&private),
    ];
    let archive_args: Vec<&str> = archive_args.iter().map(String::as_str).collect();
    let a = ok_json(env, &archive_args);
    assert!(a["entries_written"].as_u64().unwrap_or(0) >= 2, "{a}");
    assert_eq!(a["gaps"].as_array().map(Vec::len), Some(0), "{a}");
    let v = ok_json(
        None,
        &[
            "backup",
            "archive-verify",
            &p(&dest),
            "--public-key",
            &p(&public),
        ],
    );
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    let (ok, text, err) = run(
        None,
        &[
            "backup",
            "archive-verify",
            &p(&dest),
            "--public-key",
            &p(&public),
        ],
    );
    assert!(ok && text.starts_with("archive: OK"), "{text}{err}");
    // Another key: refused, naming the segment.
    let other_pub = p(&keys.join("other.pub"));
    let msg = refused(
        None,
        &[
            "backup",
            "archive-verify",
            &p(&dest),
            "--public-key",
            &other_pub,
        ],
        true,
        "VERIFY_FAILED",
    );
    assert!(msg.contains("does not verify"), "{msg}");
    let pit_target = tmp.path().join("pit");
    let pit_dirs: Vec<PathBuf> = (1..=3).map(|n| pit_target.join(format!("n{n}"))).collect();
    let mut a = restore_args(&pit_dirs);
    a.push("--until".into());
    a.push("yesterday".into());
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let msg = refused(None, &args, true, "INVALID_ARGUMENT");
    assert!(msg.contains("RFC 3339"), "{msg}");
    let n = a.len();
    a[n - 1] = "2001-01-01T00:00:00Z".into();
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    refused(None, &args, true, "NO_SUCH_BACKUP");
    assert!(
        !pit_target.exists() || tree(&pit_target).values().all(|(n, _)| *n == 0),
        "nothing written"
    );
    a[n - 1] = between.clone();
    a.push("--diff-after".into());
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = ok_json(None, &args);
    assert_eq!(r["ok"], true, "{r}");
    let pit = &r["point_in_time"];
    assert_eq!(pit["first_not_replayed"]["ops"]["define_tariff"], 1, "{r}");
    assert!(pit["replayed_commands"].as_u64().unwrap_or(0) >= 1, "{r}");
    for d in &pit_dirs {
        assert!(d.join("db").is_dir(), "{} restored", d.display());
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "db")
            .collect();
        assert!(leftovers.is_empty(), "working copies left: {leftovers:?}");
    }
    // The restored state holds T-PIT-1 and not T-PIT-2.
    let db = billdb_node::store::checkpoint::open_read_only(&pit_dirs[0].join("db")).expect("open");
    let has = |id: &str| {
        let cf = db.cf_handle("tariffs").expect("tariffs family");
        db.prefix_iterator_cf(cf, id.as_bytes())
            .flatten()
            .any(|(k, _)| k.starts_with(id.as_bytes()))
    };
    assert!(has("T-PIT-1"), "T-PIT-1, before the point, is restored");
    assert!(!has("T-PIT-2"), "T-PIT-2, after the point, is not");
    drop(db);

    // A full disk (a real 8 MiB tmpfs): create and restore are refused
    // with NO_SPACE before writing anything; nothing is left that a later
    // run could take for a backup or a restored node.
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the full-disk case mounts a tmpfs: run as root (CI does)"
    );
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small).expect("dir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "billdb-full-disk"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a tmpfs at {}", small.display());
    let _umount = Umount(small.clone());
    let full_dest = small.join("dest");
    let (ok, out, err) = run(None, &["backup", "init", &p(&full_dest)]);
    assert!(ok, "{out}{err}");
    let before = tree(&full_dest);
    let args: Vec<String> = create(&full_dest);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let msg = refused(env, &args, true, "NO_SPACE");
    assert!(
        msg.contains("bytes free") && msg.contains("nothing was written"),
        "{msg}"
    );
    assert_eq!(tree(&full_dest), before, "nothing written on the full disk");
    let list = ok_json(None, &["backup", "list", &p(&full_dest)]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "no backup: {list}");
    let full_dirs: Vec<PathBuf> = (1..=3).map(|n| small.join(format!("r{n}"))).collect();
    let a = restore_args(&full_dirs);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let msg = refused(None, &a, true, "NO_SPACE");
    assert!(msg.contains("the restore needs"), "{msg}");
    for d in &full_dirs {
        assert!(!d.join("db").exists(), "{}: nothing restored", d.display());
    }
    eprintln!("backup CLI test wall {:?}", t0.elapsed());
}

/// Unmounts the test's tmpfs.
struct Umount(PathBuf);
impl Drop for Umount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
