//! The last failover drill per scenario, as the cluster knows it: `billdb
//! drill run` writes its summary as an ops command (`RecordDrill`) through
//! Raft, so every replica holds it and status shows it. One entry per
//! scenario in `domain_meta` under `drill/` ‖ scenario; a later drill of the
//! same scenario replaces it. Apply is a plain put of validated fields and
//! the command's own time and operator: deterministic.
//!
//! Imports the ground floor only ([`DrillSummary`], which `RecordDrill`
//! carries, is `payloads`', re-exported here).

use serde::{Deserialize, Serialize};

use super::context::{Ctx, Res, write};
use super::keys;
use super::ops::{Op, Outcome};
pub use super::payloads::DrillSummary;
use super::txn::{Family, ReadView, Txn};

/// Prefix of the drill keys in `domain_meta`.
pub const META_DRILL_PREFIX: &[u8] = b"drill/";

/// Most scenarios one listing returns (the scenarios are a short fixed list).
pub const DRILLS_MAX: usize = 64;

/// A stored drill: the summary plus when and by which token it was
/// recorded (the command's time and operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DrillEntry {
    pub summary: DrillSummary,
    pub recorded_ms: i64,
    pub recorded_by: String,
}

pub fn key(scenario: &str) -> Vec<u8> {
    let mut k = META_DRILL_PREFIX.to_vec();
    k.extend_from_slice(scenario.as_bytes());
    k
}

pub(crate) fn record<T: Txn>(txn: &mut T, ctx: &Ctx<'_>) -> Res<Outcome> {
    let Op::RecordDrill { summary } = &ctx.cmd.op else {
        return Err(std::io::Error::other("record_drill called with another op").into());
    };
    let entry = DrillEntry {
        summary: summary.as_ref().clone(),
        recorded_ms: ctx.ts(),
        recorded_by: ctx.cmd.operator.clone(),
    };
    write(txn, Family::Meta, key(&summary.scenario), &entry)?;
    Ok(Outcome::DrillRecorded {
        scenario: summary.scenario.clone(),
        recorded_ms: ctx.ts(),
    })
}

/// Every stored drill, by scenario name.
pub fn list<V: ReadView + ?Sized>(view: &V) -> Result<Vec<DrillEntry>, std::io::Error> {
    let end = keys::prefix_end(META_DRILL_PREFIX);
    view.scan(Family::Meta, META_DRILL_PREFIX, &end, false, DRILLS_MAX)?
        .into_iter()
        .map(|(_, v)| keys::decode(&v))
        .collect()
}
