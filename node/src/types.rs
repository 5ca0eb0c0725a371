//! The Raft type configuration and the envelope types that cross the Raft
//! log: a [`Batch`] of [`Command`]s (what clients asked, with leader-fixed
//! time; the leader carries concurrent commands in one entry) and the
//! [`BatchReply`] (what applying each produced).
//!
//! Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{Op, Outcome};

pub type NodeId = u64;

/// Where a member listens. Stored in the Raft membership, so every node can
/// find every other node's Raft, gRPC and HTTP endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub raft_addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} grpc={} http={}",
            self.raft_addr, self.grpc_addr, self.http_addr
        )
    }
}

/// One replicated command. `ts_ms` is fixed by the leader before proposing:
/// apply never reads a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub request_id: String,
    pub ts_ms: i64,
    /// Who asked (from the caller's credentials, never from the body).
    pub operator: String,
    /// The caller's branch (counter credentials); empty: the account's.
    pub branch: String,
    /// counter | bank | app | import; empty: the op's natural channel.
    pub channel: String,
    pub op: Op,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} {})", self.request_id, self.op.name())
    }
}

/// The payload of one normal log entry: the commands the leader proposed
/// together (group commit), applied in order. Never empty when proposed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub commands: Vec<Command>,
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.commands.as_slice() {
            [one] => write!(f, "Batch[{one}]"),
            many => write!(f, "Batch[{} commands]", many.len()),
        }
    }
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReply {
    pub outcome: Outcome,
    /// The log index the outcome was decided at: an earlier entry's when the
    /// request_id was a replay.
    pub decided_at: u64,
}

/// The result of applying one log entry: one reply per command of its
/// batch, in order (none for blank and membership entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BatchReply {
    pub replies: Vec<CommandReply>,
}

openraft::declare_raft_types!(
    /// billdb's Raft types: u64 node ids, [`NodeInfo`] addresses, [`Batch`] entries.
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = NodeId,
        Node = NodeInfo,
);

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;

/// Member id → addresses, ordered.
pub type Nodes = BTreeMap<NodeId, NodeInfo>;
