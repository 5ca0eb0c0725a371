//! The `kubectl` executor: a drill's faults on the StatefulSet of
//! deploy/kubernetes (or one like it), through the `kubectl` CLI and its
//! current context.
//!
//! Node N is pod `{statefulset}-{N}` in `namespace` (the manifests number
//! the pods from 1, `ordinals.start: 1`, and a pod's index is its node id). A kill force-deletes the pod (no grace: a
//! power loss); a stop deletes it gracefully (its preStop hands leadership
//! away). The StatefulSet controller recreates a deleted pod at once, so
//! on Kubernetes a killed or stopped node comes back by itself: the
//! drill's "start" waits for the pod to be Ready again and the report
//! measures what the controller did. A partition applies a NetworkPolicy
//! `billdb-drill-partition` selecting the cut-off pods with no ingress and
//! no egress rule (they are cut from everyone, each other included: still
//! a minority); the heal deletes it. NetworkPolicies are enforced only by a
//! network plugin that implements them (Calico, Cilium, …): on one that
//! does not, a partition drill finds writes never interrupted and the
//! report shows no new leader.
//!
//! May touch: the pods of that StatefulSet and the one NetworkPolicy it
//! names; runs `kubectl` and nothing else.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use super::Executor;
use crate::local::NodeId;

/// The NetworkPolicy a partition applies.
pub const POLICY: &str = "billdb-drill-partition";

/// Seconds a node's pod may take to be Ready again.
pub const READY_TIMEOUT_S: u32 = 180;

pub struct KubectlExecutor {
    pub namespace: String,
    pub statefulset: String,
    /// The `kubectl` binary (default `kubectl` on PATH).
    pub kubectl: String,
    /// A policy is applied (deleted on heal, or when the drill stops).
    applied: bool,
}

/// A DNS-1123 label, as Kubernetes names namespaces and StatefulSets.
fn label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl KubectlExecutor {
    pub fn new(namespace: &str, statefulset: &str) -> Result<Self> {
        ensure!(
            label(namespace),
            "INVALID_ARGUMENT: --k8s-namespace {namespace:?} is not a Kubernetes name"
        );
        ensure!(
            label(statefulset),
            "INVALID_ARGUMENT: --k8s-statefulset {statefulset:?} is not a Kubernetes name"
        );
        Ok(KubectlExecutor {
            namespace: namespace.into(),
            statefulset: statefulset.into(),
            kubectl: "kubectl".into(),
            applied: false,
        })
    }

    /// Node `n`'s pod.
    pub fn pod(&self, n: NodeId) -> Result<String> {
        ensure!(n >= 1, "node id {n}: ids start at 1 (the pod's ordinal)");
        Ok(format!("{}-{n}", self.statefulset))
    }

    /// The arguments of each action (after `kubectl`), as run.
    pub fn kill_args(&self, n: NodeId) -> Result<Vec<String>> {
        Ok(self.ns(&[
            "delete",
            "pod",
            &self.pod(n)?,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]))
    }
    pub fn stop_args(&self, n: NodeId) -> Result<Vec<String>> {
        Ok(self.ns(&["delete", "pod", &self.pod(n)?, "--wait=true"]))
    }
    pub fn start_args(&self, n: NodeId) -> Result<Vec<String>> {
        Ok(self.ns(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{}", self.pod(n)?),
            &format!("--timeout={READY_TIMEOUT_S}s"),
        ]))
    }

    /// The NetworkPolicy cutting `isolated` off (the pods' names are the
    /// StatefulSet's own pod-name label).
    pub fn policy(&self, isolated: &[NodeId]) -> Result<Value> {
        let pods: Vec<String> = isolated
            .iter()
            .map(|n| self.pod(*n))
            .collect::<Result<_>>()?;
        Ok(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": POLICY,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/name": "billdb", "app.kubernetes.io/component": "drill"},
            },
            "spec": {
                "podSelector": {"matchExpressions": [{
                    "key": "statefulset.kubernetes.io/pod-name",
                    "operator": "In",
                    "values": pods,
                }]},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [],
            }
        }))
    }

    fn ns(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec!["-n".to_string(), self.namespace.clone()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn kubectl(&self, args: &[String], stdin: Option<&str>) -> Result<String> {
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {}", self.kubectl, args.join(" ")))?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(text.as_bytes())
                .context("writing to kubectl")?;
        }
        let out = child.wait_with_output().context("waiting for kubectl")?;
        ensure!(
            out.status.success(),
            "{} {} failed: {}",
            self.kubectl,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Executor for KubectlExecutor {
    fn name(&self) -> &'static str {
        "kubectl"
    }
    fn prepare(&mut self, scenario: &str) -> Result<()> {
        let _ = scenario;
        let args = self.ns(&["get", "statefulset", &self.statefulset, "-o", "name"]);
        self.kubectl(&args, None)
            .context("the StatefulSet must be reachable with kubectl's current context")?;
        Ok(())
    }
    fn kill(&mut self, n: NodeId) -> Result<()> {
        let a = self.kill_args(n)?;
        self.kubectl(&a, None).map(drop)
    }
    fn stop(&mut self, n: NodeId) -> Result<()> {
        let a = self.stop_args(n)?;
        self.kubectl(&a, None).map(drop)
    }
    fn start(&mut self, n: NodeId) -> Result<()> {
        // The controller recreates the pod; wait until it serves.
        let a = self.start_args(n)?;
        self.kubectl(&a, None).map(drop)
    }
    fn partition(&mut self, isolated: &[NodeId], rest: &[NodeId]) -> Result<()> {
        let _ = rest;
        let doc = serde_json::to_string(&self.policy(isolated)?)?;
        self.applied = true;
        let a = self.ns(&["apply", "-f", "-"]);
        self.kubectl(&a, Some(&doc)).map(drop)
    }
    fn heal_network(&mut self) -> Result<()> {
        if self.applied {
            let a = self.ns(&["delete", "networkpolicy", POLICY, "--ignore-not-found"]);
            self.kubectl(&a, None)?;
            self.applied = false;
        }
        Ok(())
    }
}

impl Drop for KubectlExecutor {
    /// A drill that stops half-way leaves no pod cut off.
    fn drop(&mut self) {
        let _ = self.heal_network();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_commands_and_the_policy() {
        let k = KubectlExecutor::new("billdb", "billdb").unwrap();
        assert_eq!(k.pod(1).unwrap(), "billdb-1");
        assert_eq!(k.pod(5).unwrap(), "billdb-5");
        assert!(k.pod(0).is_err());
        assert_eq!(
            k.kill_args(3).unwrap().join(" "),
            "-n billdb delete pod billdb-3 --grace-period=0 --force --wait=false"
        );
        assert_eq!(
            k.stop_args(3).unwrap().join(" "),
            "-n billdb delete pod billdb-3 --wait=true"
        );
        assert_eq!(
            k.start_args(3).unwrap().join(" "),
            "-n billdb wait --for=condition=Ready pod/billdb-3 --timeout=180s"
        );
        let p = k.policy(&[1, 2]).unwrap();
        assert_eq!(
            p["spec"]["podSelector"]["matchExpressions"][0]["values"],
            json!(["billdb-1", "billdb-2"])
        );
        assert_eq!(p["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert!(KubectlExecutor::new("Bad_NS", "billdb").is_err());
        assert!(KubectlExecutor::new("billdb", "-x").is_err());
    }
}
