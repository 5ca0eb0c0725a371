//! The Debian package under a real systemd: three containers of a Debian 12
//! server image that boots systemd as PID 1 (deploy/package/
//! systemd-host-image.sh: debootstrap from Debian's mirror, `docker
//! import`, nothing pulled) on a network the test makes (172.30.78.0/24)
//! stand in for three servers. On each, exactly the OPERATIONS.md steps:
//! `dpkg -i` (which starts nothing), the example config edited, the node's
//! own files from `billdb cert cluster` installed, `systemctl enable
//! --now`. Then, with a write load from the host over TLS:
//! - the hardening holds in the running process (user billdb, no
//!   capabilities, no new privileges, `/` read-only and only
//!   /var/lib/billdb writable);
//! - `kill -9` of a node: systemd restarts it (Restart=on-failure) and it
//!   serves again;
//! - `systemctl stop` of the leader: the unit's ExecStop hands leadership
//!   away first (confirmed in the journal), the stop ends cleanly well
//!   inside TimeoutStopSec, writes go on with the other two;
//! - `systemctl start`: it rejoins; every acknowledged write is on all three;
//! - `billdb drill run` with the ssh executor, the inventory's remote shell
//!   being `docker exec` (these servers are containers; what is tested is
//!   what the executor runs on a server: systemctl and iptables): a leader
//!   killed, the leader cut off by iptables, a rolling restart, each PASS
//!   with nothing lost or duplicated.
//!
//! Needs root, a running Docker daemon that grants CAP_SYS_ADMIN, and
//! debootstrap with Debian's mirror reachable (deploy/setup.sh installs
//! docker.io and debootstrap and starts the daemon).

mod deploy_common;

use std::process::Command;
use std::time::{Duration, Instant};

use deploy_common::*;

const NETWORK: &str = "billdb-systemd-test";
const SUBNET: &str = "172.30.78.0/24";
const CLUSTER_ID: &str = "sdtest";
const NODES: usize = 3;

fn ip(n: usize) -> String {
    format!("172.30.78.{}", 10 + n)
}

fn name(n: usize) -> String {
    format!("billdb-sd-{n}")
}

/// Runs `script` with bash in container `n`; its stdout. Fails the test
/// when the script fails.
fn sh(n: usize, script: &str) -> String {
    run(Command::new("docker").args(["exec", &name(n), "bash", "-c", script]))
}

/// The unit's property `p` on node `n` (`systemctl show -p P --value`).
fn unit_prop(n: usize, p: &str) -> String {
    sh(n, &format!("systemctl show -p {p} --value billdb-node"))
        .trim()
        .to_string()
}

/// The containers and the network, removed on drop.
struct Hosts;

impl Hosts {
    fn remove() {
        for n in 1..=NODES {
            let _ = output(Command::new("docker").args(["rm", "-f", &name(n)]));
        }
        let _ = output(Command::new("docker").args(["network", "rm", NETWORK]));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        Hosts::remove();
    }
}

#[test]
fn the_package_runs_under_systemd_hardened_restarts_and_hands_over_on_stop() {
    assert_root("the systemd test runs containers");
    tool("docker", "docker.io");
    let started = Instant::now();
    let work = tempfile::tempdir().expect("tempdir");
    let deb = build_deb(&work.path().join("deb"));
    let image = run(&mut Command::new(
        deploy_dir().join("package/systemd-host-image.sh"),
    ));
    let image = image.trim().to_string();
    eprintln!("{image} ready after {:?}", started.elapsed());

    Hosts::remove();
    let _hosts = Hosts;
    run(Command::new("docker").args(["network", "create", "--subnet", SUBNET, NETWORK]));
    for n in 1..=NODES {
        run(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name(n),
            "--hostname",
            &name(n),
            "--network",
            NETWORK,
            "--ip",
            &ip(n),
            "--cap-add",
            "SYS_ADMIN",
            // iptables, for the partition drill.
            "--cap-add",
            "NET_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--stop-signal",
            "SIGRTMIN+3",
            &image,
        ]));
    }
    for n in 1..=NODES {
        wait_for(
            &format!("systemd up in {}", name(n)),
            Duration::from_secs(60),
            || {
                let o = output(Command::new("docker").args([
                    "exec",
                    &name(n),
                    "systemctl",
                    "is-system-running",
                ]));
                let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
                (s == "running" || s == "degraded").then_some(())
            },
        );
        assert_eq!(
            sh(n, "cat /proc/1/comm").trim(),
            "systemd",
            "systemd is PID 1"
        );
    }

    // The cluster's files, made once; each host gets its own directory only.
    let secrets = work.path().join("secrets");
    let mut cert = Command::new(cli_bin());
    cert.args(["cert", "cluster", "--cluster-id", CLUSTER_ID, "--out"])
        .arg(&secrets);
    for n in 1..=NODES {
        cert.args(["--node", &format!("{n}={},{}", ip(n), name(n))]);
    }
    run(&mut cert);
    let ops_token = std::fs::read_to_string(secrets.join("client/ops.token"))
        .expect("ops token")
        .trim()
        .to_string();

    // Install on each host exactly as docs/OPERATIONS.md says.
    for n in 1..=NODES {
        run(Command::new("docker")
            .args(["cp"])
            .arg(&deb)
            .arg(format!("{}:/root/billdb.deb", name(n))));
        run(Command::new("docker")
            .args(["cp"])
            .arg(secrets.join(format!("node/{n}")))
            .arg(format!("{}:/root/node", name(n))));
        sh(n, "dpkg -i /root/billdb.deb");
        assert_eq!(
            output(Command::new("docker").args([
                "exec",
                &name(n),
                "systemctl",
                "is-active",
                "billdb-node"
            ]))
            .stdout,
            b"inactive\n",
            "installing starts nothing"
        );
        sh(
            n,
            &format!(
                "set -e
                 sed -e 's/^node_id = 1$/node_id = {n}/' -e 's/10\\.0\\.0\\.1/{ip}/g' \
                     -e 's/billing-prod/{CLUSTER_ID}/' -e 's/node1\\./node{n}./g' \
                     /etc/billdb/node.toml.example > /etc/billdb/node.toml
                 grep -q '^node_id = {n}$' /etc/billdb/node.toml
                 install -o billdb -g billdb -m 0600 /root/node/node{n}.key /etc/billdb/
                 install -m 0644 /root/node/node{n}.pem /root/node/ca.pem /root/node/tokens.toml /etc/billdb/
                 install -g billdb -m 0640 /etc/billdb/billdb-node.env.example /etc/billdb/billdb-node.env
                 sed -i -e 's|^#BILLDB_ENDPOINT=.*|BILLDB_ENDPOINT=https://{ip}:7001|' \
                     -e 's|^#BILLDB_CA=|BILLDB_CA=|' -e 's|^#BILLDB_TOKEN=.*|BILLDB_TOKEN={ops_token}|' \
                     /etc/billdb/billdb-node.env
                 rm -rf /root/node /root/billdb.deb
                 systemctl enable --now billdb-node",
                ip = ip(n)
            ),
        );
    }
    let c = Cli {
        bin: cli_bin(),
        ca: secrets.join("client/ca.pem"),
        grpc: (1..=NODES).map(|n| format!("{}:7101", ip(n))).collect(),
        http: (1..=NODES).map(|n| format!("{}:7001", ip(n))).collect(),
        tokens: ["ops", "auditor", "counter", "bank"]
            .iter()
            .map(|r| {
                let t = std::fs::read_to_string(secrets.join(format!("client/{r}.token")))
                    .unwrap_or_else(|e| panic!("{r} token: {e}"));
                (r.to_string(), t.trim().to_string())
            })
            .collect(),
    };
    let mut init = c.cmd("ops", &[1]);
    init.args([
        "cluster",
        "init",
        "--endpoint",
        &format!("https://{}:7001", ip(1)),
        "--if-needed",
        "--wait-secs",
        "60",
    ]);
    for n in 1..=NODES {
        init.args([
            "--node",
            &format!(
                "id={n},raft={ip}:7201,grpc={ip}:7101,http={ip}:7001",
                ip = ip(n)
            ),
        ]);
    }
    run(&mut init);
    let all: Vec<usize> = (1..=NODES).collect();
    c.wait_leader(&all, Duration::from_secs(60));
    eprintln!("three nodes under systemd after {:?}", started.elapsed());

    // The hardening, in the running processes.
    for n in 1..=NODES {
        let pid = unit_prop(n, "MainPID");
        let status = sh(n, &format!("cat /proc/{pid}/status"));
        let field = |k: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .unwrap_or_else(|| panic!("no {k} in /proc/{pid}/status"))
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let billdb_uid = sh(n, "id -u billdb").trim().to_string();
        assert_eq!(field("Uid"), billdb_uid, "node {n} runs as user billdb");
        assert_ne!(billdb_uid, "0");
        assert_eq!(field("NoNewPrivs"), "1", "node {n}: NoNewPrivileges");
        assert_eq!(
            field("CapEff"),
            "0000000000000000",
            "node {n}: no capabilities"
        );
        assert_eq!(
            field("CapBnd"),
            "0000000000000000",
            "node {n}: empty bounding set"
        );
        let mounts = sh(n, &format!("cat /proc/{pid}/mountinfo"));
        let opts = |at: &str| -> String {
            mounts
                .lines()
                .rev()
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() > 5 && f[4] == at).then(|| f[5].to_string())
                })
                .unwrap_or_else(|| panic!("node {n}: no mount at {at}:\n{mounts}"))
        };
        assert!(
            opts("/").split(',').any(|o| o == "ro"),
            "node {n}: / is read-only for the service (ProtectSystem=strict)"
        );
        assert!(
            opts("/var/lib/billdb").split(',').any(|o| o == "rw"),
            "node {n}: /var/lib/billdb is writable"
        );
        assert_eq!(unit_prop(n, "LimitNOFILE"), "65536");
    }

    c.setup_accounts();
    let load = Workload::start(&c, "systemd");
    load.wait_more_acked(10, Duration::from_secs(60), "with three nodes");

    // kill -9 of a follower: systemd starts it again.
    let leader = c.wait_leader(&all, Duration::from_secs(30));
    let victim = all
        .iter()
        .copied()
        .find(|n| *n != leader)
        .expect("a follower");
    let pid = unit_prop(victim, "MainPID");
    sh(victim, &format!("kill -9 {pid}"));
    let new_pid = wait_for(
        &format!("systemd restarts node {victim}"),
        Duration::from_secs(30),
        || {
            let p = unit_prop(victim, "MainPID");
            (p != pid && p != "0").then_some(p)
        },
    );
    assert_eq!(unit_prop(victim, "NRestarts"), "1");
    wait_for(
        &format!("node {victim} serves again"),
        Duration::from_secs(60),
        || c.leader_seen_by(victim),
    );
    eprintln!("node {victim}: killed (pid {pid}), restarted by systemd as pid {new_pid}");
    load.wait_more_acked(10, Duration::from_secs(60), "after a restart");

    // systemctl stop of the leader: ExecStop hands leadership away first.
    let leader = c.wait_leader(&all, Duration::from_secs(30));
    let t = Instant::now();
    sh(leader, "systemctl stop billdb-node");
    let stop_took = t.elapsed();
    assert_eq!(unit_prop(leader, "ActiveState"), "inactive");
    assert_eq!(unit_prop(leader, "Result"), "success", "a clean stop");
    assert!(
        stop_took < Duration::from_secs(45),
        "the stop took {stop_took:?}, beyond TimeoutStopSec"
    );
    let journal = sh(leader, "journalctl -u billdb-node --no-pager -o cat");
    assert!(
        journal.contains(&format!("ok: node {leader} handed leadership to node")),
        "ExecStop's step-down is in the journal:\n{journal}"
    );
    let rest: Vec<usize> = all.iter().copied().filter(|n| *n != leader).collect();
    let second = c.wait_leader(&rest, Duration::from_secs(30));
    let gap = load.wait_more_acked(10, Duration::from_secs(60), "after the leader's stop");
    eprintln!("node {leader} stopped in {stop_took:?}; node {second} leads; 10 writes in {gap:?}");

    sh(leader, "systemctl start billdb-node");
    wait_for(
        &format!("node {leader} rejoins"),
        Duration::from_secs(60),
        || c.leader_seen_by(leader),
    );
    load.wait_more_acked(10, Duration::from_secs(60), "with all three back");
    let (acked, failed) = load.stop();
    verify_nothing_lost(&c, &all, &acked, &failed);
    eprintln!(
        "{} writes acknowledged, {} retried; all on three nodes; {:?} in all",
        acked.len(),
        failed.len(),
        started.elapsed()
    );

    // Drills by the ssh executor: systemctl and iptables on the servers.
    let inventory = work.path().join("inventory.toml");
    let mut inv = String::from(
        "remote = [\"docker\", \"exec\", \"{host}\", \"sh\", \"-c\", \"{command}\"]\n",
    );
    for n in 1..=NODES {
        inv.push_str(&format!(
            "[[host]]\nid = {n}\nhost = \"{}\"\naddress = \"{}\"\n",
            name(n),
            ip(n)
        ));
    }
    std::fs::write(&inventory, inv).expect("inventory");
    let key = work.path().join("operator");
    run(Command::new(cli_bin())
        .args(["backup", "keygen", "--out"])
        .arg(&key));
    for scenario in ["leader-kill", "leader-isolated", "rolling-restart"] {
        let t = Instant::now();
        let out = output(
            Command::new(cli_bin())
                .args(["drill", "run", scenario, "--executor", "ssh"])
                .arg("--inventory")
                .arg(&inventory)
                .args(["--endpoint", &c.http[0]])
                .arg("--ca")
                .arg(&c.ca)
                .arg("--private-key")
                .arg(key.with_extension("key"))
                .arg("--out")
                .arg(work.path().join("reports"))
                .args([
                    "--operator",
                    "Systemd Drill",
                    "--warmup-s",
                    "1",
                    "--down-s",
                    "1",
                ])
                .args(["--after-s", "1", "--json"])
                .env("BILLDB_TOKEN", c.token("ops"))
                .env_remove("BILLDB_CA")
                .env_remove("BILLDB_ENDPOINT"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("drill {scenario}: not JSON ({e}): {stdout}\n{stderr}"));
        assert!(out.status.success(), "{scenario}: {v:#}\n{stderr}");
        assert_eq!(v["result"], "PASS", "{scenario}: {v:#}\n{stderr}");
        assert_eq!(v["executor"], "ssh");
        assert_eq!(v["verification"]["lost"], 0, "{scenario}: {v:#}");
        assert_eq!(v["verification"]["duplicated"], 0, "{scenario}: {v:#}");
        assert_eq!(
            v["verification"]["digests_equal"], true,
            "{scenario}: {v:#}"
        );
        eprintln!(
            "ssh drill {scenario}: write gap {} ms, all ready after {} ms, {} acknowledged ({:?})",
            v["measured"]["write_gap_ms"],
            v["measured"]["health_ms"],
            v["workload"]["acknowledged"],
            t.elapsed()
        );
    }
    // The partition's chain is gone from every server; every unit runs.
    for n in 1..=NODES {
        let rules = sh(n, "iptables -S");
        assert!(!rules.contains("BDBDRILL"), "node {n}: {rules}");
        assert_eq!(unit_prop(n, "ActiveState"), "active", "node {n}");
    }
}
