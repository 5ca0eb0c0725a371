//! Ground floor: what every operation runs with. The execution context of
//! one command ([`Ctx`]: the command, its time, branch and channel), how an
//! operation fails ([`Fail`], [`Res`], [`refuse`]), typed point reads and
//! writes ([`read`], [`write`]), checked money arithmetic ([`add`],
//! [`sub`]) and the argument checks every operation shares (`check_id`,
//! `check_text`, `check_amount`).
//!
//! Imports from the ground floor only (`txn`, `keys`, `model`, `ops`).

use rust_decimal::Decimal;
use serde::Serialize;

use billdb_api::error::{ApiError, ErrorCode};

use super::keys;
use super::model::Account;
use super::ops::Op;
use super::txn::{Family, Get, Txn};
use crate::types::Command;

/// Why an operation did not produce an outcome: refused (a client-visible
/// code, nothing written) or a storage error.
#[derive(Debug)]
pub(crate) enum Fail {
    Io(std::io::Error),
    Refused(ApiError),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Io(e)
    }
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Fail::Refused(e)
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

pub(crate) fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Res<T> {
    Err(Fail::Refused(ApiError::new(code, message)))
}

/// What an operation knows about the command it runs for.
pub(crate) struct Ctx<'a> {
    pub cmd: &'a Command,
}

impl Ctx<'_> {
    pub fn ts(&self) -> i64 {
        self.cmd.ts_ms
    }
    /// The branch of the caller, or the account's branch when the caller
    /// has none (bank, app, ops).
    pub fn branch(&self, account: &Account) -> String {
        if self.cmd.branch.is_empty() {
            account.branch.clone()
        } else {
            self.cmd.branch.clone()
        }
    }
    /// The caller's channel, or the op's natural one.
    pub fn channel(&self) -> String {
        if !self.cmd.channel.is_empty() {
            return self.cmd.channel.clone();
        }
        match self.cmd.op {
            Op::Payment { .. } => "bank",
            Op::Import { .. } => "import",
            _ => "counter",
        }
        .to_string()
    }
}

/// Read a bincode value, if present.
pub(crate) fn read<G: Get + ?Sized, V: serde::de::DeserializeOwned>(
    view: &G,
    family: Family,
    key: &[u8],
) -> Result<Option<V>, std::io::Error> {
    match view.get(family, key)? {
        Some(raw) => Ok(Some(keys::decode(&raw)?)),
        None => Ok(None),
    }
}

pub(crate) fn write<T: Txn + ?Sized, V: Serialize>(
    txn: &mut T,
    family: Family,
    key: Vec<u8>,
    value: &V,
) -> Result<(), std::io::Error> {
    txn.put(family, key, keys::encode(value)?);
    Ok(())
}

/// Checked money arithmetic: an overflow is a refusal, never a panic.
pub(crate) fn add(a: Decimal, b: Decimal) -> Res<Decimal> {
    match a.checked_add(b) {
        Some(v) => Ok(v),
        None => refuse(ErrorCode::ArithmeticOverflow, "amount out of range"),
    }
}

pub(crate) fn sub(a: Decimal, b: Decimal) -> Res<Decimal> {
    match a.checked_sub(b) {
        Some(v) => Ok(v),
        None => refuse(ErrorCode::ArithmeticOverflow, "amount out of range"),
    }
}

/// A short free-text field (reason, name, ...): bounded, no control chars.
pub(crate) fn check_text(field: &str, v: &str) -> Res<()> {
    if v.chars().count() > 200 || v.chars().any(char::is_control) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("{field}: at most 200 characters, no control characters"),
        );
    }
    Ok(())
}

/// An identifier: 1..=64 bytes, no control characters.
pub(crate) fn check_id(field: &str, v: &str) -> Res<()> {
    if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!("{field}: must be 1..=64 bytes without control characters"),
        );
    }
    Ok(())
}

/// A positive money amount (2 dp, within limits).
pub(crate) fn check_amount(v: Decimal) -> Res<Decimal> {
    billdb_api::money::validate_amount(v).map_err(|e| Fail::Refused(e.into()))
}
