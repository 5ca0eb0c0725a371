//! billdb wire types: the protobuf (gRPC) messages and services, and the
//! domain types shared by the server, the client and the tools.
//!
//! This crate does no I/O.

/// Client-facing gRPC API, version 1 (`billdb.v1`): cluster administration,
/// and the billing service answering JSON strings (kept for one release
/// beside [`pb2`]).
pub mod pb {
    tonic::include_proto!("billdb.v1");
}

/// Client-facing gRPC API, version 2 (`billdb.v2`): the billing service with
/// one typed reply per operation.
pub mod pb2 {
    tonic::include_proto!("billdb.v2");
}

/// The encoded `FileDescriptorSet` of the client API (`billdb.v1` and
/// `billdb.v2`), served by the node's gRPC reflection so a client with no
/// .proto file can list and call every RPC, and read by [`v2json`].
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("billdb_client_descriptor");

pub mod v2json;

/// Node-to-node Raft transport (`billdb.raft.v1`).
pub mod raftpb {
    tonic::include_proto!("billdb.raft.v1");
}

pub mod error;
pub mod identity;

/// gRPC response metadata naming the leader: `"<node id> <grpc addr>"`.
/// Clients send their next request there and skip the forwarding hop.
pub const LEADER_METADATA: &str = "billdb-leader";

pub mod money;
pub mod statement;
pub mod tariff;

/// The branch of failover-drill accounts (`billdb drill run`): their
/// records are kept out of business reports unless asked for.
pub const DRILL_BRANCH: &str = "DRILL";

/// Test-only fault points of `billdb-node`, named here once for the node
/// and the harnesses that drive it (`LocalCluster`, chaos, tests).
pub mod failpoints {
    /// Environment variable that turns the fault points on (`1`). Off, a
    /// node never looks for them.
    pub const ENV: &str = "BILLDB_FAILPOINTS";
    /// While a file of this name exists in a node's data directory, its
    /// WAL fsyncs (and so its log appends' completions) wait.
    pub const FSYNC_PAUSE_FILE: &str = "failpoint-wal-fsync-pause";
    /// When a file of this name exists in a node's data directory, its
    /// next WAL fsync fails as a disk's EIO would (the file is removed:
    /// one failure).
    pub const FSYNC_ERROR_FILE: &str = "failpoint-wal-fsync-error";
    /// While a file of this name exists in a node's data directory, each
    /// snapshot the node receives waits the milliseconds the file holds
    /// before it is installed (a slow transfer, as of a large state over a
    /// slow link).
    pub const SNAPSHOT_INSTALL_DELAY_FILE: &str = "failpoint-snapshot-install-delay-ms";
    /// When a file of this name exists in a node's data directory, the
    /// next snapshot transfer the node receives breaks off once it holds
    /// at least the number of bytes the file says (the file is removed:
    /// one break), as a link that drops mid-transfer.
    pub const SNAPSHOT_RECEIVE_BREAK_FILE: &str = "failpoint-snapshot-receive-break-after-bytes";
    /// While a file of this name exists in a node's data directory, a
    /// scheduled backup the node has claimed waits (its claim renewed)
    /// before it starts: a test can kill the node in the middle of one.
    pub const BACKUP_PAUSE_FILE: &str = "failpoint-backup-pause";
    /// When a file of this name exists in a node's data directory, the
    /// next client write this node receives whose request_id ends with
    /// the file's content is answered as if applied but never written (the
    /// file is then renamed to [`ACK_WITHOUT_WRITE_FIRED_FILE`], holding
    /// the request_id): an acknowledged write lost, so a test proves the
    /// drill verifier reports one.
    pub const ACK_WITHOUT_WRITE_FILE: &str = "failpoint-ack-without-write";
    /// See [`ACK_WITHOUT_WRITE_FILE`].
    pub const ACK_WITHOUT_WRITE_FIRED_FILE: &str = "failpoint-ack-without-write.fired";
}
