//! billdb chaos suite: starts five real `billdb-node` processes, drives them
//! with concurrent clients over the HTTP API while nemeses kill, pause,
//! partition, wipe, restart and reconfigure them, records every operation,
//! and checks the history after healing (exactly-once, linearizability per
//! account, money, replica convergence). See ARCHITECTURE.md "Chaos suite".
//!
//! Module map: `history` (recorded operations), `linear` (Wing–Gong search),
//! `checker` (the checks), `lossy_fs` (a FUSE filesystem that drops
//! unsynced data at a simulated power loss), `net` (iptables partitions),
//! `nemesis` (faults and the seeded schedule), `workload` (clients), `run`
//! (the harness), `report` (table + JSON), `small_disk` (tmpfs data
//! directories for `disk-full`).

pub mod checker;
pub mod history;
pub mod linear;
pub mod lossy_fs;
pub mod nemesis;
/// Network partitions: the local cluster's loopback firewall, with the
/// chaos nodes' addresses (`127.0.1.N`).
pub mod net {
    pub use billdb_client::local::firewall::Firewall;

    /// Loopback prefix of chaos nodes: node N is `127.0.1.N`.
    pub const HOST_PREFIX: &str = "127.0.1.";

    /// The chain of a chaos run on `base_port`.
    pub fn new_firewall(base_port: u16) -> anyhow::Result<Firewall> {
        Firewall::new(&format!("BDBCHAOS{base_port}"), HOST_PREFIX)
    }
}
pub mod report;
pub mod run;
pub mod small_disk;
pub mod workload;
