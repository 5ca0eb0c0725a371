//! Who may call the Raft port: every RPC there (votes, appends, snapshots,
//! leader transfer and requests forwarded by other nodes) is served only
//! when the connection's certificate names a node of this cluster that is a
//! member (voter or learner) in this node's current membership, which
//! includes a node being added by a membership change in flight. A node not
//! yet initialised (no membership) accepts any node of its cluster: that is
//! how the leader reaches a node being added.
//!
//! Refusals are `PERMISSION_DENIED`, logged once per (caller, reason) and
//! counted (`billdb_raft_rpc_refused_total{reason}`). Pure decisions plus
//! that log and counter; no I/O.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use billdb_api::identity::Identity;
use tonic::Status;

use crate::listen::PeerInfo;
use crate::types::NodeId;

/// (caller, reason) pairs remembered for log-once.
const LOGGED_MAX: usize = 1_024;

/// Why a Raft RPC was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No certificate identity (cannot happen on a TLS Raft port, which
    /// requires a certificate; kept for completeness).
    NoIdentity,
    /// A certificate of another cluster.
    OtherCluster,
    /// A client certificate, not a node's.
    NotANode,
    /// A node of this cluster that is not a member.
    NotAMember,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoIdentity => "no_identity",
            Refusal::OtherCluster => "other_cluster",
            Refusal::NotANode => "not_a_node",
            Refusal::NotAMember => "not_a_member",
        }
    }
}

/// The decision alone: `members` is `None` when this node has no membership
/// yet (not initialised).
pub fn decide(
    cluster_id: &str,
    identity: Option<&Identity>,
    members: Option<&BTreeSet<NodeId>>,
) -> Result<NodeId, Refusal> {
    match identity {
        None => Err(Refusal::NoIdentity),
        Some(Identity::Client { cluster, .. }) if cluster == cluster_id => Err(Refusal::NotANode),
        Some(Identity::Node { cluster, id }) if cluster == cluster_id => match members {
            None => Ok(*id),
            Some(m) if m.contains(id) => Ok(*id),
            Some(_) => Err(Refusal::NotAMember),
        },
        Some(_) => Err(Refusal::OtherCluster),
    }
}

pub struct PeerAuth {
    /// `None`: the Raft port is plaintext (`insecure.raft`): no checks.
    cluster_id: Option<String>,
    logged: Mutex<HashSet<(String, Refusal)>>,
}

impl PeerAuth {
    pub fn new(cluster_id: Option<String>) -> PeerAuth {
        PeerAuth {
            cluster_id,
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// Admit or refuse one RPC named `rpc` from the connection `info`.
    /// `members` is asked only when there is an identity to check. The
    /// caller's node id when admitted, `None` on a plaintext Raft port
    /// (nothing identifies the caller there).
    pub fn admit(
        &self,
        info: Option<&PeerInfo>,
        rpc: &'static str,
        members: impl FnOnce() -> Option<BTreeSet<NodeId>>,
    ) -> Result<Option<NodeId>, Status> {
        let Some(cluster_id) = &self.cluster_id else {
            return Ok(None);
        };
        let identity = info.and_then(|i| i.identity.as_ref());
        let members = identity.map(|_| members()).unwrap_or(None);
        match decide(cluster_id, identity, members.as_ref()) {
            Ok(id) => Ok(Some(id)),
            Err(why) => {
                metrics::counter!("billdb_raft_rpc_refused_total", "reason" => why.as_str())
                    .increment(1);
                let who = identity
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "(no certificate)".into());
                let first = {
                    let mut seen = self.logged.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.len() >= LOGGED_MAX {
                        seen.clear();
                    }
                    seen.insert((who.clone(), why))
                };
                if first {
                    tracing::warn!(
                        caller = %who,
                        remote = ?info.map(|i| i.remote),
                        rpc,
                        reason = why.as_str(),
                        "refused a Raft RPC (logged once per caller and reason)"
                    );
                }
                Err(Status::permission_denied(format!(
                    "{who} may not call the Raft port: {}",
                    why.as_str()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cluster: &str, id: u64) -> Identity {
        Identity::Node {
            cluster: cluster.into(),
            id,
        }
    }

    #[test]
    fn only_members_of_this_cluster_are_admitted() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        assert_eq!(decide("c1", Some(&node("c1", 2)), Some(&members)), Ok(2));
        assert_eq!(
            decide("c1", Some(&node("c1", 9)), Some(&members)),
            Err(Refusal::NotAMember)
        );
        assert_eq!(
            decide("c1", Some(&node("c2", 2)), Some(&members)),
            Err(Refusal::OtherCluster)
        );
        let client = Identity::Client {
            cluster: "c1".into(),
            name: "ops".into(),
        };
        assert_eq!(
            decide("c1", Some(&client), Some(&members)),
            Err(Refusal::NotANode)
        );
        assert_eq!(decide("c1", None, Some(&members)), Err(Refusal::NoIdentity));
        // Not initialised: any node of the cluster (the leader adding it).
        assert_eq!(decide("c1", Some(&node("c1", 9)), None), Ok(9));
        assert_eq!(
            decide("c1", Some(&node("c2", 9)), None),
            Err(Refusal::OtherCluster)
        );
    }

    #[test]
    fn a_plaintext_port_checks_nothing_and_a_tls_one_refuses_with_permission_denied() {
        let open = PeerAuth::new(None);
        assert!(open.admit(None, "vote", || None).is_ok());
        let checked = PeerAuth::new(Some("c1".into()));
        let info = PeerInfo {
            remote: "127.0.0.1:1".parse().unwrap(),
            identity: Some(node("c1", 7)),
            tls: true,
        };
        let e = checked
            .admit(Some(&info), "forward", || Some([1, 2].into()))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            checked
                .admit(Some(&info), "forward", || Some([7].into()))
                .is_ok()
        );
    }
}
