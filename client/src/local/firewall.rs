//! Network partitions with iptables on loopback, for local clusters made
//! with a host prefix (the chaos suite's, and a drill's `local` executor).
//! Each node listens on its own loopback address (`{prefix}N`, e.g.
//! `127.0.1.N`) and binds its outgoing node-to-node connections to it, so a
//! directed link a→b is cut by one rule `-s {prefix}a -d {prefix}b -j DROP`
//! in a dedicated chain (jumped to from INPUT). Client traffic comes from
//! 127.0.0.1 and is never matched. Packets really stop: TCP sees silence,
//! not resets.
//!
//! May touch: only the iptables chain it creates (named by its owner, e.g.
//! `BDBCHAOS<base port>`) and the one jump rule to it in INPUT; runs
//! `iptables` (needs root). The chain is flushed and removed on
//! [`Firewall::heal`]/drop and a stale one from an earlier crashed run is
//! removed at creation.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

/// Loopback address of node `n` under `host_prefix` (three octets and a
/// dot, in 127.0.0.0/8: `127.0.1.` gives `127.0.1.n`).
pub fn node_ip_on(host_prefix: &str, n: u64) -> Result<Ipv4Addr> {
    let last = u8::try_from(n)
        .ok()
        .filter(|b| (1..=254).contains(b))
        .with_context(|| format!("node id {n} has no {host_prefix}x address"))?;
    let ip: Ipv4Addr = format!("{host_prefix}{last}")
        .parse()
        .with_context(|| format!("host prefix {host_prefix:?} is not three octets and a dot"))?;
    ensure!(
        ip.is_loopback(),
        "host prefix {host_prefix:?} is not on loopback (127.0.0.0/8): partitions here are cut on loopback only"
    );
    Ok(ip)
}

fn iptables(args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .arg("-w")
        .arg("5")
        .args(args)
        .output()
        .with_context(|| format!("running iptables {}", args.join(" ")))
}

fn iptables_ok(args: &[&str]) -> Result<()> {
    let out = iptables(args)?;
    ensure!(
        out.status.success(),
        "iptables {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Owner of one iptables chain of directed DROP rules between node addresses.
pub struct Firewall {
    chain: String,
    host_prefix: String,
    cut: Mutex<BTreeSet<(u64, u64)>>,
}

impl Firewall {
    /// Creates (or recreates) the chain `chain` (at most 28 characters) for
    /// nodes at `{host_prefix}N` and jumps to it from INPUT. Fails clearly
    /// when iptables is missing or we are not root.
    pub fn new(chain: &str, host_prefix: &str) -> Result<Self> {
        ensure!(
            !chain.is_empty()
                && chain.len() <= 28
                && chain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "iptables chain name {chain:?}: 1 to 28 letters, digits, '-' or '_'"
        );
        node_ip_on(host_prefix, 1)?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        ensure!(
            euid == 0,
            "network partitions need root (iptables on loopback); running as uid {euid}"
        );
        let fw = Firewall {
            chain: chain.to_string(),
            host_prefix: host_prefix.to_string(),
            cut: Mutex::default(),
        };
        fw.remove_chain();
        iptables_ok(&["-N", &fw.chain]).with_context(|| {
            format!("creating the iptables chain {chain} (is iptables installed? deploy/setup.sh)")
        })?;
        iptables_ok(&["-I", "INPUT", "1", "-j", &fw.chain])?;
        Ok(fw)
    }

    pub fn chain(&self) -> &str {
        &self.chain
    }

    fn remove_chain(&self) {
        // Best effort: any of these fails harmlessly when absent.
        for _ in 0..4 {
            match iptables(&["-D", "INPUT", "-j", &self.chain]) {
                Ok(o) if o.status.success() => continue,
                _ => break,
            }
        }
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }

    /// Drops every packet from node `a` to node `b` (one direction).
    pub fn cut(&self, a: u64, b: u64) -> Result<()> {
        self.cut_links(&[(a, b)])
    }

    /// Cuts all these directed links in one atomic `iptables-restore
    /// --noflush` commit (so a partition starts at one instant).
    pub fn cut_links(&self, links: &[(u64, u64)]) -> Result<()> {
        use std::io::Write as _;
        let mut script = String::from("*filter\n");
        for &(a, b) in links {
            script.push_str(&format!(
                "-A {} -s {} -d {} -j DROP\n",
                self.chain,
                node_ip_on(&self.host_prefix, a)?,
                node_ip_on(&self.host_prefix, b)?
            ));
        }
        script.push_str("COMMIT\n");
        let mut child = Command::new("iptables-restore")
            .args(["-w", "5", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running iptables-restore")?;
        child
            .stdin
            .take()
            .context("iptables-restore stdin")?
            .write_all(script.as_bytes())
            .context("writing to iptables-restore")?;
        let out = child
            .wait_with_output()
            .context("waiting for iptables-restore")?;
        ensure!(
            out.status.success(),
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(links.iter().copied());
        Ok(())
    }

    /// Cuts both directions between every node of `side_a` and of `side_b`.
    pub fn cut_between(&self, side_a: &[u64], side_b: &[u64]) -> Result<()> {
        let mut links = Vec::new();
        for &a in side_a {
            for &b in side_b {
                if a != b {
                    links.push((a, b));
                    links.push((b, a));
                }
            }
        }
        self.cut_links(&links)
    }

    /// Directed links currently cut.
    pub fn links_cut(&self) -> Vec<(u64, u64)> {
        self.cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Removes every rule (all links flow again).
    pub fn heal(&self) -> Result<()> {
        iptables_ok(&["-F", &self.chain])?;
        self.cut.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Proves that a rule really stops loopback TCP between two addresses
    /// of the prefix (and that healing restores it), on a throwaway
    /// listener at `{prefix}250:port` dialled from `{prefix}251`.
    pub fn self_test(&self, port: u16) -> Result<()> {
        let server: SocketAddr = (node_ip_on(&self.host_prefix, 250)?, port).into();
        let from = node_ip_on(&self.host_prefix, 251)?;
        let listener =
            TcpListener::bind(server).with_context(|| format!("binding {server} for self-test"))?;
        let dial = || dial_from(from, server, Duration::from_millis(500));
        ensure!(dial(), "self-test: cannot reach {server} before any rule");
        self.cut(251, 250)?;
        let blocked = !dial();
        self.heal()?;
        ensure!(
            blocked,
            "self-test: a DROP rule in {} did not stop {from} -> {server}",
            self.chain
        );
        ensure!(dial(), "self-test: {server} unreachable after healing");
        drop(listener);
        Ok(())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.remove_chain();
    }
}

/// Dials `to` from a socket bound to `from`; true when connected within `timeout`.
fn dial_from(from: Ipv4Addr, to: SocketAddr, timeout: Duration) -> bool {
    use socket2::{Domain, Socket, Type};
    let Ok(sock) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return false;
    };
    let local: SocketAddr = (from, 0).into();
    if sock.bind(&local.into()).is_err() {
        return false;
    }
    sock.connect_timeout(&to.into(), timeout).is_ok()
}
