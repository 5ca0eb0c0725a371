//! Five servers: five network namespaces with their own addresses
//! (10.77.0.1–5/24) on one bridge, each running `billdb-node` from the
//! built Debian package's files with the package's example config (only
//! the node id, addresses and file locations changed), certificates and
//! tokens made with the package's `billdb` CLI, the cluster initialised and
//! operated with that CLI over the network. Under a write load the
//! leader's host is cut off (its link down), then the new leader's host is
//! killed: writes go on with three; after both come back, every
//! acknowledged write is there on all five. Needs root (namespaces, a
//! bridge, an iptables rule that lets the bridge forward); traffic goes
//! only to the addresses this test creates.

mod deploy_common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_common::*;

const BRIDGE: &str = "bdb5br0";
const HOST_ADDR: &str = "10.77.0.254/24";
const CLUSTER_ID: &str = "billing-prod";

fn ns(i: usize) -> String {
    format!("bdb5h{i}")
}
fn veth(i: usize) -> String {
    format!("bdb5v{i}")
}
fn addr(i: usize) -> String {
    format!("10.77.0.{i}")
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// The bridge, the namespaces and the forward rule; removed on drop.
struct Net;

impl Net {
    fn create() -> Net {
        Net::remove();
        ip(&["link", "add", BRIDGE, "type", "bridge"]);
        ip(&["addr", "add", HOST_ADDR, "dev", BRIDGE]);
        ip(&["link", "set", BRIDGE, "up"]);
        // Docker (and others) set the FORWARD policy to DROP, and bridged
        // frames pass iptables when br_netfilter is loaded.
        run(Command::new("iptables")
            .args(["-I", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]));
        for i in 1..=5 {
            ip(&["netns", "add", &ns(i)]);
            ip(&[
                "link",
                "add",
                &veth(i),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns(i),
            ]);
            ip(&["link", "set", &veth(i), "master", BRIDGE]);
            ip(&["link", "set", &veth(i), "up"]);
            ip(&[
                "-n",
                &ns(i),
                "addr",
                "add",
                &format!("{}/24", addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns(i), "link", "set", "eth0", "up"]);
            ip(&["-n", &ns(i), "link", "set", "lo", "up"]);
        }
        Net
    }

    fn remove() {
        for i in 1..=5 {
            let _ = output(Command::new("ip").args(["netns", "del", &ns(i)]));
            let _ = output(Command::new("ip").args(["link", "del", &veth(i)]));
        }
        let _ = output(Command::new("ip").args(["link", "del", BRIDGE]));
        while output(
            Command::new("iptables")
                .args(["-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]),
        )
        .status
        .success()
        {}
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Net::remove();
    }
}

/// The five node processes (killed on drop).
struct Hosts {
    bin: PathBuf,
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Hosts {
    fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("host{i}/node.log")))
            .expect("node log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(i)])
            .arg(&self.bin)
            .arg("--config")
            .arg(self.dir.join(format!("host{i}/node.toml")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start billdb-node in its namespace");
        self.children[i - 1] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("host{i}/node.log"))).unwrap_or_default()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 1..=5 {
            self.kill(i);
        }
    }
}

/// `text` with `from` replaced by `to`; the example config must still say
/// `from`, or this test no longer runs the documented config.
fn must_replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the packaged example config no longer contains {from:?}"
    );
    text.replace(from, to)
}

#[test]
fn five_hosts_on_a_bridge_survive_a_cut_link_and_a_killed_host() {
    assert_root("network namespaces and a bridge");
    tool("ip", "iproute2");
    tool("iptables", "iptables");
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    // The package's files.
    let deb = build_deb(&dir.join("deb"));
    let root = dir.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let node_bin = root.join("usr/bin/billdb-node");
    let cli = root.join("usr/bin/billdb");
    let example = std::fs::read_to_string(root.join("etc/billdb/node.toml.example"))
        .expect("the packaged example config");

    // Certificates and tokens, made as OPERATIONS.md says.
    let ca_dir = dir.join("ca");
    run(Command::new(&cli)
        .args(["cert", "ca", "--cluster-id", CLUSTER_ID, "--out"])
        .arg(&ca_dir));
    let tokens = dir.join("tokens.toml");
    let mut cli_tokens = Vec::new();
    for (role, extra) in [
        ("ops", vec!["--operator-id", "ops-1"]),
        ("auditor", vec!["--operator-id", "audit-1"]),
        (
            "counter",
            vec!["--operator-id", "C-0101", "--branch", "B01"],
        ),
        ("bank", vec!["--bank-code", "ICBC"]),
    ] {
        let out = dir.join(format!("{role}.token"));
        run(Command::new(&cli)
            .args(["token", "add", "--tokens-file"])
            .arg(&tokens)
            .args(["--role", role])
            .args(&extra)
            .arg("--out")
            .arg(&out));
        let t = std::fs::read_to_string(&out).expect("token");
        assert_eq!(t.len(), 32, "a 128-bit hex token");
        cli_tokens.push((role.to_string(), t));
    }
    for i in 1..=5 {
        let h = dir.join(format!("host{i}"));
        std::fs::create_dir_all(&h).expect("host dir");
        run(Command::new(&cli)
            .args(["cert", "node", "--ca-dir"])
            .arg(&ca_dir)
            .args([
                "--cluster-id",
                CLUSTER_ID,
                "--id",
                &i.to_string(),
                "--host",
                &addr(i),
            ])
            .arg("--out")
            .arg(&h));
        std::fs::copy(ca_dir.join("ca.pem"), h.join("ca.pem")).expect("ca.pem");
        let mut cfg = must_replace(&example, "node_id = 1", &format!("node_id = {i}"));
        cfg = must_replace(&cfg, "10.0.0.1:", &format!("{}:", addr(i)));
        cfg = must_replace(
            &cfg,
            "\"/var/lib/billdb/data\"",
            &format!("{:?}", h.join("data")),
        );
        cfg = must_replace(&cfg, "\"/etc/billdb/tokens.toml\"", &format!("{tokens:?}"));
        cfg = must_replace(
            &cfg,
            "\"/etc/billdb/ca.pem\"",
            &format!("{:?}", h.join("ca.pem")),
        );
        cfg = must_replace(
            &cfg,
            "\"/etc/billdb/node1.pem\"",
            &format!("{:?}", h.join(format!("node{i}.pem"))),
        );
        cfg = must_replace(
            &cfg,
            "\"/etc/billdb/node1.key\"",
            &format!("{:?}", h.join(format!("node{i}.key"))),
        );
        std::fs::write(h.join("node.toml"), cfg).expect("node.toml");
    }

    let _net = Net::create();
    let mut hosts = Hosts {
        bin: node_bin,
        dir: dir.to_path_buf(),
        children: (0..5).map(|_| None).collect(),
    };
    for i in 1..=5 {
        hosts.start(i);
    }
    let c = Cli {
        bin: cli.clone(),
        ca: ca_dir.join("ca.pem"),
        grpc: (1..=5).map(|i| format!("{}:7101", addr(i))).collect(),
        http: (1..=5).map(|i| format!("{}:7001", addr(i))).collect(),
        tokens: cli_tokens,
    };
    for i in 1..=5 {
        wait_for(&format!("host {i} serves"), Duration::from_secs(30), || {
            c.try_run(
                "ops",
                &[i],
                &["cluster", "ready", "--live", "--timeout-secs", "2"],
            )
            .ok()
        });
    }
    // Plaintext is refused on every host: TLS only.
    let plain = output(Command::new(&cli).args([
        "cluster",
        "ready",
        "--live",
        "--timeout-secs",
        "2",
        "--endpoint",
        "http://10.77.0.1:7001",
    ]));
    assert!(!plain.status.success(), "plaintext HTTP must be refused");

    let specs: Vec<String> = (1..=5)
        .map(|i| {
            let a = addr(i);
            format!("id={i},raft={a}:7201,grpc={a}:7101,http={a}:7001")
        })
        .collect();
    let mut init: Vec<&str> = vec!["cluster", "init"];
    for s in &specs {
        init.push("--node");
        init.push(s);
    }
    c.run_ok("ops", &[1], &init);
    // Running it again (a bootstrap job restarted) is harmless with --if-needed.
    init.push("--if-needed");
    c.run_ok("ops", &[2], &init);
    let all = [1, 2, 3, 4, 5];
    let first = c.wait_leader(&all, Duration::from_secs(30));
    for i in all {
        wait_for(&format!("host {i} ready"), Duration::from_secs(30), || {
            c.try_run("ops", &[i], &["cluster", "ready", "--timeout-secs", "2"])
                .ok()
        });
    }
    // What the unit's ExecStop and the pods' preStop run: a follower has
    // nothing to hand over; the leader hands leadership to another node.
    let follower = if first == 1 { 2 } else { 1 };
    let said = c.run_ok("ops", &[follower], &["cluster", "step-down"]);
    assert!(said.contains("does not lead"), "{said}");
    let said = c.run_ok("ops", &[first], &["cluster", "step-down"]);
    assert!(said.contains("handed leadership"), "{said}");
    let leader = c.wait_leader(&all, Duration::from_secs(30));
    assert_ne!(leader, first, "step-down moved leadership away");
    c.setup_accounts();
    let load = Workload::start(&c, "hosts");
    load.wait_more_acked(10, Duration::from_secs(60), "with five hosts up");

    // The leader's host loses its link.
    ip(&["-n", &ns(leader), "link", "set", "eth0", "down"]);
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let second = wait_for(
        "a new leader among the four",
        Duration::from_secs(30),
        || {
            let l = c.leader_seen_by(rest[0])?;
            (l != leader && rest.contains(&l)).then_some(l)
        },
    );
    let gap = load.wait_more_acked(10, Duration::from_secs(60), "with the old leader cut off");
    eprintln!("host {leader} cut off; host {second} leads; 10 writes in {gap:?}");

    // The new leader's host is killed: three of five remain.
    hosts.kill(second);
    let three: Vec<usize> = rest.iter().copied().filter(|i| *i != second).collect();
    let third = c.wait_leader(&three, Duration::from_secs(30));
    let gap = load.wait_more_acked(
        10,
        Duration::from_secs(60),
        "with one host cut off and one killed",
    );
    eprintln!("host {second} killed; host {third} leads; 10 writes in {gap:?}");

    // Both come back.
    ip(&["-n", &ns(leader), "link", "set", "eth0", "up"]);
    hosts.start(second);
    let back = c.wait_leader(&all, Duration::from_secs(60));
    load.wait_more_acked(5, Duration::from_secs(60), "with all five back");
    let (acked, failed) = load.stop();
    eprintln!(
        "leader {back}; {} writes acknowledged, {} failed (retried below)",
        acked.len(),
        failed.len()
    );
    assert!(acked.len() >= 35);
    verify_nothing_lost(&c, &all, &acked, &failed);
    for i in all {
        let log = hosts.log(i);
        assert!(log.contains("billdb-node serving"), "host {i} log: {log}");
    }
    eprintln!("five hosts: {:?}", started.elapsed());
}
