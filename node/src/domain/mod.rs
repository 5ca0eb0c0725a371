//! The billing domain: what a committed [`Command`](crate::types::Command)
//! does to state. Plain functions over a [`Txn`]; they may not touch
//! RocksDB, the network, a clock or randomness, so that apply is
//! deterministic and unit-testable without a cluster.
//!
//! The storage layer calls [`apply`] once per log entry inside one write
//! batch; that call is the only boundary between Raft and billing.

mod accounts;
mod keys;
pub mod txn;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use accounts::Account;
use billdb_api::error::{ApiError, ErrorCode};
pub use txn::{Family, Txn};

use crate::types::Command;

/// Every domain column family, in a fixed order (snapshots, digests).
pub const FAMILIES: &[Family] = &[
    Family::Accounts,
    Family::Records,
    Family::Requests,
    Family::BankRefs,
];

/// What a client asked for, validated at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    OpenAccount {
        account_id: String,
        name: String,
        address: String,
        branch: String,
        utility: String,
        meter_id: String,
        tariff_id: String,
    },
    Payment {
        account_id: String,
        amount: Decimal,
        bank_code: String,
        bank_ref: String,
    },
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::OpenAccount { .. } => "open_account",
            Op::Payment { .. } => "payment",
        }
    }

    /// Fingerprint of the payload for exactly-once: same request_id with a
    /// different fingerprint is an IDEMPOTENCY_CONFLICT.
    pub fn fingerprint(&self) -> [u8; 32] {
        let bytes = bincode::serialize(self).unwrap_or_default();
        Sha256::digest(bytes).into()
    }
}

/// The result of a command, stored with its request_id and returned to
/// every retry of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    AccountOpened {
        account_id: String,
        opened_ms: i64,
    },
    PaymentPosted {
        account_id: String,
        record_seq: u64,
        amount: Decimal,
        balance: Decimal,
        invoice_no: String,
    },
    Refused(ApiError),
}

impl Outcome {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Outcome::AccountOpened {
                account_id,
                opened_ms,
            } => {
                serde_json::json!({"result":"account_opened","account_id":account_id,"opened_ms":opened_ms})
            }
            Outcome::PaymentPosted {
                account_id,
                record_seq,
                amount,
                balance,
                invoice_no,
            } => serde_json::json!({
                "result":"payment_posted","account_id":account_id,"seq":record_seq,
                "amount":amount.to_string(),"balance":balance.to_string(),"invoice_no":invoice_no}),
            Outcome::Refused(e) => serde_json::to_value(e).unwrap_or_default(),
        }
    }
}

/// The stored answer to a request_id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RequestEntry {
    fingerprint: [u8; 32],
    log_index: u64,
    outcome: Outcome,
}

/// Apply one committed command. Deterministic: the same state and command
/// always give the same writes and outcome. Errors are storage failures
/// only; a refused command is an `Ok(Outcome::Refused)` that writes nothing
/// but its request entry.
pub fn apply<T: Txn>(
    txn: &mut T,
    log_index: u64,
    cmd: &Command,
) -> Result<Outcome, std::io::Error> {
    let fingerprint = cmd.op.fingerprint();
    let req_key = keys::request(&cmd.request_id);
    if let Some(raw) = txn.get(Family::Requests, &req_key)? {
        let prev: RequestEntry = keys::decode(&raw)?;
        if prev.fingerprint == fingerprint {
            return Ok(prev.outcome);
        }
        return Ok(Outcome::Refused(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!(
                "request_id {:?} was already used with a different payload",
                cmd.request_id
            ),
        )));
    }
    let outcome = match &cmd.op {
        Op::OpenAccount { .. } => accounts::open(txn, cmd)?,
        Op::Payment { .. } => accounts::payment(txn, log_index, cmd)?,
    };
    let entry = RequestEntry {
        fingerprint,
        log_index,
        outcome: outcome.clone(),
    };
    txn.put(Family::Requests, req_key, keys::encode(&entry)?);
    Ok(outcome)
}

/// Look up the stored outcome of a request_id.
pub fn request_outcome<T: Txn>(
    txn: &T,
    request_id: &str,
) -> Result<Option<Outcome>, std::io::Error> {
    match txn.get(Family::Requests, &keys::request(request_id))? {
        Some(raw) => Ok(Some(keys::decode::<RequestEntry>(&raw)?.outcome)),
        None => Ok(None),
    }
}

pub fn get_account<T: Txn>(txn: &T, account_id: &str) -> Result<Option<Account>, std::io::Error> {
    accounts::get(txn, account_id)
}
