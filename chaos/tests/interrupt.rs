//! Ctrl-C during a chaos run (the real binary, five real nodes on
//! 127.0.1.N, ports 16001–16305 and 16400): the run stops starting faults,
//! heals, checks what it recorded and prints its report, and leaves no node
//! process and no iptables chain behind. Needs root (iptables).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BASE_PORT: u16 = 16000;

fn node_processes_of(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("billdb-node") && cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn ctrl_c_heals_checks_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_billdb-chaos"))
        .args(["run", "--dir"])
        .arg(&dir)
        .args([
            "--base-port",
            &BASE_PORT.to_string(),
            "--seed",
            "7",
            "--duration-s",
            "600",
            "--nemesis",
            "partition-leader,kill2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start billdb-chaos");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the first fault, then interrupt.
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(until.saturating_duration_since(Instant::now()))
            .expect("the run started a fault within 120 s");
        let fault = line.contains("partition-leader") || line.contains("kill2");
        out.push(line);
        if fault {
            break;
        }
    }
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the run did not finish after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().expect("reader");
    out.extend(rx.try_iter());
    let text = out.join("\n");
    assert!(text.contains("interrupted"), "{text}");
    assert!(text.contains("RESULT: PASS"), "{text}");
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        node_processes_of(&dir).is_empty(),
        "nodes left behind: {:?}",
        node_processes_of(&dir)
    );
    let chain = format!("BDBCHAOS{BASE_PORT}");
    let listed = Command::new("iptables")
        .args(["-S", &chain])
        .output()
        .expect("iptables");
    assert!(
        !listed.status.success(),
        "chain {chain} left behind: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
}
