//! What every chaos test asserts of a finished run.

use billdb_chaos::report::RunReport;

/// Every fault done and undone; nothing acknowledged lost or doubled, no
/// exactly-once anomaly, every account linearizable and checked, money
/// balanced, replicas converged, no other problem, and the run passed.
pub fn assert_every_promise_kept(rep: &RunReport, accounts: usize, table: &str) {
    let errors: Vec<_> = rep.events.iter().filter_map(|e| e.error.clone()).collect();
    assert!(
        errors.is_empty(),
        "faults not done/undone: {errors:?}\n{table}"
    );
    assert!(rep.records.lost.is_empty(), "lost: {:?}", rep.records.lost);
    assert!(
        rep.records.duplicated.is_empty(),
        "duplicated: {:?}",
        rep.records.duplicated
    );
    assert!(
        rep.records.anomalies.is_empty(),
        "anomalies: {:?}",
        rep.records.anomalies
    );
    assert!(
        rep.linearizability_problems.is_empty(),
        "not linearizable / undecided: {:?}",
        rep.linearizability_problems
    );
    assert_eq!(rep.accounts_checked, accounts, "{table}");
    assert!(
        rep.money_problems.is_empty(),
        "money: {:?}",
        rep.money_problems
    );
    assert!(
        rep.digest_problems.is_empty(),
        "replicas did not converge: {:?}",
        rep.digest_problems
    );
    assert!(
        rep.other_problems.is_empty(),
        "other: {:?}",
        rep.other_problems
    );
    assert!(rep.passed, "{:?}\n{table}", rep.failures);
}
