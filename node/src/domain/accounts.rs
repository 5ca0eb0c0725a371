//! Accounts and payments.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use billdb_api::error::{ApiError, ErrorCode};

use super::keys;
use super::txn::{Family, Txn};
use super::{Op, Outcome};
use crate::types::Command;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub account_id: String,
    pub name: String,
    pub address: String,
    pub branch: String,
    pub utility: String,
    pub meter_id: String,
    pub tariff_id: String,
    pub status: String,
    pub balance: Decimal,
    pub opened_ms: i64,
    /// Sequence number of the account's newest record (0: none yet).
    pub last_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub account_id: String,
    pub seq: u64,
    pub kind: String,
    pub amount: Decimal,
    pub operator_id: String,
    pub channel: String,
    pub request_id: String,
    pub ts_ms: i64,
    pub invoice_no: String,
    pub bank_code: String,
    pub bank_ref: String,
}

pub fn get<T: Txn>(txn: &T, account_id: &str) -> Result<Option<Account>, std::io::Error> {
    match txn.get(Family::Accounts, &keys::account(account_id))? {
        Some(raw) => Ok(Some(keys::decode(&raw)?)),
        None => Ok(None),
    }
}

pub fn open<T: Txn>(txn: &mut T, cmd: &Command) -> Result<Outcome, std::io::Error> {
    let Op::OpenAccount {
        account_id,
        name,
        address,
        branch,
        utility,
        meter_id,
        tariff_id,
    } = &cmd.op
    else {
        return Err(std::io::Error::other("open called with another op"));
    };
    if get(txn, account_id)?.is_some() {
        return Ok(Outcome::Refused(ApiError::new(
            ErrorCode::AccountExists,
            format!("account {account_id:?} already exists (account ids are never reused)"),
        )));
    }
    let account = Account {
        account_id: account_id.clone(),
        name: name.clone(),
        address: address.clone(),
        branch: branch.clone(),
        utility: utility.clone(),
        meter_id: meter_id.clone(),
        tariff_id: tariff_id.clone(),
        status: "active".to_string(),
        balance: Decimal::ZERO,
        opened_ms: cmd.ts_ms,
        last_seq: 0,
    };
    txn.put(
        Family::Accounts,
        keys::account(account_id),
        keys::encode(&account)?,
    );
    Ok(Outcome::AccountOpened {
        account_id: account_id.clone(),
        opened_ms: cmd.ts_ms,
    })
}

pub fn payment<T: Txn>(
    txn: &mut T,
    log_index: u64,
    cmd: &Command,
) -> Result<Outcome, std::io::Error> {
    let Op::Payment {
        account_id,
        amount,
        bank_code,
        bank_ref,
    } = &cmd.op
    else {
        return Err(std::io::Error::other("payment called with another op"));
    };
    let ref_key = keys::bank_ref(bank_code, bank_ref);
    if let Some(raw) = txn.get(Family::BankRefs, &ref_key)? {
        let original_request: String = keys::decode(&raw)?;
        return Ok(Outcome::Refused(
            ApiError::new(
                ErrorCode::DuplicatePayment,
                format!("bank {bank_code} reference {bank_ref} was already posted"),
            )
            .with_details(serde_json::json!({"original_request_id": original_request})),
        ));
    }
    let Some(mut account) = get(txn, account_id)? else {
        return Ok(Outcome::Refused(ApiError::new(
            ErrorCode::AccountNotFound,
            format!("no account {account_id:?}"),
        )));
    };
    if account.status == "closed" {
        return Ok(Outcome::Refused(ApiError::new(
            ErrorCode::AccountClosed,
            format!("account {account_id:?} is closed"),
        )));
    }
    let Some(balance) = account.balance.checked_add(*amount) else {
        return Ok(Outcome::Refused(ApiError::new(
            ErrorCode::AmountOverLimit,
            "balance would overflow",
        )));
    };
    account.balance = balance;
    account.last_seq += 1;
    let invoice_no = format!("INV{log_index:012}");
    let record = Record {
        account_id: account_id.clone(),
        seq: account.last_seq,
        kind: "payment".to_string(),
        amount: *amount,
        operator_id: cmd.operator.clone(),
        channel: "bank".to_string(),
        request_id: cmd.request_id.clone(),
        ts_ms: cmd.ts_ms,
        invoice_no: invoice_no.clone(),
        bank_code: bank_code.clone(),
        bank_ref: bank_ref.clone(),
    };
    txn.put(
        Family::Records,
        keys::record(account_id, cmd.ts_ms, record.seq),
        keys::encode(&record)?,
    );
    txn.put(
        Family::Accounts,
        keys::account(account_id),
        keys::encode(&account)?,
    );
    txn.put(Family::BankRefs, ref_key, keys::encode(&cmd.request_id)?);
    Ok(Outcome::PaymentPosted {
        account_id: account_id.clone(),
        record_seq: record.seq,
        amount: *amount,
        balance,
        invoice_no,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{apply, txn::MemTxn};
    use std::str::FromStr;

    fn cmd(request_id: &str, op: Op) -> Command {
        Command {
            request_id: request_id.into(),
            ts_ms: 1_700_000_000_000,
            operator: "bank:ICBC".into(),
            op,
        }
    }
    fn open_op(id: &str) -> Op {
        Op::OpenAccount {
            account_id: id.into(),
            name: "n".into(),
            address: "a".into(),
            branch: "b1".into(),
            utility: "heat".into(),
            meter_id: "m".into(),
            tariff_id: "t".into(),
        }
    }
    fn pay(id: &str, amount: &str, bank_ref: &str) -> Op {
        Op::Payment {
            account_id: id.into(),
            amount: Decimal::from_str(amount).unwrap(),
            bank_code: "ICBC".into(),
            bank_ref: bank_ref.into(),
        }
    }

    #[test]
    fn payment_is_exactly_once_by_request_and_bank_ref() {
        let mut t = MemTxn::default();
        assert!(matches!(
            apply(&mut t, 1, &cmd("r1", open_op("A1"))).unwrap(),
            Outcome::AccountOpened { .. }
        ));
        let first = apply(&mut t, 2, &cmd("r2", pay("A1", "10.50", "X1"))).unwrap();
        assert!(matches!(
            first,
            Outcome::PaymentPosted { record_seq: 1, .. }
        ));
        // Retry with the same request id: the original outcome, nothing new.
        assert_eq!(
            apply(&mut t, 3, &cmd("r2", pay("A1", "10.50", "X1"))).unwrap(),
            first
        );
        // Same request id, other payload: conflict.
        let Outcome::Refused(e) = apply(&mut t, 4, &cmd("r2", pay("A1", "99.00", "X1"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::IdempotencyConflict);
        // Same bank reference under a new request id: refused.
        let Outcome::Refused(e) = apply(&mut t, 5, &cmd("r3", pay("A1", "10.50", "X1"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::DuplicatePayment);
        let acct = get(&t, "A1").unwrap().unwrap();
        assert_eq!(acct.balance, Decimal::from_str("10.50").unwrap());
        assert_eq!(acct.last_seq, 1);
    }

    #[test]
    fn refusals_change_nothing_but_the_request_entry() {
        let mut t = MemTxn::default();
        apply(&mut t, 1, &cmd("r1", open_op("A1"))).unwrap();
        let Outcome::Refused(e) = apply(&mut t, 2, &cmd("r2", open_op("A1"))).unwrap() else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::AccountExists);
        let Outcome::Refused(e) = apply(&mut t, 3, &cmd("r3", pay("NOPE", "1.00", "Y"))).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::AccountNotFound);
        let non_request: Vec<_> = t
            .data
            .keys()
            .filter(|(f, _)| *f != Family::Requests)
            .collect();
        assert_eq!(
            non_request.len(),
            1,
            "only the one account exists: {non_request:?}"
        );
    }
}
