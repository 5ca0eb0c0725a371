//! Client-facing surfaces: gRPC (`billdb.v1`) and HTTP/JSON. Both parse and
//! validate input, then call the same [`crate::app::App`] methods, so they
//! share semantics and error codes. No storage or Raft internals here.

pub mod bank;
pub mod grpc;
pub mod grpc_discovery;
pub mod http;
pub mod openapi;
pub mod ops;
pub mod season;
pub mod status;
pub mod validate;
