//! The Debian package (deploy/package): it builds from the release
//! binaries, holds both binaries, the hardened systemd unit, the commented
//! example config (which the node's own config loader accepts), installs
//! with `dpkg -i` (a `billdb` system user, the data directory, nothing
//! enabled or running), `systemd-analyze verify` accepts the unit, and it
//! purges cleanly. Needs root (installs on this machine, then purges).

mod deploy_common;

use std::path::Path;
use std::process::Command;

use deploy_common::*;

const UNIT: &str = "/lib/systemd/system/billdb-node.service";

fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(s: &'a [(String, String)], key: &str) -> &'a str {
    s.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// PIDs of processes running `exe`.
fn running(exe: &str) -> Vec<String> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(target) = std::fs::read_link(e.path().join("exe"))
            && target == Path::new(exe)
        {
            pids.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

#[test]
fn debian_package_installs_verifies_and_purges() {
    assert_root("installing the package");
    let dpkg = tool("dpkg", "dpkg");
    let verify = tool("systemd-analyze", "systemd");
    let st = output(Command::new(&dpkg).args(["-s", "billdb"]));
    assert!(
        !st.status.success(),
        "a billdb package is already installed here; this test installs and purges its own: \
         remove it first (dpkg --purge billdb)"
    );
    let user_before = output(Command::new("getent").args(["passwd", "billdb"]))
        .status
        .success();

    let out = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(out.path());

    // What it holds and what it needs.
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in ["Package: billdb", "Depends: adduser, libc6", "libstdc++6"] {
        assert!(info.contains(want), "control lacks {want:?}:\n{info}");
    }
    let list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/bin/billdb-node",
        "./usr/bin/billdb\n",
        "./lib/systemd/system/billdb-node.service",
        "./etc/billdb/node.toml.example",
        "./usr/share/doc/billdb/OPERATIONS.md",
    ] {
        assert!(list.contains(want), "package lacks {want:?}:\n{list}");
    }
    assert!(
        !list.contains("./etc/billdb/node.toml\n"),
        "the package must not ship a live config (installing would configure a node)"
    );

    // The example config goes through the node's own loader as shipped.
    let x = tempfile::tempdir().expect("tempdir");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(x.path()));
    let example = x.path().join("etc/billdb/node.toml.example");
    let args = <billdb_node::config::Args as clap::Parser>::try_parse_from([
        "billdb-node".as_ref(),
        "--config".as_ref(),
        example.as_os_str(),
    ])
    .expect("args");
    let cfg = billdb_node::config::Config::load(&args).expect("the example config loads");
    assert_eq!(cfg.node_id, 1);
    assert_eq!(cfg.data_dir, Path::new("/var/lib/billdb/data"));
    let tls = cfg.tls.as_ref().expect("the example config has [tls]");
    assert_eq!(tls.ca_file, Path::new("/etc/billdb/ca.pem"));
    assert_eq!(
        cfg.auth.tokens_file.as_deref(),
        Some(Path::new("/etc/billdb/tokens.toml"))
    );
    assert!(
        !cfg.insecure.raft && !cfg.insecure.grpc && !cfg.insecure.http,
        "the example must be secure by default"
    );

    // The unit: hardened (a dedicated user, read-only system, limits), and verified.
    let unit_text =
        std::fs::read_to_string(x.path().join("lib/systemd/system/billdb-node.service"))
            .expect("unit");
    let s = unit_settings(&unit_text);
    assert_eq!(setting(&s, "User"), "billdb");
    assert_eq!(setting(&s, "ProtectSystem"), "strict");
    assert_eq!(setting(&s, "NoNewPrivileges"), "yes");
    assert!(
        setting(&s, "ReadWritePaths")
            .split_whitespace()
            .any(|p| cfg.data_dir.starts_with(p)),
        "ReadWritePaths must cover the example's data_dir {:?}",
        cfg.data_dir
    );
    assert!(
        setting(&s, "LimitNOFILE")
            .parse::<u64>()
            .expect("LimitNOFILE")
            >= 65536
    );
    assert_eq!(setting(&s, "Restart"), "on-failure");
    assert_eq!(setting(&s, "KillSignal"), "SIGTERM");
    let stop_s: u64 = setting(&s, "TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec");
    assert!(
        stop_s >= 30,
        "TimeoutStopSec {stop_s} leaves a leader too little time"
    );
    assert!(setting(&s, "ExecStop").contains("billdb cluster step-down"));
    assert_eq!(
        setting(&s, "ConditionPathExists"),
        "/etc/billdb/node.toml",
        "the unit must not start before the node is configured"
    );
    assert!(
        setting(&s, "ExecStart").starts_with("/usr/bin/billdb-node --config /etc/billdb/node.toml")
    );

    // Install.
    let before = running("/usr/bin/billdb-node");
    run(Command::new(&dpkg).arg("-i").arg(&deb));
    let purge = scopeguard(|| {
        let _ = output(Command::new("dpkg").args(["--purge", "billdb"]));
    });
    let pw = run(Command::new("getent").args(["passwd", "billdb"]));
    assert!(
        pw.trim_end().ends_with(":/usr/sbin/nologin"),
        "billdb user without a login shell expected: {pw}"
    );
    let meta = std::fs::metadata("/var/lib/billdb").expect("/var/lib/billdb");
    let uid: u32 = pw.split(':').nth(2).expect("uid").parse().expect("uid");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        uid,
        "/var/lib/billdb owned by billdb"
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o750
    );
    assert!(Path::new(UNIT).is_file());
    assert!(!Path::new("/etc/billdb/node.toml").exists());
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/billdb-node.service").exists(),
        "installing must not enable the unit"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        running("/usr/bin/billdb-node"),
        before,
        "installing must start nothing"
    );
    let v = run(Command::new("/usr/bin/billdb-node").arg("--version"));
    assert!(v.starts_with("billdb-node "), "{v}");
    let v = run(Command::new("/usr/bin/billdb").arg("--version"));
    assert!(v.starts_with("billdb "), "{v}");
    let verified = output(Command::new(&verify).args(["verify", UNIT]));
    assert!(
        verified.status.success(),
        "systemd-analyze verify {UNIT}: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    let said = String::from_utf8_lossy(&verified.stderr).to_string();
    assert!(
        !said.contains("billdb-node.service:"),
        "systemd-analyze verify warned about the unit: {said}"
    );

    // Purge: the files go, the data directory (the cluster's data) stays.
    drop(purge);
    assert!(
        !output(Command::new(&dpkg).args(["-s", "billdb"]))
            .status
            .success()
    );
    assert!(!Path::new("/usr/bin/billdb-node").exists());
    assert!(!Path::new(UNIT).exists());
    assert!(
        !Path::new("/etc/billdb").exists(),
        "an empty /etc/billdb is removed on purge"
    );
    if !user_before {
        let _ = output(Command::new("userdel").arg("billdb"));
        let _ = std::fs::remove_dir("/var/lib/billdb");
    }
}

/// Runs `f` when dropped (also when the test panics).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
