//! billdb node: a Raft (openraft) replica of the billing database on
//! RocksDB, serving gRPC and HTTP. See ARCHITECTURE.md for the codemap.

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod cluster_level;
pub mod codec;
pub mod config;
pub mod domain;
pub mod failpoint_ack;
pub mod handover;
pub mod leader_exec;
pub mod listen;
pub mod log_limit;
pub mod log_purge;
pub mod metrics;
pub mod peer_auth;
pub mod peer_health;
pub mod proposer;
pub mod raft_net;
pub mod raft_service;
pub mod read_fence;
pub mod repair;
pub mod scrub;
pub mod server;
pub mod storage_guard;
pub mod store;
pub mod tls;
pub mod types;
