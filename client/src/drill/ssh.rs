//! The `ssh` executor: a drill's faults on servers reached by a remote
//! shell, from an inventory file (TOML):
//!
//! ```toml
//! # How to run a command on a host: every "{host}" and "{command}" in the
//! # list is replaced (default: ssh in batch mode).
//! remote = ["ssh", "-o", "BatchMode=yes", "{host}", "{command}"]
//! sudo = false              # prefix the commands with `sudo -n`
//! service = "billdb-node"   # the systemd unit
//!
//! [[host]]
//! id = 1                    # the billdb node id it runs
//! host = "admin@10.0.0.11"  # what {host} becomes
//! address = "10.0.0.11"     # the address the other nodes reach it on
//! ```
//!
//! A kill is `systemctl kill --signal=SIGKILL` then `systemctl stop` (the
//! unit's `Restart=on-failure` would bring it straight back: a powered-off
//! server stays off until the drill starts it), a stop `systemctl stop`
//! (the unit hands leadership away first), a start `systemctl start`. A
//! partition adds, on each cut-off host, an iptables chain `BDBDRILL`
//! (jumped to from INPUT and OUTPUT) dropping traffic from and to the
//! other side's addresses; the heal removes the chain. Both are idempotent,
//! so a heal after a half-done cut is safe.
//!
//! May touch: the unit and the `BDBDRILL` chain on the inventory's hosts;
//! runs only the inventory's remote-shell command.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use super::Executor;
use crate::local::NodeId;

/// The chain a partition adds on a host.
pub const CHAIN: &str = "BDBDRILL";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default = "default_remote")]
    pub remote: Vec<String>,
    #[serde(default)]
    pub sudo: bool,
    #[serde(default = "default_service")]
    pub service: String,
    #[serde(rename = "host")]
    pub hosts: Vec<Host>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub id: NodeId,
    pub host: String,
    pub address: String,
}

fn default_remote() -> Vec<String> {
    ["ssh", "-o", "BatchMode=yes", "{host}", "{command}"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_service() -> String {
    "billdb-node".into()
}

/// A word safe to put into a shell command unquoted.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@/[]%".contains(c))
}

/// `s` as one single-quoted shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the inventory {}", path.display()))?;
        let inv: Inventory = toml::from_str(&text)
            .with_context(|| format!("INVALID_ARGUMENT: the inventory {}", path.display()))?;
        inv.check()?;
        Ok(inv)
    }

    fn check(&self) -> Result<()> {
        ensure!(
            self.remote.iter().any(|a| a.contains("{command}")),
            "INVALID_ARGUMENT: inventory: `remote` must contain \"{{command}}\""
        );
        ensure!(
            !self.remote.is_empty() && !self.remote[0].contains('{'),
            "INVALID_ARGUMENT: inventory: `remote` starts with the program to run"
        );
        ensure!(
            plain(&self.service),
            "INVALID_ARGUMENT: inventory: service {:?} is not a unit name",
            self.service
        );
        ensure!(
            !self.hosts.is_empty(),
            "INVALID_ARGUMENT: inventory: no [[host]]"
        );
        let mut seen = BTreeSet::new();
        for h in &self.hosts {
            ensure!(
                seen.insert(h.id),
                "INVALID_ARGUMENT: inventory: node {} listed twice",
                h.id
            );
            ensure!(
                !h.host.is_empty(),
                "INVALID_ARGUMENT: inventory: node {}: empty host",
                h.id
            );
            ensure!(
                plain(&h.address),
                "INVALID_ARGUMENT: inventory: node {}: address {:?} is not an address",
                h.id,
                h.address
            );
        }
        Ok(())
    }

    fn host(&self, n: NodeId) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.id == n)
            .with_context(|| format!("the inventory has no host for node {n}"))
    }
}

pub struct SshExecutor {
    pub inventory: Inventory,
    /// Hosts a partition touched (healed even when the cut failed half-way).
    cut: BTreeSet<NodeId>,
}

impl SshExecutor {
    pub fn new(inventory: Inventory) -> Self {
        SshExecutor {
            inventory,
            cut: BTreeSet::new(),
        }
    }

    /// Every member of the cluster must be in the inventory.
    pub fn check_members(&self, members: &[NodeId]) -> Result<()> {
        for n in members {
            self.inventory.host(*n)?;
        }
        Ok(())
    }

    /// Run `script` on node `n`'s host (as root with `sudo`).
    pub fn on(&self, n: NodeId, script: &str) -> Result<String> {
        let h = self.inventory.host(n)?;
        let command = if self.inventory.sudo {
            format!("sudo -n sh -c {}", quote(script))
        } else {
            script.to_string()
        };
        let args: Vec<String> = self
            .inventory
            .remote
            .iter()
            .map(|a| a.replace("{host}", &h.host).replace("{command}", &command))
            .collect();
        let out = Command::new(&args[0])
            .args(&args[1..])
            .output()
            .with_context(|| format!("running {} for node {n}", args[0]))?;
        if !out.status.success() {
            bail!(
                "on node {n}'s host {}: `{script}` failed ({}): {}",
                h.host,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Executor for SshExecutor {
    fn name(&self) -> &'static str {
        "ssh"
    }
    fn prepare(&mut self, scenario: &str) -> Result<()> {
        // Every host answers (and has iptables when the network is cut).
        let ids: Vec<NodeId> = self.inventory.hosts.iter().map(|h| h.id).collect();
        let probe = if super::is_partition(scenario) {
            format!(
                "systemctl is-active {} >/dev/null && iptables -w 5 -L INPUT -n >/dev/null",
                self.inventory.service
            )
        } else {
            format!("systemctl is-active {} >/dev/null", self.inventory.service)
        };
        for n in ids {
            self.on(n, &probe)
                .with_context(|| format!("{scenario}: node {n}'s host must answer"))?;
        }
        Ok(())
    }
    fn kill(&mut self, n: NodeId) -> Result<()> {
        let s = &self.inventory.service;
        self.on(
            n,
            &format!("systemctl kill --signal=SIGKILL {s}; systemctl stop {s}"),
        )
        .map(drop)
    }
    fn stop(&mut self, n: NodeId) -> Result<()> {
        let s = &self.inventory.service;
        self.on(n, &format!("systemctl stop {s}")).map(drop)
    }
    fn start(&mut self, n: NodeId) -> Result<()> {
        let s = &self.inventory.service;
        self.on(n, &format!("systemctl start {s}")).map(drop)
    }
    fn partition(&mut self, isolated: &[NodeId], rest: &[NodeId]) -> Result<()> {
        let peers: Vec<String> = rest
            .iter()
            .map(|r| self.inventory.host(*r).map(|h| h.address.clone()))
            .collect::<Result<_>>()?;
        let ipt = "iptables -w 5";
        let mut script = format!(
            "{ipt} -N {CHAIN} 2>/dev/null || {ipt} -F {CHAIN}; \
             {ipt} -C INPUT -j {CHAIN} 2>/dev/null || {ipt} -I INPUT 1 -j {CHAIN}; \
             {ipt} -C OUTPUT -j {CHAIN} 2>/dev/null || {ipt} -I OUTPUT 1 -j {CHAIN}"
        );
        for p in &peers {
            script.push_str(&format!(
                "; {ipt} -A {CHAIN} -s {p} -j DROP && {ipt} -A {CHAIN} -d {p} -j DROP"
            ));
        }
        for n in isolated {
            self.cut.insert(*n);
            self.on(*n, &script)?;
        }
        Ok(())
    }
    fn heal_network(&mut self) -> Result<()> {
        let ipt = "iptables -w 5";
        let script = format!(
            "while {ipt} -D INPUT -j {CHAIN} 2>/dev/null; do :; done; \
             while {ipt} -D OUTPUT -j {CHAIN} 2>/dev/null; do :; done; \
             {ipt} -F {CHAIN} 2>/dev/null; {ipt} -X {CHAIN} 2>/dev/null; true"
        );
        let hosts: Vec<NodeId> = self.cut.iter().copied().collect();
        for n in hosts {
            self.on(n, &script)?;
            self.cut.remove(&n);
        }
        Ok(())
    }
}

impl Drop for SshExecutor {
    /// A drill that stops half-way leaves no host cut off.
    fn drop(&mut self) {
        let _ = self.heal_network();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(text: &str) -> Result<Inventory> {
        let i: Inventory = toml::from_str(text)?;
        i.check()?;
        Ok(i)
    }

    #[test]
    fn inventory_defaults_and_refusals() {
        let i = inv("[[host]]\nid = 1\nhost = \"a@h1\"\naddress = \"10.0.0.11\"\n").unwrap();
        assert_eq!(i.remote[0], "ssh");
        assert_eq!(i.service, "billdb-node");
        assert!(!i.sudo);
        for bad in [
            // twice the same node
            "[[host]]\nid = 1\nhost = \"h\"\naddress = \"a\"\n[[host]]\nid = 1\nhost = \"h\"\naddress = \"b\"\n",
            // an address a shell would split
            "[[host]]\nid = 1\nhost = \"h\"\naddress = \"a; rm -rf /\"\n",
            // no {command}
            "remote = [\"ssh\", \"{host}\"]\n[[host]]\nid = 1\nhost = \"h\"\naddress = \"a\"\n",
            // an unknown field
            "[[host]]\nid = 1\nhost = \"h\"\naddress = \"a\"\nport = 22\n",
            // no host
            "sudo = true\n",
        ] {
            assert!(inv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_keeps_a_script_one_word() {
        assert_eq!(quote("a 'b' c"), r"'a '\''b'\'' c'");
    }
}
