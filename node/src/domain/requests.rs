//! The exactly-once table (`requests` family): the [`RequestEntry`] stored
//! for each decided request_id, and reading it back: the stored outcome of
//! a request_id ([`request_outcome`]) and what a redelivery of a command
//! would answer ([`replayed`]). The dispatcher (`domain/mod.rs`) writes
//! the entries.
//!
//! Imports from the ground floor only (`txn`, `keys`, `ops`).

use serde::{Deserialize, Serialize};

use billdb_api::error::{ApiError, ErrorCode};

use super::keys;
use super::ops::{Op, Outcome};
use super::txn::{Family, Get};

/// The stored answer to a request_id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RequestEntry {
    pub(super) fingerprint: [u8; 32],
    pub(super) log_index: u64,
    pub(super) outcome: Outcome,
}

/// What applying a command whose request_id is already in the exactly-once
/// table gives, without applying it.
#[derive(Debug, Clone, PartialEq)]
pub enum Replay {
    /// The same payload: the original outcome and the log index it was
    /// decided at.
    Original { outcome: Outcome, log_index: u64 },
    /// A different payload under the same request_id: IDEMPOTENCY_CONFLICT.
    Conflict(ApiError),
}

/// `Some` when `request_id` was already applied: what
/// [`apply_indexed`](super::apply_indexed) would answer for (`request_id`,
/// `op`) now, and forever after — an entry
/// of the exactly-once table is written once, when its command is first
/// applied, and never changed or removed. So any replica that has applied
/// it may answer a redelivery from its own state, with no Raft round: the
/// answer is the one a replay through the log would give. `None`: not
/// applied here (yet); the command must go through the log.
pub fn replayed<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
    op: &Op,
) -> Result<Option<Replay>, std::io::Error> {
    replayed_with(view, request_id, op.fingerprint())
}

pub(super) fn replayed_with<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
    fingerprint: [u8; 32],
) -> Result<Option<Replay>, std::io::Error> {
    let Some(raw) = view.get(Family::Requests, &keys::request(request_id))? else {
        return Ok(None);
    };
    let prev: RequestEntry = keys::decode(&raw)?;
    Ok(Some(if prev.fingerprint == fingerprint {
        Replay::Original {
            outcome: prev.outcome,
            log_index: prev.log_index,
        }
    } else {
        Replay::Conflict(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!("request_id {request_id:?} was already used with a different payload"),
        ))
    }))
}

/// Look up the stored outcome of a request_id.
pub fn request_outcome<G: Get + ?Sized>(
    view: &G,
    request_id: &str,
) -> Result<Option<Outcome>, std::io::Error> {
    match view.get(Family::Requests, &keys::request(request_id))? {
        Some(raw) => Ok(Some(keys::decode::<RequestEntry>(&raw)?.outcome)),
        None => Ok(None),
    }
}
