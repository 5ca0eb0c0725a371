//! The balance report: how many accounts and what they hold (Σ balance,
//! and the debit and credit sides apart) per branch, utility or tariff,
//! over every account, from one read view. What a finance clerk asks for
//! the receivables, and what a migration compares with the legacy files'
//! totals (`billdb import legacy`). Reads only: touches the `accounts`
//! family through a [`ReadView`]. Imports the ground floor only.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use super::keys;
use super::model::Account;
use super::txn::{Family, ReadView, SCAN_LIMIT_MAX};

/// Most accounts one balance report reads (600,000 are expected; the
/// bound keeps one request's work finite whatever the store holds).
pub const BALANCE_ACCOUNTS_MAX: u64 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceGroup {
    Branch,
    Utility,
    Tariff,
}

impl BalanceGroup {
    pub fn name(self) -> &'static str {
        match self {
            BalanceGroup::Branch => "branch",
            BalanceGroup::Utility => "utility",
            BalanceGroup::Tariff => "tariff",
        }
    }
}

/// One group's accounts and money. `balance = credit - debit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BalanceLine {
    /// The branch, utility or tariff id.
    pub key: String,
    pub accounts: u64,
    /// Of which closed (frozen: their balance stays in the sums).
    pub closed: u64,
    /// Σ balance, exact.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "-1234.50")]
    pub balance: Decimal,
    /// Σ of the negative balances, as a positive amount (what is owed).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "2000.00")]
    pub debit: Decimal,
    /// Σ of the positive balances (credit held).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "765.50")]
    pub credit: Decimal,
}

impl BalanceLine {
    fn add(&mut self, balance: Decimal, closed: bool) -> Result<(), std::io::Error> {
        let sum = |a: Decimal, b: Decimal| {
            a.checked_add(b)
                .ok_or_else(|| std::io::Error::other("balance sum overflows"))
        };
        self.accounts += 1;
        self.closed += u64::from(closed);
        self.balance = sum(self.balance, balance)?;
        if balance.is_sign_negative() {
            self.debit = sum(self.debit, -balance)?;
        } else {
            self.credit = sum(self.credit, balance)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalanceReport {
    pub group_by: &'static str,
    /// One line per group, by key.
    pub lines: Vec<BalanceLine>,
    /// Every account (its key is "").
    pub total: BalanceLine,
}

/// The balance report over every account the view holds.
pub fn balance_report<V: ReadView + ?Sized>(
    view: &V,
    group_by: BalanceGroup,
) -> Result<BalanceReport, std::io::Error> {
    let mut lines: BTreeMap<String, BalanceLine> = BTreeMap::new();
    let mut total = BalanceLine::default();
    let mut start: Vec<u8> = Vec::new();
    loop {
        let rows = view.scan(Family::Accounts, &start, &[], false, SCAN_LIMIT_MAX)?;
        let got = rows.len();
        for (k, v) in rows {
            let a: Account = keys::decode(&v)?;
            let key = match group_by {
                BalanceGroup::Branch => &a.branch,
                BalanceGroup::Utility => &a.utility,
                BalanceGroup::Tariff => &a.tariff_id,
            };
            let line = lines.entry(key.clone()).or_insert_with(|| BalanceLine {
                key: key.clone(),
                ..BalanceLine::default()
            });
            line.add(a.balance, a.is_closed())?;
            total.add(a.balance, a.is_closed())?;
            start = k;
            start.push(0);
        }
        if got < SCAN_LIMIT_MAX {
            break;
        }
        if total.accounts >= BALANCE_ACCOUNTS_MAX {
            return Err(std::io::Error::other(format!(
                "more than {BALANCE_ACCOUNTS_MAX} accounts: the balance report stops"
            )));
        }
    }
    Ok(BalanceReport {
        group_by: group_by.name(),
        lines: lines.into_values().collect(),
        total,
    })
}
