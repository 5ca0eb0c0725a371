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
//! node-replace: the old node's container and its data volume are removed
//! (its disk is lost); the new node gets a certificate from the
//! deployment's CA (`<secrets>/ca`, beside the `<secrets>/node/<id>`
//! directory the old container mounted; owned like the old node's files),
//! and a container like the old one (image, environment with the new
//! `BILLDB_NODE_ID`, user, read-only root, the old address and network, a
//! new data volume `<project>_data<id>`, the Compose labels of service
//! `{prefix}<id>`), listening on the image's ports (HTTP 7001, gRPC 7101,
//! Raft 7201).
//!
//! May touch: only the containers of that project it is asked to fault,
//! their network attachments and, for node-replace, the old node's data
//! volume and a new node's directory under the secrets; runs `docker`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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

/// The image's listeners (deploy/container/node.toml).
pub const HTTP_PORT: u16 = 7001;
pub const GRPC_PORT: u16 = 7101;
pub const RAFT_PORT: u16 = 7201;

pub struct ComposeExecutor {
    pub project: String,
    pub service_prefix: String,
    /// The cluster id the certificates name (node-replace).
    pub cluster_id: Option<String>,
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
            cluster_id: None,
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
    fn provision(&mut self, old: NodeId, new: NodeId) -> Result<crate::admin::NodeAddrs> {
        self.replace_node(old, new)
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

impl ComposeExecutor {
    /// node-replace: see the module's doc.
    fn replace_node(&mut self, old: NodeId, new: NodeId) -> Result<crate::admin::NodeAddrs> {
        let cluster_id = self
            .cluster_id
            .clone()
            .context("node-replace: the cluster id its certificates name is not given")?;
        let c = self.container(old)?;
        let out = self.docker(&["inspect", &c])?;
        let v: Value = serde_json::from_str(&out).context("docker inspect JSON")?;
        let info = v.get(0).context("docker inspect: no container")?;
        let image = info
            .pointer("/Config/Image")
            .and_then(Value::as_str)
            .context("the old container's image")?
            .to_string();
        let user = info
            .pointer("/Config/User")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let read_only = info
            .pointer("/HostConfig/ReadonlyRootfs")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let env: Vec<String> = info
            .pointer("/Config/Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mounts = info
            .get("Mounts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mount = |dest: &str| mounts.iter().find(|m| m["Destination"] == dest).cloned();
        let data =
            mount("/var/lib/billdb").context("the old container has no /var/lib/billdb volume")?;
        let tls =
            mount("/etc/billdb/tls").context("the old container has no /etc/billdb/tls mount")?;
        let old_volume = data["Name"].as_str().unwrap_or("").to_string();
        let old_tls = PathBuf::from(tls["Source"].as_str().context("TLS mount source")?);
        let secrets = old_tls
            .parent()
            .and_then(Path::parent)
            .context("the TLS mount is not <secrets>/node/<id>")?
            .to_path_buf();
        let att = self
            .attachments(old)?
            .into_iter()
            .next()
            .context("the old container's network")?;
        let ip = att.ipv4.clone().context("the old container's address")?;

        // Its disk is lost: the container and its data volume go.
        self.docker(&["rm", "-f", &c])?;
        if !old_volume.is_empty() {
            self.docker(&["volume", "rm", "-f", &old_volume])?;
        }

        // The new node's own files: the CA, the tokens, its certificate.
        let dir = secrets.join("node").join(new.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in ["ca.pem", "tokens.toml"] {
            std::fs::copy(old_tls.join(f), dir.join(f))
                .with_context(|| format!("copying {f} from {}", old_tls.display()))?;
        }
        let ca = crate::certs::read_ca(&secrets.join("ca"))
            .context("node-replace needs the deployment's CA (<secrets>/ca)")?;
        let hosts = vec![
            ip.clone(),
            format!("{}{new}", self.service_prefix),
            "127.0.0.1".to_string(),
        ];
        let leaf = crate::certs::node_cert(&ca, &cluster_id, new, &hosts)?;
        crate::certs::write_leaf(&dir, &format!("node{new}"), &leaf)?;
        {
            use std::os::unix::fs::MetadataExt;
            let owner =
                std::fs::metadata(old_tls.join("ca.pem")).context("the old node's files")?;
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid()))
                    .with_context(|| format!("chown {}", p.display()))?;
            }
            std::os::unix::fs::chown(&dir, Some(owner.uid()), Some(owner.gid()))?;
        }

        // A container like the old one.
        let service = format!("{}{new}", self.service_prefix);
        let name = format!("{}-{service}-1", self.project);
        let volume = format!("{}_data{new}", self.project);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name,
            "--hostname".into(),
            service.clone(),
            "--network".into(),
            att.network.clone(),
            "--ip".into(),
            ip.clone(),
            "--network-alias".into(),
            service.clone(),
            "--restart".into(),
            "unless-stopped".into(),
            "--label".into(),
            format!("com.docker.compose.project={}", self.project),
            "--label".into(),
            format!("com.docker.compose.service={service}"),
            "-v".into(),
            format!("{volume}:/var/lib/billdb"),
            "-v".into(),
            format!("{}:/etc/billdb/tls:ro", dir.display()),
        ];
        if read_only {
            args.push("--read-only".into());
        }
        if !user.is_empty() {
            args.push("--user".into());
            args.push(user);
        }
        for e in env {
            args.push("-e".into());
            if e.starts_with("BILLDB_NODE_ID=") {
                args.push(format!("BILLDB_NODE_ID={new}"));
            } else {
                args.push(e);
            }
        }
        args.push(image);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker(&refs)?;

        // Up when its HTTP port takes connections.
        let http: std::net::SocketAddr = format!("{ip}:{HTTP_PORT}")
            .parse()
            .with_context(|| format!("address {ip}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect_timeout(&http, Duration::from_millis(500)).is_err() {
            if Instant::now() >= deadline {
                bail!("node {new}'s container does not listen on {http} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(crate::admin::NodeAddrs {
            id: new,
            raft_addr: format!("{ip}:{RAFT_PORT}"),
            grpc_addr: format!("{ip}:{GRPC_PORT}"),
            http_addr: format!("{ip}:{HTTP_PORT}"),
        })
    }
}

impl Drop for ComposeExecutor {
    /// A drill that stops half-way leaves no container cut off.
    fn drop(&mut self) {
        let _ = self.heal_network();
    }
}
