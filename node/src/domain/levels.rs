//! The cluster's op level: which log operations every member can apply.
//!
//! A build applies operations up to its [`BUILD_OP_LEVEL`]. The cluster's
//! level is replicated state (`Meta`/`cluster_level`, 1 when never set):
//! the leader raises it (`Op::SetClusterLevel`, `crate::cluster_level`)
//! only when every member reports a build level at least that high, and it
//! never goes down. An operation above the cluster's level is refused
//! with FEATURE_NOT_ENABLED before it is proposed ([`super::precheck`]) and
//! again, deterministically, when applied — so during a rolling upgrade no
//! member is ever sent an entry its build cannot decode.
//!
//! Levels: 1 is every operation up to `PrintInvoice` (and flat and ladder
//! tariffs), what builds of data format 7 before the gate apply; 2 adds
//! season billing (`BillSeason`, area tariffs), `RecordDrill`,
//! `RecordReconciliation` and `SetClusterLevel` itself; 3 adds log
//! entries that carry the leader's results (`types::Executed`,
//! `leader_exec`); 4 adds `IndexBankPayments` (the bank-day index
//! backfill). A new operation (or a change to what an existing one
//! writes, or to the entry format) takes the next level.
//!
//! Touches the `Meta` family only. Imports the ground floor only.

use billdb_api::error::ErrorCode;

use super::context::{Res, read, refuse, write};
use super::keys;
use super::ops::{Op, Outcome};
use super::payloads::TariffSpec;
use super::txn::{Family, Get, Txn};

/// The highest op level this build applies.
pub const BUILD_OP_LEVEL: u32 = 4;

/// The op level from which the leader replicates results (executed
/// entries) instead of commands.
pub const RESULTS_OP_LEVEL: u32 = 3;

/// The level of a cluster whose state never recorded one.
pub const BASE_OP_LEVEL: u32 = 1;

/// The op level a build needs to apply `op` (for `SetClusterLevel`, the
/// level it sets).
pub fn op_level(op: &Op) -> u32 {
    match op {
        Op::SetClusterLevel { level } => (*level).max(2),
        Op::BillSeason { .. }
        | Op::RecordDrill { .. }
        | Op::RecordReconciliation { .. }
        | Op::DefineTariff {
            tariff: TariffSpec::Area { .. },
            ..
        } => 2,
        Op::IndexBankPayments { .. } => 4,
        _ => BASE_OP_LEVEL,
    }
}

/// The cluster's op level in `view`.
pub fn cluster_level<G: Get + ?Sized>(view: &G) -> Result<u32, std::io::Error> {
    Ok(read::<_, u32>(view, Family::Meta, keys::META_CLUSTER_LEVEL)?.unwrap_or(BASE_OP_LEVEL))
}

/// The refusal of `op` at cluster level `level`, if it needs more.
/// `SetClusterLevel` is never refused here: it is what raises the level,
/// proposed only once every member applies it.
pub fn refusal(op: &Op, level: u32) -> Option<billdb_api::error::ApiError> {
    if let Op::SetClusterLevel { .. } = op {
        return None;
    }
    let needs = op_level(op);
    (needs > level).then(|| {
        billdb_api::error::ApiError::new(
            ErrorCode::FeatureNotEnabled,
            format!(
                "{} needs cluster op level {needs}; the cluster runs at level {level} until \
                 every member runs a build of level {needs} or later (the leader raises the \
                 level by itself within seconds of the last member's upgrade; \
                 `billdb cluster status` shows each member's level)",
                op.name()
            ),
        )
        .with_details(serde_json::json!({"needs_level": needs, "cluster_level": level}))
    })
}

/// The refusal of `op` in `view`'s state: reads the cluster's level only
/// when `op` needs more than the base level (the hot path reads nothing).
pub fn check<G: Get + ?Sized>(
    view: &G,
    op: &Op,
) -> Result<Option<billdb_api::error::ApiError>, std::io::Error> {
    if op_level(op) <= BASE_OP_LEVEL {
        return Ok(None);
    }
    Ok(refusal(op, cluster_level(view)?))
}

/// `SetClusterLevel`: raise the level (never lower it; the same level
/// again is a no-op answered with the level).
pub(crate) fn set<T: Txn>(txn: &mut T, level: u32) -> Res<Outcome> {
    let now = cluster_level(&*txn)?;
    if level < now {
        return refuse(
            ErrorCode::InvalidState,
            format!("the cluster op level is {now}; it never goes down (asked: {level})"),
        );
    }
    if level > now {
        write(txn, Family::Meta, keys::META_CLUSTER_LEVEL.to_vec(), &level)?;
    }
    Ok(Outcome::ClusterLevelSet {
        from: now,
        level: level.max(now),
    })
}
