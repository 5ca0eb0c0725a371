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
pub mod net;
pub mod report;
pub mod run;
pub mod small_disk;
pub mod workload;
