//! Scheduled backups and prune against real processes: (a) the cluster
//! backs itself up once per interval from a follower, keeps doing so when
//! the node writing a backup is killed in the middle of it (another
//! follower takes the slot over), and `/metrics` and status show the
//! failure and the recovery; (b) prune keeps exactly the backups its rules
//! name, deletes every file only the others referenced and the leftovers of
//! interrupted runs, refuses while a backup is being written, and every
//! kept backup still verifies and restores; (c) the cluster archives its
//! own log for point-in-time restore, gapless across the death of the node
//! writing it. Base ports 6000, 6300 and 38000 (each uses P+1..5,
//! P+101..105, P+201..205).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use billdb_client::backup::{self, CreateOpts, RestoreOpts, Retention, VerifyOpts};
use billdb_client::local::RaftTimings;
use billdb_node::backup::schedule::Done;
use billdb_node::types::{NodeId, NodeInfo};
use common::*;
use serde_json::{Value, json};

/// `n` imports of 20 accounts and 200 charges (`tag` keeps request ids apart).
fn import(c: &TestCluster, tag: &str, n: usize) {
    let ops = c.http(c.leader());
    for k in 0..n {
        let accounts: Vec<Value> = (0..20)
            .map(|i| {
                json!({"account_id": format!("{tag}{k}-{i}"), "name": "History", "address": "",
                    "branch": if i % 2 == 0 { "B01" } else { "B02" },
                    "utility": "electricity",
                    "meter_id": "", "tariff_id": "T1", "area": "0", "status": "active",
                    "balance": format!("{i}.{:02}", i % 100), "opened_ms": 1_000_000_000_000i64,
                    "closed_ms": null, "card_no": null, "card_generation": 0})
            })
            .collect();
        let records: Vec<Value> = (0..200i64)
            .map(|i| {
                json!({"account_id": format!("{tag}{k}-{}", i % 20), "kind": "charge",
                    "amount": format!("{}.{:02}", 1 + i % 50, i % 97), "units": "0",
                    "ts_ms": 1_000_000_200_000i64 + i * 1000, "operator_id": "legacy",
                    "branch": "B01", "tariff_id": "", "invoice_no": "", "bank_code": "",
                    "bank_ref": "", "card_no": "", "card_seq": 0})
            })
            .collect();
        let imp = ops
            .post(
                "/v1/import",
                &json!({"request_id": format!("imp-{tag}-{k}"), "accounts": accounts, "records": records}),
            )
            .expect("import");
        assert_eq!(imp["records"], 200, "{imp}");
    }
}

fn verify_deep(dir: &Path, id: &str, public: &Path) -> backup::VerifyReport {
    backup::verify(&VerifyOpts {
        dir: dir.to_path_buf(),
        backup_id: Some(id.to_string()),
        public_key: public.to_path_buf(),
        deep: true,
        progress: false,
    })
    .expect("verify runs")
    .0
}

/// The `done` records of the scheduled backups in `dir`, by slot.
fn done_records(dir: &Path) -> BTreeMap<u64, Done> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join("schedule")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("slot-") && name.ends_with(".done") {
            let d: Done = serde_json::from_slice(&std::fs::read(e.path()).expect("read"))
                .expect("a done record decodes");
            out.insert(d.slot, d);
        }
    }
    out
}

/// The claim file of the scheduled backups in `dir`, if one exists:
/// (slot, node).
fn current_claim(dir: &Path) -> Option<(u64, NodeId)> {
    for e in std::fs::read_dir(dir.join("schedule")).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("slot-") && name.ends_with(".claim") {
            let v: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            return Some((v["slot"].as_u64()?, v["node"].as_u64()?));
        }
    }
    None
}

/// Sum of one sample over the given nodes' `/metrics`.
fn metric_sum(c: &TestCluster, nodes: &[NodeId], sample: &str) -> f64 {
    nodes.iter().map(|n| c.metric(*n, sample)).sum()
}

const INTERVAL_S: u64 = 16;

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

/// `promtool check metrics` passes on an exposition (promtool from
/// Debian's prometheus package, as the monitoring test uses; fails, never
/// skips, when it is missing).
fn assert_promtool_clean(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let promtool = ["/usr/bin/promtool", "promtool"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect("promtool is not installed: run deploy/setup.sh");
    let mut child = Command::new(promtool)
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
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (a) must-show #5. Every node starts with the backup fault point set: a
/// backup it claims waits. The first claimant is killed while it holds its
/// claim; the others are let go.
#[test]
fn scheduled_backups_continue_when_the_node_writing_one_is_killed() {
    let t0 = Instant::now();
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, public) = backup::keygen(&keys.path().join("sched")).expect("keygen");
    let shared = tempfile::tempdir().expect("tempdir");
    let dest = shared.path().join("backups");
    // Made once by the operator (`billdb backup init`): nodes never make it.
    billdb_node::backup::store::open_destination(&dest).expect("destination");
    let extra = format!(
        "[backup]\ndir = {:?}\ninterval_s = {INTERVAL_S}\nsigning_key_file = {:?}\nclaim_stale_s = 3\nstagger_s = 1\n[backup.retention]\nkeep_last = 1000\n",
        dest.display().to_string(),
        private.display().to_string()
    );
    let pause = |c: &billdb_client::local::LocalCluster, n: NodeId| {
        c.data_dir(n)
            .join(billdb_api::failpoints::BACKUP_PAUSE_FILE)
    };
    // Start just after a slot begins, so the first claim has most of its
    // slot left and the takeover happens within it.
    let now_ms = billdb_node::backup::store::unix_ms();
    std::thread::sleep(Duration::from_millis(
        INTERVAL_S * 1000 - now_ms % (INTERVAL_S * 1000) + 100,
    ));
    let c = TestCluster::start_configured(
        6000,
        5,
        RaftTimings::default(),
        &[(billdb_api::failpoints::ENV, "1")],
        &extra,
        &|c| {
            for n in c.node_ids() {
                std::fs::create_dir_all(c.data_dir(n)).expect("data dir");
                std::fs::write(pause(c, n), b"").expect("pause file");
            }
        },
    );
    let all: Vec<NodeId> = (1..=5).collect();
    // The scheduler's metrics exist from the start, HELP text included.
    let text = c.metrics_text(1);
    for name in [
        "billdb_backup_interval_seconds",
        "billdb_backup_last_success_timestamp_seconds",
        "billdb_backup_failures_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    assert_eq!(
        c.metric(1, "billdb_backup_interval_seconds"),
        INTERVAL_S as f64
    );

    // The first claim: by a follower, waiting at the fault point.
    let (slot, victim) = wait_for(
        "the first claim",
        Duration::from_secs(3 * INTERVAL_S),
        || current_claim(&dest),
    );
    let claim_seen_ms = billdb_node::backup::store::unix_ms();
    let leader = c.leader();
    assert_ne!(victim, leader, "the leader never claims");
    assert!(done_records(&dest).is_empty(), "the claimant waits");
    for n in &all {
        assert_eq!(
            c.metric(*n, "billdb_backup_last_success_timestamp_seconds"),
            0.0,
            "no backup yet"
        );
    }
    let killed_at_ms = billdb_node::backup::store::unix_ms();
    assert!(c.c.kill(victim).expect("kill"), "node {victim} was running");
    let survivors: Vec<NodeId> = all.iter().copied().filter(|n| *n != victim).collect();
    for n in &survivors {
        std::fs::remove_file(pause(&c.c, *n)).expect("unpause");
    }
    eprintln!("killed node {victim} holding the claim on slot {slot}");
    import(&c, "S", 3);

    // The abandoned claim is found and counted once; another follower
    // writes a backup (of that slot, or the next one when the claim was
    // made late in its slot).
    wait_for(
        "the abandoned claim counted",
        Duration::from_secs(4 * INTERVAL_S),
        || {
            (metric_sum(
                &c,
                &survivors,
                "billdb_backup_failures_total{reason=\"abandoned\"}",
            ) >= 1.0)
                .then_some(())
        },
    );
    let taken = wait_for(
        "a backup after the kill",
        Duration::from_secs(4 * INTERVAL_S),
        || done_records(&dest).into_values().next(),
    );
    // Claim renewal stops at the kill: abandoned after claim_stale_s (3 s),
    // then taken by the next follower in rank (1 s stagger per rank, at
    // most 3 ranks): within the slot when at least 9 s of it were left.
    let left_ms = (slot + 1) * INTERVAL_S * 1000 - claim_seen_ms;
    if left_ms > 9_000 {
        assert_eq!(
            taken.slot, slot,
            "taken over within its slot ({left_ms} ms left)"
        );
    } else {
        assert!(taken.slot > slot, "{taken:?}");
        eprintln!("the claim came {left_ms} ms before its slot's end: the next slot was taken");
    }
    assert_ne!(taken.node, victim);
    assert_ne!(taken.node, c.leader(), "taken from a follower: {taken:?}");
    assert!(taken.finished_unix_ms > killed_at_ms);
    let failed_records: Vec<String> = std::fs::read_dir(dest.join("schedule"))
        .expect("schedule")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("slot-{slot:012}.failed-{victim}-")))
        .collect();
    assert_eq!(failed_records.len(), 1, "{failed_records:?}");
    let v = verify_deep(&dest, &taken.backup_id, &public);
    assert!(v.ok, "{v:?}");
    wait_for(
        "every survivor shows the recovery",
        Duration::from_secs(5),
        || {
            survivors
                .iter()
                .all(|n| {
                    c.metric(*n, "billdb_backup_last_success_timestamp_seconds")
                        >= taken.finished_unix_ms as f64 / 1000.0 - 0.001
                })
                .then_some(())
        },
    );
    // Every backup metric of a node that wrote one passes promtool.
    let text = http_body(&c.metrics_text(taken.node));
    for name in [
        "billdb_backup_last_size_bytes",
        "billdb_backup_last_copied_bytes",
        "billdb_backup_last_duration_seconds",
        "billdb_backup_successes_total",
        "billdb_backup_running",
        "billdb_backup_prune_freed_bytes_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    assert_promtool_clean(&text);
    let sizes: BTreeSet<u64> = done_records(&dest)
        .values()
        .map(|d| d.bytes_total)
        .collect();
    let shown = c.metric(survivors[0], "billdb_backup_last_size_bytes");
    assert!(
        sizes.iter().any(|b| *b as f64 == shown),
        "last size {shown} is a scheduled backup's: {sizes:?}"
    );
    let status = c.status(taken.node);
    assert_eq!(status["backup"]["configured"], true, "{}", status["backup"]);
    assert!(status["backup"]["successes_total"].as_u64() >= Some(1));
    assert!(status["backup"]["last_success"]["backup_id"].is_string());
    let abandoned = metric_sum(
        &c,
        &survivors,
        "billdb_backup_failures_total{reason=\"abandoned\"}",
    );
    assert_eq!(abandoned, 1.0, "the killed node's claim is counted once");
    let breaker_failures: u64 = survivors
        .iter()
        .map(|n| {
            c.status(*n)["backup"]["failures_total"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(breaker_failures, 1);

    // And the next slot is taken too, with the killed node still down.
    let next = wait_for(
        "the slot after",
        Duration::from_secs(3 * INTERVAL_S),
        || {
            done_records(&dest)
                .into_values()
                .find(|d| d.slot > taken.slot)
        },
    );
    assert_ne!(next.node, victim);

    // Exactly one backup per slot: as many backups as done records, each
    // the one its record names, each verifying.
    let done = done_records(&dest);
    let ids: BTreeSet<String> = backup::list_ids(&dest).expect("list").into_iter().collect();
    let named: BTreeSet<String> = done.values().map(|d| d.backup_id.clone()).collect();
    assert_eq!(ids, named, "one backup per done slot");
    for d in done.values() {
        let m = billdb_node::backup::store::read_manifest_unverified(&dest, &d.backup_id)
            .expect("manifest");
        assert_eq!(m.source_node, d.node);
        let v = verify_deep(&dest, &d.backup_id, &public);
        assert!(v.ok, "{v:?}");
    }
    // No hold is left behind on the nodes that wrote them.
    for d in done.values() {
        let holds = c.c.data_dir(d.node).join("backup-holds");
        let left = std::fs::read_dir(&holds).map(|r| r.count()).unwrap_or(0);
        assert_eq!(left, 0, "node {} kept a hold", d.node);
    }
    // The signing key never reaches a log.
    let key_hex = std::fs::read_to_string(&private).expect("key");
    for n in &all {
        let log = std::fs::read_to_string(c.c.log_path(*n)).expect("node log");
        assert!(
            log.contains("scheduled backups on"),
            "node {n} logs the schedule"
        );
        assert!(
            !log.contains(key_hex.trim()),
            "node {n} logged the signing key"
        );
    }
    // A node whose signing key file holds no key refuses to start, before
    // it touches its data, naming the file and not its content.
    let bad = keys.path().join("bad.key");
    std::fs::write(&bad, "SECRET-MATERIAL-not-a-key\n").expect("bad key");
    let cfg = std::fs::read_to_string(c.c.config_path(victim))
        .expect("config")
        .replace(&private.display().to_string(), &bad.display().to_string());
    let cfg_path = keys.path().join("bad-node.toml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let out = std::process::Command::new(node_bin())
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .expect("run node");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "started with a bad key: {said}");
    assert!(
        said.contains("backup.signing_key_file") && said.contains(&bad.display().to_string()),
        "{said}"
    );
    assert!(!said.contains("SECRET-MATERIAL"), "{said}");
    eprintln!(
        "scheduled: {} slots done ({:?}), wall {:?}",
        done.len(),
        done.values().map(|d| (d.slot, d.node)).collect::<Vec<_>>(),
        t0.elapsed()
    );
}

/// Edit a backup's manifest time (as if taken then) and sign it again
/// with the operator's key: prune decides by the manifest's time.
fn redate(dir: &Path, id: &str, private: &Path, unix_ms: u64) {
    let bdir = dir.join("backups").join(id);
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(bdir.join("manifest.json")).expect("manifest"))
            .expect("json");
    v["created_unix_ms"] = json!(unix_ms);
    v["created_at"] = json!(billdb_node::api::validate::to_rfc3339(unix_ms as i64));
    let bytes = serde_json::to_vec_pretty(&v).expect("json");
    std::fs::write(bdir.join("manifest.json"), &bytes).expect("write");
    let sig = backup::sign_hex(private, &bytes).expect("sign");
    std::fs::write(bdir.join("manifest.sig"), format!("{sig}\n")).expect("write");
}

/// Every path under `dir` with its size (to show that nothing changed).
fn tree(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read").flatten() {
            let p = e.path();
            let m = e.metadata().expect("meta");
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, if m.is_dir() { 0 } else { m.len() });
        }
    }
    out
}

/// (b) prune.
#[test]
fn prune_keeps_what_its_rules_name_and_every_kept_backup_restores() {
    let t0 = Instant::now();
    let c = TestCluster::start(6300, 3);
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, public) = backup::keygen(&keys.path().join("k")).expect("keygen");
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("dest");
    let opts = CreateOpts {
        endpoint: c.c.http_url(1).expect("url"),
        tls: c.c.client_tls().expect("tls"),
        token: Some(c.c.token("ops").expect("token")),
        to: dest.clone(),
        private_key: private.clone(),
        from_leader: false,
        progress: false,
        timeout: Duration::from_secs(10),
    };
    // Six backups with writes between them (each adds files), dated on
    // 2026-01-05, 02-10, 02-20, 03-01 10:00, 03-01 12:00, 03-02 (UTC).
    const DAY: u64 = 86_400_000;
    let jan1 = 20_454 * DAY;
    let dates = [
        jan1 + 4 * DAY,
        jan1 + 40 * DAY,
        jan1 + 50 * DAY,
        jan1 + 59 * DAY + 10 * 3_600_000,
        jan1 + 59 * DAY + 12 * 3_600_000,
        jan1 + 60 * DAY,
    ];
    let mut ids = Vec::new();
    for (k, when) in dates.iter().enumerate() {
        import(&c, &format!("P{k}-"), 2);
        let r = backup::create(&opts).expect("backup");
        redate(&dest, &r.backup_id, &private, *when);
        ids.push(r.backup_id);
    }
    let manifests: BTreeMap<String, backup::Manifest> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                billdb_node::backup::store::read_manifest_unverified(&dest, id).expect("manifest"),
            )
        })
        .collect();
    // keep-daily 2: 03-02 and the newer of 03-01; keep-monthly 2: March's
    // newest (03-02) and February's (02-20).
    let keep: BTreeSet<String> = [&ids[2], &ids[4], &ids[5]].into_iter().cloned().collect();
    let gone: BTreeSet<String> = [&ids[0], &ids[1], &ids[3]].into_iter().cloned().collect();
    let kept_files: BTreeSet<String> = keep
        .iter()
        .flat_map(|id| manifests[id].files.iter().map(|f| f.sha256.clone()))
        .collect();
    let all_files: BTreeMap<String, u64> = manifests
        .values()
        .flat_map(|m| m.files.iter().map(|f| (f.sha256.clone(), f.size)))
        .collect();
    let only_gone: BTreeSet<String> = all_files
        .keys()
        .filter(|f| !kept_files.contains(*f))
        .cloned()
        .collect();
    assert!(
        !only_gone.is_empty(),
        "the deleted backups had files of their own"
    );
    let shared_with_gone: usize = gone
        .iter()
        .flat_map(|id| manifests[id].files.iter())
        .filter(|f| kept_files.contains(&f.sha256))
        .count();
    assert!(
        shared_with_gone > 0,
        "deleted backups share files with kept ones (incremental): those stay"
    );

    // Leftovers an interrupted backup leaves: a partial file and a
    // manifest directory never renamed.
    let part = dest
        .join("files")
        .join(format!(".{}.dead.part", "ab".repeat(32)));
    std::fs::write(&part, vec![7u8; 4096]).expect("part");
    let tmp = dest
        .join("backups")
        .join(".20260101T000000Z-000000000001.dead.tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::write(tmp.join("manifest.json"), b"{}").expect("tmp manifest");

    let rules = Retention {
        keep_last: 0,
        keep_daily: 2,
        keep_monthly: 2,
    };
    // A backup being written (a live writer's lock): refused, nothing changed.
    let before = tree(&dest);
    {
        let _writer = billdb_node::backup::store::lock_for_writing(&dest).expect("lock");
        let e = backup::prune(&dest, &rules, false).expect_err("refused while writing");
        assert_eq!(backup::code_of(&e), Some("BUSY"), "{e:#}");
    }
    assert_eq!(tree(&dest), before, "a refused prune changes nothing");
    // A keep-nothing rule: refused.
    let e = backup::prune(
        &dest,
        &Retention {
            keep_last: 0,
            keep_daily: 0,
            keep_monthly: 0,
        },
        false,
    )
    .expect_err("keeps nothing");
    assert_eq!(backup::code_of(&e), Some("INVALID_ARGUMENT"));
    assert_eq!(tree(&dest), before);

    // Dry run: the same report, nothing changed.
    let dry = backup::prune(&dest, &rules, true).expect("dry run");
    assert_eq!(tree(&dest), before, "a dry run changes nothing");
    let real = backup::prune(&dest, &rules, false).expect("prune");
    eprint!("{}", backup::render_prune(&real));
    for r in [&dry, &real] {
        assert_eq!(
            r.kept.iter().cloned().collect::<BTreeSet<_>>(),
            keep,
            "kept: {r:?}"
        );
        assert_eq!(
            r.deleted_backups.iter().cloned().collect::<BTreeSet<_>>(),
            gone
        );
        assert_eq!(
            r.deleted_files.iter().cloned().collect::<BTreeSet<_>>(),
            only_gone
        );
        assert_eq!(r.leftovers.len(), 2, "{:?}", r.leftovers);
        let file_bytes: u64 = only_gone.iter().map(|f| all_files[f]).sum();
        assert!(
            r.bytes_freed >= file_bytes + 4096,
            "{} < {file_bytes}",
            r.bytes_freed
        );
    }
    assert_eq!(real.bytes_freed, dry.bytes_freed);
    // What is left: the kept backups, their files and nothing else.
    assert_eq!(
        backup::list_ids(&dest)
            .expect("list")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        keep
    );
    let stored: BTreeSet<String> = std::fs::read_dir(dest.join("files"))
        .expect("files")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stored, kept_files);
    assert!(!part.exists() && !tmp.exists());
    // Again: nothing more to do.
    let again = backup::prune(&dest, &rules, false).expect("prune again");
    assert!(again.deleted_backups.is_empty() && again.deleted_files.is_empty());
    assert_eq!(again.bytes_freed, 0);

    // Every kept backup verifies and restores.
    let new_dirs = tempfile::tempdir().expect("tempdir");
    let members: BTreeMap<NodeId, NodeInfo> = (1..=3u64)
        .map(|n| {
            (
                n,
                NodeInfo {
                    raft_addr: format!("127.0.0.1:{}", 6600 + 200 + n),
                    grpc_addr: format!("127.0.0.1:{}", 6600 + 100 + n),
                    http_addr: format!("127.0.0.1:{}", 6600 + n),
                },
            )
        })
        .collect();
    for id in &keep {
        let v = verify_deep(&dest, id, &public);
        assert!(v.ok, "{id}: {v:?}");
        let data_dirs: BTreeMap<NodeId, PathBuf> = (1..=3u64)
            .map(|n| (n, new_dirs.path().join(id).join(format!("n{n}"))))
            .collect();
        let r = backup::restore(&RestoreOpts {
            from: dest.clone(),
            backup_id: Some(id.clone()),
            public_key: public.clone(),
            cluster_id: "pruned-restore".into(),
            members: members.clone(),
            data_dirs,
            force: false,
            progress: false,
            until: None,
            diff_after: false,
        })
        .expect("restore");
        assert!(r.ok, "{id}: {r:?}");
        assert_eq!(r.applied_index, manifests[id].applied_log_id.index);
        assert_eq!(r.nodes.len(), 3);
    }
    eprintln!("prune test wall {:?}", t0.elapsed());
}

/// The cluster archives its own log (`backup.archive_interval_s`): once a
/// backup exists, a follower writes segments of the committed entries into
/// the shared destination while purchases go on; killed, it is replaced by
/// another follower within a few seconds (its archive lock goes stale after
/// `claim_stale_s`) with no gap, because every node holds its log from the
/// archive's end. The archive then ends at the leader's applied index, and
/// replaying it on the backup gives the cluster's digest. Base port 38000.
#[test]
fn the_cluster_archives_its_log_and_another_node_takes_over_when_the_writer_dies() {
    let t0 = Instant::now();
    let keys = tempfile::tempdir().expect("tempdir");
    let (private, public) = backup::keygen(&keys.path().join("arch")).expect("keygen");
    let shared = tempfile::tempdir().expect("tempdir");
    let dest = shared.path().join("backups");
    billdb_node::backup::store::open_destination(&dest).expect("destination");
    // Scheduled backups rarely (a day), the archive every second.
    let extra = format!(
        "[backup]\ndir = {:?}\ninterval_s = 86400\nsigning_key_file = {:?}\nclaim_stale_s = 3\narchive_interval_s = 1\n[backup.retention]\nkeep_last = 1000\n",
        dest.display().to_string(),
        private.display().to_string()
    );
    let timings = RaftTimings {
        snapshot_logs_since_last: Some(200),
        logs_to_keep_after_snapshot: Some(100),
        ..RaftTimings::default()
    };
    let c = TestCluster::start_configured(38000, 5, timings, &[], &extra, &|_| {});
    let text = c.metrics_text(1);
    assert!(
        text.contains("# HELP billdb_archive_interval_seconds "),
        "archive metrics have HELP"
    );
    open_load_accounts(&c);
    // The day's scheduled backup is taken at once (its slot is open); the
    // archive starts at its applied index.
    let first_backup = wait_for("the scheduled backup", Duration::from_secs(30), || {
        backup::list_ids(&dest).ok()?.first().cloned()
    });
    let r1_applied = billdb_node::backup::store::read_manifest_unverified(&dest, &first_backup)
        .expect("manifest")
        .applied_log_id
        .index;
    let c = std::sync::Arc::new(c);
    let live = std::sync::Arc::new(std::sync::Mutex::new((1..=5).collect::<Vec<NodeId>>()));
    // As fast as one client goes: far more entries during the takeover
    // than the nodes keep behind a snapshot, so only their holds at the
    // archive's end keep the archive gapless.
    let load = Load::start_paced(&c, live.clone(), "arch", Duration::ZERO);
    let writer = wait_for("a first archive segment", Duration::from_secs(15), || {
        billdb_node::backup::archive::read_records(&dest)
            .ok()?
            .last()
            .map(|r| r.record.source_node)
    });
    let leader = c.leader();
    assert_ne!(writer, leader, "a follower writes the archive");
    std::thread::sleep(Duration::from_secs(2));
    live.lock().expect("live").retain(|n| *n != writer);
    c.c.kill(writer).expect("kill the archive's writer");
    let killed_at = billdb_node::backup::store::unix_ms();
    let taken_over = wait_for(
        "another node writing the archive",
        Duration::from_secs(30),
        || {
            billdb_node::backup::archive::read_records(&dest)
                .ok()?
                .last()
                .filter(|r| r.record.source_node != writer)
                .map(|r| (r.record.source_node, r.record.written_unix_ms))
        },
    );
    eprintln!(
        "archive writer {writer} killed; node {} wrote {} ms later",
        taken_over.0,
        taken_over.1.saturating_sub(killed_at)
    );
    std::thread::sleep(Duration::from_secs(2));
    let (acked, failures, _) = load.finish();
    assert!(
        acked > 0 && failures.is_empty(),
        "{acked} acked, {failures:?}"
    );
    let leader = c.leader();
    let (applied, digest) = c.digest(leader);
    let end = wait_for(
        "the archive at the applied index",
        Duration::from_secs(15),
        || {
            let last = billdb_node::backup::archive::read_records(&dest)
                .ok()?
                .last()?
                .record
                .last_index;
            (Some(last) == applied).then_some(last)
        },
    );
    let check = billdb_client::archive::verify(&dest, &public).expect("verify");
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.spans, vec![(r1_applied + 1, end)], "no gap");
    assert!(c.metric(taken_over.0, "billdb_archive_last_index") >= 1.0);
    let new_dirs = tempfile::tempdir().expect("tempdir");
    let members: BTreeMap<NodeId, NodeInfo> = (1..=3u64)
        .map(|n| {
            (
                n,
                NodeInfo {
                    raft_addr: format!("127.0.0.1:{}", 38400 + 200 + n),
                    grpc_addr: format!("127.0.0.1:{}", 38400 + 100 + n),
                    http_addr: format!("127.0.0.1:{}", 38400 + n),
                },
            )
        })
        .collect();
    let r = backup::restore(&RestoreOpts {
        from: dest.clone(),
        backup_id: Some(first_backup.clone()),
        public_key: public.clone(),
        cluster_id: "archived".into(),
        members,
        data_dirs: (1..=3u64)
            .map(|n| (n, new_dirs.path().join(format!("n{n}"))))
            .collect(),
        force: false,
        progress: false,
        until: Some(billdb_node::backup::archive::Until::Index(end)),
        diff_after: false,
    })
    .expect("restore to the archive's end");
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.point_in_time.expect("pit").replayed_digest,
        digest,
        "the replay equals the cluster"
    );
    eprintln!("archive test wall {:?}", t0.elapsed());
}
