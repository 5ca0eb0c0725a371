//! The `compose` executor: a drill's faults on a Docker Compose deployment
//! (deploy/container/compose.yml or one like it), through the `docker` CLI.
//!
//! Node N is the container of service `{prefix}N` (default `billdb-N`) in
//! compose project `project`, found by the labels Compose puts on its
//! containers (`com.docker.compose.project`, `com.docker.compose.service`),
//! so neither the compose file nor its environment is needed. A kill is
//! `docker kill` (SIGKILL, as a power loss), a stop `docker stop` with a
//! grace period that lets a leader hand over, a start `docker start`. A
//! partition disconnects each cut-off container from its networks (`docker
//! network disconnect`: its cable pulled; two cut-off containers are then
//! cut from each other too) and the heal reconnects it with the address and
//! aliases it had.
//!
//! May touch: only the containers of that project it is asked to fault,
//! and their network attachments; runs `docker` and nothing else.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::Executor;
use crate::local::NodeId;

/// Seconds `docker stop` waits after SIGTERM (a leader hands over first).
pub const STOP_GRACE_S: u32 = 40;

/// One network attachment taken away by a partition, to give back.
#[derive(Debug, Clone)]
struct Attachment {
    container: String,
    network: String,
    ipv4: Option<String>,
    aliases: Vec<String>,
}

pub struct ComposeExecutor {
    pub project: String,
    pub service_prefix: String,
    /// The `docker` binary (default `docker` on PATH).
    pub docker: String,
    taken: Vec<Attachment>,
}

fn docker_out(docker: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(docker)
        .args(args)
        .output()
        .with_context(|| format!("running {docker} {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "{docker} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ComposeExecutor {
    pub fn new(project: &str, service_prefix: &str) -> Result<Self> {
        ensure!(
            !project.is_empty()
                && project
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
            "--compose-project {project:?}: lowercase letters, digits, '-' and '_' (as Compose names projects)"
        );
        Ok(ComposeExecutor {
            project: project.to_string(),
            service_prefix: service_prefix.to_string(),
            docker: "docker".to_string(),
            taken: Vec::new(),
        })
    }

    fn docker(&self, args: &[&str]) -> Result<String> {
        docker_out(&self.docker, args)
    }

    /// The container of node `n`'s service (running or not).
    pub fn container(&self, n: NodeId) -> Result<String> {
        let service = format!("{}{n}", self.service_prefix);
        let out = self.docker(&[
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])?;
        let ids: Vec<&str> = out.split_whitespace().collect();
        match ids.as_slice() {
            [one] => Ok(one.to_string()),
            [] => bail!(
                "no container of service {service} in compose project {}: is the project up \
                 (`docker compose -p {} ps`)?",
                self.project,
                self.project
            ),
            many => bail!(
                "{} containers of service {service} in compose project {}: scale it to one",
                many.len(),
                self.project
            ),
        }
    }

    /// The networks node `n`'s container is attached to, as they are now.
    fn attachments(&self, n: NodeId) -> Result<Vec<Attachment>> {
        let c = self.container(n)?;
        let out = self.docker(&[
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            &c,
        ])?;
        let nets: BTreeMap<String, Value> = serde_json::from_str(out.trim())
            .with_context(|| format!("docker inspect of {c}: networks"))?;
        ensure!(
            !nets.is_empty(),
            "node {n}'s container {c} is on no network"
        );
        Ok(nets
            .into_iter()
            .map(|(network, v)| {
                // The configured address first (compose's ipv4_address).
                let ipv4 = v
                    .pointer("/IPAMConfig/IPv4Address")
                    .and_then(Value::as_str)
                    .or_else(|| v.get("IPAddress").and_then(Value::as_str))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                let short = &c[..c.len().min(12)];
                let aliases = v
                    .get("Aliases")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .filter(|s| *s != short)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                Attachment {
                    container: c.clone(),
                    network,
                    ipv4,
                    aliases,
                }
            })
            .collect())
    }
}

impl Executor for ComposeExecutor {
    fn name(&self) -> &'static str {
        "compose"
    }
    fn prepare(&mut self, scenario: &str) -> Result<()> {
        let _ = scenario;
        // Every member must be a container of the project before anything
        // is done (checked again per action).
        self.docker(&["version", "--format", "{{.Server.Version}}"])
            .context("the Docker daemon must answer")?;
        Ok(())
    }
    fn kill(&mut self, n: NodeId) -> Result<()> {
        let c = self.container(n)?;
        self.docker(&["kill", &c]).map(drop)
    }
    fn stop(&mut self, n: NodeId) -> Result<()> {
        let c = self.container(n)?;
        self.docker(&["stop", "-t", &STOP_GRACE_S.to_string(), &c])
            .map(drop)
    }
    fn start(&mut self, n: NodeId) -> Result<()> {
        let c = self.container(n)?;
        self.docker(&["start", &c]).map(drop)
    }
    fn partition(&mut self, isolated: &[NodeId], rest: &[NodeId]) -> Result<()> {
        let _ = rest;
        let mut all = Vec::new();
        for n in isolated {
            all.extend(self.attachments(*n)?);
        }
        for a in all {
            self.docker(&["network", "disconnect", "--force", &a.network, &a.container])?;
            self.taken.push(a);
        }
        Ok(())
    }
    fn heal_network(&mut self) -> Result<()> {
        while let Some(a) = self.taken.pop() {
            let mut args: Vec<String> = vec!["network".into(), "connect".into()];
            if let Some(ip) = &a.ipv4 {
                args.push("--ip".into());
                args.push(ip.clone());
            }
            for al in &a.aliases {
                args.push("--alias".into());
                args.push(al.clone());
            }
            args.push(a.network.clone());
            args.push(a.container.clone());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = self.docker(&refs) {
                self.taken.push(a);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for ComposeExecutor {
    /// A drill that stops half-way leaves no container cut off.
    fn drop(&mut self) {
        let _ = self.heal_network();
    }
}
