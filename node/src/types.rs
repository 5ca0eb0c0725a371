//! The Raft type configuration and the envelope types that cross the Raft
//! log: a [`Batch`] of [`Command`]s (what clients asked, with leader-fixed
//! time; the leader carries concurrent commands in one entry) and the
//! [`BatchReply`] (what applying each produced).
//!
//! Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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
///
/// `executed` holds what the leader decided for them (`leader_exec`): each
/// command's reply and the batch's sorted write set. A replica with it
/// writes the write set and runs no domain code (`store::apply_results`);
/// one without it (entries from before op level 3, or a cluster set to
/// replicate commands) executes the commands itself.
///
/// Both parts are shared, not copied, when an entry is cloned: openraft
/// clones each entry for every replication stream and for apply, and the
/// log's entry cache hands out clones (a deep copy of the commands and the
/// write set was about 4 % of a node's CPU at 64 clients).
///
/// Encoding: a batch without `executed` encodes exactly as data format 7
/// wrote batches (the command count, then the commands), so old log
/// entries decode unchanged; one with it starts with
/// [`EXECUTED_BATCH_MARK`], a count no batch can have. Only a cluster at
/// op level 3 proposes those, so no older build is ever sent one.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub commands: Arc<Vec<Command>>,
    pub executed: Option<Arc<Executed>>,
}

impl Batch {
    /// Commands to be executed by every replica.
    pub fn of(commands: Vec<Command>) -> Batch {
        Batch {
            commands: Arc::new(commands),
            executed: None,
        }
    }

    /// A batch the leader executed (`leader_exec`).
    pub fn executed(commands: Vec<Command>, executed: Executed) -> Batch {
        Batch {
            commands: Arc::new(commands),
            executed: Some(Arc::new(executed)),
        }
    }

    /// The commands, moved out when this is the only holder (a batch the
    /// proposer just formed), copied otherwise.
    pub fn into_commands(self) -> Vec<Command> {
        Arc::try_unwrap(self.commands).unwrap_or_else(|shared| (*shared).clone())
    }
}

/// What the leader decided for one batch (op level 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    /// The leader's execution sequence number (per leader process, rising):
    /// the leader drops this entry's write set from its pending view once
    /// it is applied (`leader_exec`).
    pub seq: u64,
    /// The leader's execution epoch (per leader process, rising; a new one
    /// after every barrier) and the sequence of the entry of the same
    /// epoch executed just before this one (0: the first of its epoch,
    /// executed on everything before it applied). The write set is valid
    /// only on the state that entry left (`store::apply_results`).
    pub epoch: u64,
    pub prev: u64,
    /// One per command, in order.
    pub replies: Vec<crate::domain::ExecReply>,
    /// Every domain write of the batch except the exactly-once table (which
    /// every replica derives from `replies` and the entry's index), in
    /// family then key order; `None` deletes.
    #[allow(clippy::type_complexity)]
    #[serde(with = "crate::codec::write_set")]
    pub writes: Vec<(crate::domain::Family, Vec<u8>, Option<Vec<u8>>)>,
}

/// The first varint of an executed batch's encoding: read as a command
/// count it is far beyond any entry's bound, so an older decoder refuses it.
pub const EXECUTED_BATCH_MARK: u64 = u64::MAX;

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        match &self.executed {
            None => {
                let mut t = s.serialize_tuple(1 + self.commands.len())?;
                t.serialize_element(&(self.commands.len() as u64))?;
                for c in self.commands.iter() {
                    t.serialize_element(c)?;
                }
                t.end()
            }
            Some(e) => {
                let mut t = s.serialize_tuple(3)?;
                t.serialize_element(&EXECUTED_BATCH_MARK)?;
                t.serialize_element(&*self.commands)?;
                t.serialize_element(&**e)?;
                t.end()
            }
        }
    }
}

/// Most commands a decoded batch may claim (far above `batch_commands_max`).
const BATCH_COMMANDS_DECODE_MAX: u64 = 1 << 20;

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Batch, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a batch of commands")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Batch, A::Error> {
                use serde::de::Error;
                let head: u64 = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::custom("an empty batch"))?;
                if head == EXECUTED_BATCH_MARK {
                    let commands: Vec<Command> = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::custom("an executed batch without commands"))?;
                    let executed: Executed = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::custom("an executed batch without results"))?;
                    return Ok(Batch::executed(commands, executed));
                }
                if head > BATCH_COMMANDS_DECODE_MAX {
                    return Err(A::Error::custom(format!("a batch of {head} commands")));
                }
                let mut commands = Vec::with_capacity(head as usize);
                for _ in 0..head {
                    commands.push(
                        seq.next_element()?
                            .ok_or_else(|| A::Error::custom("a batch cut short"))?,
                    );
                }
                Ok(Batch::of(commands))
            }
        }
        // bincode reads a tuple element by element; the visitor stops where
        // the batch ends (the count says how many commands follow).
        d.deserialize_tuple(usize::MAX, V)
    }
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
