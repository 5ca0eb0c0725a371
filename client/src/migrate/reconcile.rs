//! The migration's reconciliation: per account, the legacy balance against
//! the balance its legacy records imply, the difference and its likely
//! causes; per branch, the legacy files' totals against billdb's after the
//! import. A difference is reported with its causes summing to it to the
//! cent, never absorbed. Pure: the caller feeds rows and billdb's answers.

use std::collections::BTreeMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

/// Most line numbers kept per account for a cause's detail.
const LINES_SHOWN_MAX: usize = 20;

/// What the reconciliation knows of one imported account.
#[derive(Debug, Clone, Default)]
pub struct AccountTally {
    pub branch: String,
    /// The account's tariff (empty record fields take it).
    pub tariff: String,
    pub area: Decimal,
    pub legacy_balance: Decimal,
    /// Σ balance effect of its imported records.
    pub implied: Decimal,
    /// Σ balance effect of its rejected records (those whose kind and
    /// amount could be read), and their lines.
    pub rejected_effect: Decimal,
    pub rejected_lines: Vec<u64>,
    /// The latest imported charge billed per m² (units > 0): amount, m²,
    /// line.
    pub last_area_charge: Option<(Decimal, Decimal, u64)>,
}

impl AccountTally {
    pub fn reject(&mut self, effect: Decimal, line: u64) {
        self.rejected_effect += effect;
        if self.rejected_lines.len() < LINES_SHOWN_MAX {
            self.rejected_lines.push(line);
        }
    }
}

/// One likely cause of an account's difference; an account's causes sum
/// to its difference exactly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    /// rejected_records | area_changed | edited_without_record
    pub cause: &'static str,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub account_id: String,
    pub branch: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub legacy_balance: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub implied_balance: Decimal,
    /// legacy_balance − implied_balance.
    #[serde(with = "rust_decimal::serde::str")]
    pub difference: Decimal,
    pub causes: Vec<Cause>,
}

fn lines(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The account's difference and its likely causes, or `None` when its
/// legacy balance is what its records imply.
pub fn explain(account_id: &str, t: &AccountTally) -> Option<Difference> {
    let difference = t.legacy_balance - t.implied;
    if difference.is_zero() {
        return None;
    }
    let mut causes = Vec::new();
    let mut rest = difference;
    if !t.rejected_effect.is_zero() {
        causes.push(Cause {
            cause: "rejected_records",
            amount: t.rejected_effect,
            detail: format!(
                "records.csv lines {} were rejected (see the rejects file) and move the balance by {}",
                lines(&t.rejected_lines),
                t.rejected_effect
            ),
        });
        rest -= t.rejected_effect;
    }
    if let Some((amount, billed_m2, line)) = t.last_area_charge
        && !rest.is_zero()
        && !billed_m2.is_zero()
        && t.area != billed_m2
    {
        let repriced = (t.area * amount / billed_m2)
            .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
        let delta = amount - repriced;
        if rest == delta {
            causes.push(Cause {
                cause: "area_changed",
                amount: delta,
                detail: format!(
                    "the charge at records.csv line {line} billed {billed_m2} m² for {amount}; \
                     the account now has {} m², whose charge is {repriced}: the legacy \
                     receivable was re-priced for the new area without a record",
                    t.area
                ),
            });
            rest = Decimal::ZERO;
        }
    }
    if !rest.is_zero() {
        causes.push(Cause {
            cause: "edited_without_record",
            amount: rest,
            detail: format!(
                "the legacy balance differs from what its records imply by {rest}, and no \
                 record explains it: a receivable edited directly"
            ),
        });
    }
    Some(Difference {
        account_id: account_id.to_string(),
        branch: t.branch.clone(),
        legacy_balance: t.legacy_balance,
        implied_balance: t.implied,
        difference,
        causes,
    })
}

/// Count and Σ amount of one kind of record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindTotal {
    pub count: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// One branch's accounts, Σ balance and records per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BranchTotals {
    pub accounts: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub records: BTreeMap<String, KindTotal>,
}

impl BranchTotals {
    pub fn add_account(&mut self, balance: Decimal) {
        self.accounts += 1;
        self.balance += balance;
    }
    pub fn add_record(&mut self, kind: &str, amount: Decimal) {
        let k = self.records.entry(kind.to_string()).or_default();
        k.count += 1;
        k.amount += amount;
    }
    pub fn remove_record(&mut self, kind: &str, amount: Decimal) {
        let k = self.records.entry(kind.to_string()).or_default();
        k.count = k.count.saturating_sub(1);
        k.amount -= amount;
        if k.count == 0 && k.amount.is_zero() {
            self.records.remove(kind);
        }
    }
    fn add(&mut self, o: &BranchTotals) {
        self.accounts += o.accounts;
        self.balance += o.balance;
        for (kind, t) in &o.records {
            let k = self.records.entry(kind.clone()).or_default();
            k.count += t.count;
            k.amount += t.amount;
        }
    }
}

/// One branch of the totals comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BranchCompare {
    pub branch: String,
    pub legacy: BranchTotals,
    pub billdb: BranchTotals,
    pub agree: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TotalsCompare {
    pub by_branch: Vec<BranchCompare>,
    pub overall: BranchCompare,
    /// Every branch and the overall totals agree exactly.
    pub agree: bool,
}

/// Legacy (imported rows) against billdb, per branch and overall.
pub fn compare(
    legacy: &BTreeMap<String, BranchTotals>,
    billdb: &BTreeMap<String, BranchTotals>,
) -> TotalsCompare {
    let mut branches: Vec<&String> = legacy.keys().chain(billdb.keys()).collect();
    branches.sort();
    branches.dedup();
    let mut by_branch = Vec::new();
    let mut all_legacy = BranchTotals::default();
    let mut all_billdb = BranchTotals::default();
    for b in branches {
        let l = legacy.get(b).cloned().unwrap_or_default();
        let d = billdb.get(b).cloned().unwrap_or_default();
        all_legacy.add(&l);
        all_billdb.add(&d);
        by_branch.push(BranchCompare {
            branch: b.clone(),
            agree: same(&l, &d),
            legacy: l,
            billdb: d,
        });
    }
    let overall = BranchCompare {
        branch: String::new(),
        agree: same(&all_legacy, &all_billdb),
        legacy: all_legacy,
        billdb: all_billdb,
    };
    let agree = overall.agree && by_branch.iter().all(|b| b.agree);
    TotalsCompare {
        by_branch,
        overall,
        agree,
    }
}

/// Equal to the cent: decimals compare by value (12.30 == 12.3).
fn same(a: &BranchTotals, b: &BranchTotals) -> bool {
    a.accounts == b.accounts
        && a.balance == b.balance
        && a.records.len() == b.records.len()
        && a.records.iter().all(|(k, t)| {
            b.records
                .get(k)
                .is_some_and(|u| u.count == t.count && u.amount == t.amount)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn no_difference_no_line_and_causes_sum_to_the_difference() {
        let mut t = AccountTally {
            branch: "B1".into(),
            area: d("90"),
            legacy_balance: d("-100.00"),
            implied: d("-100.00"),
            ..Default::default()
        };
        assert_eq!(explain("A", &t), None);
        // Area changed 87.3 → 90 m² at 25.50/m² (2226.15 → 2295.00) and
        // the legacy system re-priced the receivable without a record.
        t.last_area_charge = Some((d("2226.15"), d("87.3"), 7));
        t.legacy_balance = d("-100.00") - d("68.85");
        let diff = explain("A", &t).unwrap();
        assert_eq!(diff.difference, d("-68.85"));
        assert_eq!(diff.causes.len(), 1);
        assert_eq!(diff.causes[0].cause, "area_changed");
        // Plus an edit and a rejected payment of 50.
        t.legacy_balance -= d("3.10");
        t.reject(d("50.00"), 12);
        t.legacy_balance += d("50.00");
        let diff = explain("A", &t).unwrap();
        let kinds: Vec<_> = diff.causes.iter().map(|c| c.cause).collect();
        assert_eq!(kinds, ["rejected_records", "edited_without_record"]);
        let sum: Decimal = diff.causes.iter().map(|c| c.amount).sum();
        assert_eq!(sum, diff.difference);
    }

    #[test]
    fn totals_agree_only_when_every_branch_is_equal_to_the_cent() {
        let mut l = BTreeMap::new();
        let mut b1 = BranchTotals::default();
        b1.add_account(d("10.00"));
        b1.add_record("payment", d("10.00"));
        l.insert("B1".to_string(), b1.clone());
        let mut db = BTreeMap::new();
        db.insert("B1".to_string(), b1.clone());
        assert!(compare(&l, &db).agree);
        db.get_mut("B1")
            .unwrap()
            .records
            .get_mut("payment")
            .unwrap()
            .amount = d("10.01");
        let c = compare(&l, &db);
        assert!(!c.agree && !c.by_branch[0].agree && !c.overall.agree);
        db.insert("B1".to_string(), b1);
        db.insert(
            "B2".to_string(),
            BranchTotals {
                accounts: 1,
                ..Default::default()
            },
        );
        assert!(
            !compare(&l, &db).agree,
            "a branch billdb has and the files lack"
        );
    }
}
