//! Unit tests of the local cluster manager that need no `billdb-node` binary.
//!
//! Scope: files only under per-test temp directories; processes only `sleep` and
//! a fake node shell script that these tests start (and kill) themselves; HTTP
//! only to in-process fake servers on 127.0.0.1.

use super::*;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::atomic::AtomicU16;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// A base port whose HTTP/gRPC/Raft ports for nodes 1..=n are all free now.
fn free_base(n: u16) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 10_000 + (std::process::id() % 40) as u16 * 500;
    for _ in 0..200 {
        let slot = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = 10_000 + (start - 10_000 + slot * 300) % 22_000;
        let all_free = (1..=n).all(|id| {
            [0u16, 100, 200]
                .iter()
                .all(|off| TcpListener::bind(("127.0.0.1", base + off + id)).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no free base port found");
}

/// A stand-in for billdb-node: a shell script that idles, exits 0 on SIGTERM,
/// and keeps `--config PATH` in its command line (so identity checks pass).
fn fake_node_bin(dir: &Path) -> PathBuf {
    let p = dir.join("fake-billdb-node");
    fs::write(
        &p,
        "#!/bin/sh\ntrap 'echo got-term; exit 0' TERM\necho \"fake node $*\"\necho \"node ready\"\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Waits until the fake node `n` has run its first line (its signal trap is set).
fn wait_started(c: &LocalCluster, n: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(c.log_path(n))
        .unwrap_or_default()
        .contains("node ready")
    {
        assert!(Instant::now() < deadline, "fake node {n} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn make_exec(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, "#!/bin/sh\n").unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Minimal HTTP/1.1 server answering every request with `handler(method, path,
/// body)`; stops when dropped.
struct FakeHttp {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Handler = dyn Fn(&str, &str, &str) -> (u16, String) + Send + Sync;

impl FakeHttp {
    fn serve(addr: &str, handler: Arc<Handler>) -> FakeHttp {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let _ = handle_conn(sock, &*handler);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeHttp {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle_conn(sock: TcpStream, handler: &Handler) -> io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(sock.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (status, resp) = handler(&method, &path, &String::from_utf8_lossy(&body));
    let mut sock = sock;
    write!(
        sock,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{resp}",
        resp.len()
    )?;
    sock.flush()
}

fn new_cluster(n: usize) -> (tempfile::TempDir, LocalCluster) {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_node_bin(tmp.path());
    let base = free_base(n as u16);
    // The fake admin API speaks plain HTTP: an explicitly plaintext cluster.
    let c = LocalCluster::create_full(
        &tmp.path().join("cluster"),
        &bin,
        base,
        n,
        RaftTimings::default(),
        None,
        false,
    )
    .unwrap();
    c.set_kill_on_drop(true);
    (tmp, c)
}

// ---------------------------------------------------------------------------
// ports and config files
// ---------------------------------------------------------------------------

#[test]
fn ports_follow_the_base_port_scheme() {
    assert_eq!(node_ports(7000, 1).unwrap(), (7001, 7101, 7201));
    assert_eq!(node_ports(7000, 5).unwrap(), (7005, 7105, 7205));
    assert_eq!(node_ports(9000, 6).unwrap(), (9006, 9106, 9206));
    let s = node_spec(7000, 3).unwrap();
    assert_eq!(s.http_addr, "127.0.0.1:7003");
    assert_eq!(s.grpc_addr, "127.0.0.1:7103");
    assert_eq!(s.raft_addr, "127.0.0.1:7203");
    assert!(node_ports(7000, 0).is_err());
    assert!(node_ports(7000, 100).is_err());
    let err = node_ports(65_400, 5).unwrap_err().to_string();
    assert!(err.contains("too high"), "{err}");
}

#[test]
fn create_writes_configs_and_cluster_json_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let bin = fake_node_bin(tmp.path());
    let c = LocalCluster::create(&dir, &bin, 8000, 5).unwrap();
    assert_eq!(c.node_ids(), vec![1, 2, 3, 4, 5]);
    assert_eq!(c.http_addr(2).unwrap(), "127.0.0.1:8002");
    assert_eq!(c.grpc_addr(2).unwrap(), "127.0.0.1:8102");
    assert_eq!(c.raft_addr(2).unwrap(), "127.0.0.1:8202");
    assert!(c.http_addr(6).is_err());

    // node.toml is what billdb-node expects.
    let text = fs::read_to_string(dir.join("node3/node.toml")).unwrap();
    let cfg: NodeConfig = toml::from_str(&text).unwrap();
    assert_eq!(cfg.node_id, 3);
    assert_eq!(cfg.http_addr, "127.0.0.1:8003");
    assert_eq!(cfg.grpc_addr, "127.0.0.1:8103");
    assert_eq!(cfg.raft_addr, "127.0.0.1:8203");
    assert!(cfg.data_dir.is_absolute());
    assert_eq!(cfg.data_dir, c.dir().join("node3").join("data"));
    assert_eq!(cfg.raft, RaftTimings::default());
    // Secure by default: TLS material made and named, nothing insecure.
    let tls = cfg.tls.as_ref().expect("[tls]");
    assert_eq!(tls.cluster_id, "local");
    assert!(tls.cert_file.ends_with("tls/node3.pem") && tls.cert_file.is_file());
    assert!(tls.key_file.is_file() && tls.ca_file.is_file());
    assert_eq!(cfg.insecure, None);
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(&tls.key_file).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(key_mode, 0o600);
    assert_eq!(c.scheme(), "https");
    let raw: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(
        raw["raft"]["election_timeout_max_ms"].as_integer(),
        Some(400)
    );

    // cluster.json round trip.
    let reopened = LocalCluster::open(&dir).unwrap();
    assert_eq!(reopened.spec(), c.spec());
    assert_eq!(reopened.base_port(), 8000);
    assert_eq!(reopened.node_bin(), fs::canonicalize(&bin).unwrap());
    assert!(!reopened.initialized());

    // Creating twice is refused.
    let err = LocalCluster::create(&dir, &bin, 8000, 5).unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "{err:#}");
}

#[test]
fn add_node_persists_new_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let c = LocalCluster::create(&dir, &fake_node_bin(tmp.path()), 7000, 5).unwrap();
    let spec = c.add_node(6).unwrap();
    assert_eq!(spec.http_addr, "127.0.0.1:7006");
    assert_eq!(spec.raft_addr, "127.0.0.1:7206");
    assert!(c.add_node(3).is_err());
    assert!(c.add_node(100).is_err());
    let reopened = LocalCluster::open(&dir).unwrap();
    assert_eq!(reopened.node_ids(), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(reopened.grpc_addr(6).unwrap(), "127.0.0.1:7106");
    let cfg: NodeConfig =
        toml::from_str(&fs::read_to_string(dir.join("node6/node.toml")).unwrap()).unwrap();
    assert_eq!(cfg.node_id, 6);
}

#[test]
fn host_prefix_places_each_node_on_its_own_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let bin = fake_node_bin(tmp.path());
    let c = LocalCluster::create_on_hosts(
        &dir,
        &bin,
        7000,
        5,
        RaftTimings::default(),
        Some("127.0.1."),
    )
    .unwrap();
    assert_eq!(c.http_addr(3).unwrap(), "127.0.1.3:7003");
    assert_eq!(c.raft_addr(3).unwrap(), "127.0.1.3:7203");
    let cfg: NodeConfig =
        toml::from_str(&fs::read_to_string(dir.join("node2/node.toml")).unwrap()).unwrap();
    assert_eq!(cfg.grpc_addr, "127.0.1.2:7102");
    // Added nodes follow the same pattern, and the prefix survives a reopen.
    assert_eq!(c.add_node(7).unwrap().raft_addr, "127.0.1.7:7207");
    let reopened = LocalCluster::open(&dir).unwrap();
    assert_eq!(reopened.spec(), c.spec());
    assert_eq!(reopened.spec().host_prefix.as_deref(), Some("127.0.1."));
    // A prefix that does not make an IP is refused.
    assert!(node_spec_on(7000, 1, Some("localhost")).is_err());
}

#[test]
fn cluster_json_without_host_prefix_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let c = LocalCluster::create(&dir, &fake_node_bin(tmp.path()), 7000, 5).unwrap();
    let text = fs::read_to_string(dir.join(CLUSTER_FILE)).unwrap();
    assert!(!text.contains("host_prefix"), "{text}");
    let reopened = LocalCluster::open(&dir).unwrap();
    assert_eq!(reopened.spec().host_prefix, None);
    assert_eq!(reopened.http_addr(1).unwrap(), "127.0.0.1:7001");
    assert_eq!(reopened.spec(), c.spec());
}

#[test]
fn open_missing_or_bad_cluster_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let err = LocalCluster::open(tmp.path()).unwrap_err();
    assert!(format!("{err:#}").contains("no local cluster"), "{err:#}");
    fs::write(tmp.path().join(CLUSTER_FILE), "{not json").unwrap();
    let err = LocalCluster::open(tmp.path()).unwrap_err();
    assert!(format!("{err:#}").contains("parsing"), "{err:#}");
}

#[test]
fn create_rejects_bad_node_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_node_bin(tmp.path());
    assert!(LocalCluster::create(&tmp.path().join("a"), &bin, 7000, 0).is_err());
    assert!(LocalCluster::create(&tmp.path().join("b"), &bin, 7000, 100).is_err());
}

// ---------------------------------------------------------------------------
// node binary discovery
// ---------------------------------------------------------------------------

#[test]
fn node_bin_found_next_to_exe_or_in_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let release = tmp.path().join("target/release");
    let test_exe = release.join("deps/chaos-1234");
    make_exec(&test_exe);
    // Only in the parent (the cargo test layout).
    let parent_bin = release.join(NODE_BIN_NAME);
    make_exec(&parent_bin);
    let found = resolve_node_bin(None, None, Some(&test_exe), None).unwrap();
    assert_eq!(found, fs::canonicalize(&parent_bin).unwrap());
    // Next to the exe wins over the parent.
    let sibling = release.join("deps").join(NODE_BIN_NAME);
    make_exec(&sibling);
    let found = resolve_node_bin(None, None, Some(&test_exe), None).unwrap();
    assert_eq!(found, fs::canonicalize(&sibling).unwrap());
}

#[test]
fn node_bin_precedence_flag_env_path() {
    let tmp = tempfile::tempdir().unwrap();
    let flag = tmp.path().join("flag/billdb-node");
    let env = tmp.path().join("env/billdb-node");
    let on_path = tmp.path().join("bin/billdb-node");
    for p in [&flag, &env, &on_path] {
        make_exec(p);
    }
    let exe = tmp.path().join("nowhere/exe");
    let path_var =
        std::env::join_paths([tmp.path().join("empty"), tmp.path().join("bin")]).unwrap();
    let r =
        |f: Option<&Path>, e: Option<&OsStr>| resolve_node_bin(f, e, Some(&exe), Some(&path_var));
    assert_eq!(
        r(Some(&flag), Some(env.as_os_str())).unwrap(),
        fs::canonicalize(&flag).unwrap()
    );
    assert_eq!(
        r(None, Some(env.as_os_str())).unwrap(),
        fs::canonicalize(&env).unwrap()
    );
    assert_eq!(r(None, None).unwrap(), fs::canonicalize(&on_path).unwrap());
    // An empty env var is ignored.
    assert_eq!(
        r(None, Some(OsStr::new(""))).unwrap(),
        fs::canonicalize(&on_path).unwrap()
    );
    // An explicit but wrong flag / env value is an error, not a silent fallback.
    assert!(r(Some(&tmp.path().join("missing")), None).is_err());
    let err = r(None, Some(OsStr::new("/definitely/not/here"))).unwrap_err();
    assert!(err.to_string().contains(NODE_BIN_ENV), "{err}");
}

#[test]
fn node_bin_ignores_non_executables_and_reports_search() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("deps/exe");
    make_exec(&exe);
    let not_exec = tmp.path().join("deps").join(NODE_BIN_NAME);
    fs::write(&not_exec, "x").unwrap();
    fs::set_permissions(&not_exec, fs::Permissions::from_mode(0o644)).unwrap();
    let err = resolve_node_bin(None, None, Some(&exe), Some(OsStr::new(""))).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot find"), "{msg}");
    assert!(msg.contains("--node-bin"), "{msg}");
}

// ---------------------------------------------------------------------------
// process state
// ---------------------------------------------------------------------------

#[test]
fn stat_line_parsing() {
    assert_eq!(
        parse_stat_state("42 (billdb-node) S 1 42"),
        Some(ProcState::Running)
    );
    assert_eq!(
        parse_stat_state("42 (a) b) (c) R 1"),
        Some(ProcState::Running)
    );
    assert_eq!(parse_stat_state("42 (x) Z 1"), Some(ProcState::Zombie));
    assert_eq!(parse_stat_state("42 (x) T 1"), Some(ProcState::Stopped));
    assert_eq!(parse_stat_state("42 (x) X 1"), Some(ProcState::Gone));
    assert_eq!(parse_stat_state("garbage"), None);
}

#[test]
fn liveness_of_a_real_sleep_process() {
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    assert!(pid_alive(pid));
    assert_eq!(process_state(pid), ProcState::Running);

    assert!(send_signal(pid, libc::SIGSTOP).unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(pid) != ProcState::Stopped && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(process_state(pid), ProcState::Stopped);
    assert!(pid_alive(pid), "a stopped process is alive");

    assert!(send_signal(pid, libc::SIGKILL).unwrap());
    // Not reaped yet: a zombie, which must count as dead.
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(pid) == ProcState::Stopped || process_state(pid) == ProcState::Running {
        assert!(Instant::now() < deadline, "sleep did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(process_state(pid), ProcState::Zombie);
    assert!(!pid_alive(pid));
    child.wait().unwrap();
    assert_eq!(process_state(pid), ProcState::Gone);
    assert!(
        !send_signal(pid, 0).unwrap(),
        "signal to a gone pid reports false"
    );
}

// ---------------------------------------------------------------------------
// LocalCluster process management with a fake node
// ---------------------------------------------------------------------------

#[test]
fn start_stop_kill_pause_wipe_with_fake_node() {
    let (_tmp, c) = new_cluster(3);

    assert!(!c.is_running(1));
    assert_eq!(c.node_state(1), NodeState::Stopped);
    let pid = c.start(1).unwrap();
    wait_started(&c, 1);
    assert!(c.is_running(1));
    assert_eq!(c.pid(1), Some(pid));
    assert_eq!(
        fs::read_to_string(c.pid_path(1)).unwrap().trim(),
        pid.to_string()
    );
    // Detached: the node leads its own session.
    // SAFETY: getsid only reads.
    assert_eq!(
        unsafe { libc::getsid(pid as libc::pid_t) },
        pid as libc::pid_t
    );
    let err = c.start(1).unwrap_err().to_string();
    assert!(err.contains("already running"), "{err}");

    // Pause / resume.
    c.pause(1).unwrap();
    assert!(c.is_paused(1));
    assert!(c.is_running(1), "paused counts as running");
    assert_eq!(c.node_state(1), NodeState::Paused);
    c.resume(1).unwrap();
    assert!(!c.is_paused(1));
    assert_eq!(c.node_state(1), NodeState::Running);

    // Graceful stop of a paused node: SIGTERM + SIGCONT gets through.
    c.pause(1).unwrap();
    assert_eq!(
        c.stop_with_timeout(1, Duration::from_secs(5)).unwrap(),
        StopOutcome::Terminated
    );
    assert!(!c.is_running(1));
    assert!(!c.pid_path(1).exists());
    assert_eq!(c.stop(1).unwrap(), StopOutcome::NotRunning);
    let log = fs::read_to_string(c.log_path(1)).unwrap();
    assert!(log.contains("fake node --config"), "{log}");
    assert!(log.contains("got-term"), "{log}");

    // Kill.
    let pid2 = c.start(2).unwrap();
    assert!(c.kill(2).unwrap());
    assert!(!pid_alive(pid2));
    assert!(!c.is_running(2));
    assert!(!c.kill(2).unwrap(), "second kill: was not running");
    assert!(c.pause(2).is_err());

    // Restart after kill works (ports free, pid file replaced).
    let pid2b = c.start(2).unwrap();
    assert_ne!(pid2b, pid2);
    assert!(c.is_running(2));

    // Wipe refuses while running, deletes the data dir when stopped.
    fs::create_dir_all(c.data_dir(2).join("db")).unwrap();
    let err = c.wipe(2).unwrap_err().to_string();
    assert!(err.contains("running"), "{err}");
    assert!(c.data_dir(2).exists());
    c.kill(2).unwrap();
    assert!(c.wipe(2).unwrap());
    assert!(!c.data_dir(2).exists());
    assert!(!c.wipe(2).unwrap());

    // Unknown node.
    assert!(c.start(9).is_err());
    assert!(c.kill(9).is_err());
}

#[test]
fn stop_escalates_to_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("stubborn-node");
    fs::write(
        &bin,
        "#!/bin/sh\ntrap '' TERM\necho \"node ready\"\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let c = LocalCluster::create(&tmp.path().join("c"), &bin, free_base(1), 1).unwrap();
    c.set_kill_on_drop(true);
    c.start(1).unwrap();
    wait_started(&c, 1);
    let t0 = Instant::now();
    assert_eq!(
        c.stop_with_timeout(1, Duration::from_millis(300)).unwrap(),
        StopOutcome::Killed
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!c.is_running(1));
}

#[test]
fn stale_pid_file_of_another_process_is_not_ours() {
    let (_tmp, c) = new_cluster(1);
    // Our own (very much alive) pid, but its command line is not node 1's.
    fs::write(c.pid_path(1), format!("{}\n", std::process::id())).unwrap();
    assert!(!c.is_running(1));
    assert_eq!(c.pid(1), None);
    assert!(!c.kill(1).unwrap(), "must not signal an unrelated process");
    // Garbage pid file.
    fs::write(c.pid_path(1), "not a pid").unwrap();
    assert!(!c.is_running(1));
}

#[test]
fn start_refuses_busy_port_and_missing_binary() {
    let (_tmp, c) = new_cluster(2);
    let _busy = TcpListener::bind(c.grpc_addr(1).unwrap()).unwrap();
    let err = format!("{:#}", c.start(1).unwrap_err());
    assert!(err.contains("not free"), "{err}");
    assert!(!c.is_running(1));

    let missing = c.dir().join("no-such-bin");
    {
        let mut spec = lock(&c.inner.spec);
        spec.node_bin = missing;
    }
    let err = format!("{:#}", c.start(2).unwrap_err());
    assert!(err.contains("missing or not executable"), "{err}");
}

#[test]
fn process_spawned_by_one_handle_is_managed_by_another() {
    let (_tmp, c) = new_cluster(1);
    let pid = c.start(1).unwrap();
    let other = LocalCluster::open(c.dir()).unwrap();
    assert_eq!(other.pid(1), Some(pid));
    assert!(other.kill(1).unwrap());
    // The first handle (the parent) sees it gone too (its zombie gets reaped).
    assert!(!c.is_running(1));
}

#[test]
fn kill_on_drop_cleans_up() {
    let (_tmp, c) = new_cluster(2);
    let p1 = c.start(1).unwrap();
    let p2 = c.start(2).unwrap();
    drop(c);
    assert!(!pid_alive(p1));
    assert!(!pid_alive(p2));
}

#[test]
fn down_stops_everything() {
    let (_tmp, c) = new_cluster(3);
    let started = c.start_all().unwrap();
    assert_eq!(started.len(), 3);
    for n in 1..=3 {
        wait_started(&c, n);
    }
    assert!(c.start_all().unwrap().is_empty(), "all already running");
    let outcomes = c.down().unwrap();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes.iter().all(|(_, o)| *o == StopOutcome::Terminated),
        "{outcomes:?}"
    );
    assert!(c.node_ids().iter().all(|n| !c.is_running(*n)));
}

// ---------------------------------------------------------------------------
// HTTP side against in-process fake admin servers
// ---------------------------------------------------------------------------

fn status_json(id: NodeId, role: &str, term: u64, leader: Option<NodeId>, voters: &[u64]) -> Value {
    serde_json::json!({
        "node_id": id, "role": role, "term": term, "leader_id": leader,
        "last_log_index": 10, "committed_index": 10, "applied_index": 9,
        "voters": voters, "learners": [],
        "replication": if role == "leader" {
            serde_json::json!({"1": {"matched_index": 7, "lag": 3}, "3": {"matched_index": 10, "lag": 0}})
        } else { Value::Null },
    })
}

#[test]
fn health_init_leader_and_table_with_fake_admin_api() {
    let (_tmp, c) = new_cluster(3);
    c.start_all().unwrap();
    let init_calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let servers: Vec<FakeHttp> = c
        .node_ids()
        .into_iter()
        .map(|n| {
            let calls = init_calls.clone();
            let handler: Arc<Handler> = Arc::new(move |method, path, body| match (method, path) {
                ("GET", "/healthz") => (200, "ok".to_string()),
                ("GET", "/v1/cluster/status") => {
                    let role = if n == 2 { "leader" } else { "follower" };
                    (
                        200,
                        status_json(n, role, 4, Some(2), &[1, 2, 3]).to_string(),
                    )
                }
                ("POST", "/v1/cluster/init") => {
                    let mut calls = lock(&calls);
                    calls.push(format!("{n}:{body}"));
                    if calls.len() == 1 {
                        (200, "{}".to_string())
                    } else {
                        (
                            409,
                            r#"{"code":"ALREADY_INITIALIZED","message":"done","details":{}}"#
                                .to_string(),
                        )
                    }
                }
                _ => (
                    404,
                    r#"{"code":"NOT_FOUND","message":"no route"}"#.to_string(),
                ),
            });
            FakeHttp::serve(&c.http_addr(n).unwrap(), handler)
        })
        .collect();

    c.wait_all_healthy(Duration::from_secs(10)).unwrap();
    assert_eq!(c.wait_leader(Duration::from_secs(10)).unwrap(), 2);

    assert!(!c.initialized());
    assert!(c.init().unwrap(), "first init initialises");
    assert!(!c.init().unwrap(), "second init: already initialised");
    assert!(
        LocalCluster::open(c.dir()).unwrap().initialized(),
        "persisted"
    );
    {
        let calls = lock(&init_calls);
        assert_eq!(calls.len(), 2);
        assert!(
            calls[0].starts_with("1:"),
            "init goes to node 1: {}",
            calls[0]
        );
        let body: Value = serde_json::from_str(&calls[0][2..]).unwrap();
        let nodes = body["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2]["id"], 3);
        assert_eq!(nodes[2]["http_addr"], c.http_addr(3).unwrap());
        assert_eq!(nodes[2]["raft_addr"], c.raft_addr(3).unwrap());
    }

    // Paused node: no status, table says paused; leader still agreed (2 of 3).
    c.pause(3).unwrap();
    let statuses = c.status_all();
    assert!(statuses[2].1.is_none());
    assert!(statuses[0].1.is_some());
    assert_eq!(c.wait_leader(Duration::from_secs(5)).unwrap(), 2);
    let table = render_status_table(&c.report());
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE"), "{table}");
    assert!(
        lines[1].contains("follower") && lines[1].ends_with('3'),
        "lag of node 1 is 3: {table}"
    );
    assert!(lines[2].contains("leader"), "{table}");
    assert!(lines[3].contains("paused"), "{table}");
    c.resume(3).unwrap();

    // A node whose process is gone fails wait_healthy fast, with its log.
    c.kill(1).unwrap();
    let t0 = Instant::now();
    let err = c
        .wait_healthy(1, Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains("not running") && err.contains("fake node"),
        "{err}"
    );
    drop(servers);
}

#[test]
fn wait_leader_times_out_without_majority() {
    let (_tmp, c) = new_cluster(3);
    c.start_all().unwrap();
    // Everyone is a candidate: no leader.
    let _servers: Vec<FakeHttp> = c
        .node_ids()
        .into_iter()
        .map(|n| {
            let handler: Arc<Handler> = Arc::new(move |_, _, _| {
                (
                    200,
                    status_json(n, "candidate", 7, None, &[1, 2, 3]).to_string(),
                )
            });
            FakeHttp::serve(&c.http_addr(n).unwrap(), handler)
        })
        .collect();
    let t0 = Instant::now();
    let err = c
        .wait_leader(Duration::from_millis(800))
        .unwrap_err()
        .to_string();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        err.contains("no agreed leader") && err.contains("candidate"),
        "{err}"
    );
}

#[test]
fn wait_healthy_times_out_when_nothing_listens() {
    let (_tmp, c) = new_cluster(1);
    c.start(1).unwrap();
    let t0 = Instant::now();
    let err = c
        .wait_healthy(1, Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not healthy"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// pure status logic
// ---------------------------------------------------------------------------

#[test]
fn agreed_leader_needs_majority_and_prefers_higher_term() {
    let v = |id, role, term, leader| Some(status_json(id, role, term, leader, &[1, 2, 3, 4, 5]));
    // 3 of 5 agree on 1.
    let s = vec![
        (1, v(1, "leader", 2, Some(1))),
        (2, v(2, "follower", 2, Some(1))),
        (3, v(3, "follower", 2, Some(1))),
        (4, None),
        (5, None),
    ];
    assert_eq!(agreed_leader(&s), Some(1));
    // Only 2 of 5 agree: no leader.
    let s2 = vec![
        (1, v(1, "leader", 2, Some(1))),
        (2, v(2, "follower", 2, Some(1))),
        (3, None),
        (4, None),
        (5, None),
    ];
    assert_eq!(agreed_leader(&s2), None);
    // Stale leader 1 (term 2, isolated) vs new leader 4 (term 3, majority).
    let s3 = vec![
        (1, v(1, "leader", 2, Some(1))),
        (2, v(2, "follower", 3, Some(4))),
        (3, v(3, "follower", 3, Some(4))),
        (4, v(4, "leader", 3, Some(4))),
        (5, None),
    ];
    assert_eq!(agreed_leader(&s3), Some(4));
    // Nobody is leader.
    let s4 = vec![
        (1, v(1, "follower", 2, Some(3))),
        (2, v(2, "follower", 2, Some(3))),
    ];
    assert_eq!(agreed_leader(&s4), None);
    assert!(any_initialized(&s4));
    assert!(!any_initialized(&[
        (1, Some(serde_json::json!({"role":"learner","voters":[]}))),
        (2, None)
    ]));
}

#[test]
fn status_table_shows_states_and_lag() {
    let mk = |id, state, status| NodeReport {
        id,
        pid: if state == NodeState::Stopped {
            None
        } else {
            Some(100 + id as u32)
        },
        state,
        http_addr: String::new(),
        grpc_addr: String::new(),
        raft_addr: String::new(),
        status,
    };
    let rows = vec![
        mk(
            1,
            NodeState::Running,
            Some(status_json(1, "follower", 4, Some(2), &[1, 2, 3])),
        ),
        mk(
            2,
            NodeState::Running,
            Some(status_json(2, "leader", 4, Some(2), &[1, 2, 3])),
        ),
        mk(3, NodeState::Stopped, None),
        mk(4, NodeState::Running, None),
    ];
    let t = render_status_table(&rows);
    let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        [
            "NODE",
            "PID",
            "STATE",
            "ROLE",
            "TERM",
            "LEADER",
            "LAST_LOG",
            "COMMITTED",
            "APPLIED",
            "LAG"
        ]
    );
    assert_eq!(
        lines[1],
        [
            "1", "101", "running", "follower", "4", "2", "10", "10", "9", "3"
        ]
    );
    assert_eq!(
        lines[2],
        [
            "2", "102", "running", "leader", "4", "2", "10", "10", "9", "-"
        ]
    );
    // Lag comes from the leader's replication view, even for a stopped node.
    assert_eq!(
        lines[3],
        ["3", "-", "stopped", "-", "-", "-", "-", "-", "-", "0"]
    );
    assert_eq!(lines[4][3], "unreachable");
}
