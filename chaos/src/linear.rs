//! Per-account linearizability checker (Wing & Gong search with Lowe's
//! memoization, as in Knossos and Porcupine). Pure: no I/O.
//!
//! The model is one register per account, `(balance, last_seq)`. A write that
//! takes effect adds its `balance_delta` to the balance and one record
//! (`last_seq + 1`); a read, and an acknowledged write's answer, observe the
//! state (`observed`). An operation whose outcome is unknown may take effect at
//! any point after its invoke, or never: it gets a return at +infinity and may
//! be left out; an operation known to have taken effect but never answered
//! (found in the final records) must be placed somewhere after its invoke.
//!
//! Because every effect is an addition, the model state is a function of the
//! set of linearized operations, so the memo is a set of bitsets. The search
//! is bounded by `steps_max`; when the bound is hit the verdict is
//! [`Verdict::Unknown`], never "ok".

use std::collections::HashSet;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::history::AcctState;

/// One operation as the checker sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinOp {
    /// Id in the history (for explanations).
    pub id: usize,
    pub invoke_ns: u64,
    /// `None`: never answered (return at +infinity).
    pub complete_ns: Option<u64>,
    /// Balance change and `last_seq` change when it takes effect (0/0 for reads).
    pub balance_delta: Decimal,
    pub seq_delta: u64,
    /// What the operation saw right after its linearization point, if anything.
    pub observed: Option<AcctState>,
    /// True when it may also never take effect (outcome unknown).
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Violation {
        /// History id of the operation the search could not get past.
        op: usize,
        at_ns: u64,
        explanation: String,
    },
    /// Search budget exhausted: neither proven nor refuted.
    Unknown {
        steps: u64,
    },
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok)
    }
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation { .. })
    }
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    prev: Option<usize>,
    next: Option<usize>,
    /// For a call: index of its return entry.
    partner: usize,
}

fn step(state: AcctState, op: &LinOp) -> Option<AcctState> {
    let next = AcctState {
        balance: state.balance.checked_add(op.balance_delta)?,
        last_seq: state.last_seq.checked_add(op.seq_delta)?,
    };
    match op.observed {
        Some(o) if o != next => None,
        _ => Some(next),
    }
}

fn fmt_state(s: AcctState) -> String {
    format!("(balance {}, last_seq {})", s.balance, s.last_seq)
}

/// Checks one account's operations against the register model, starting from
/// `init`. `steps_max` bounds the search.
pub fn check(ops: &[LinOp], init: AcctState, steps_max: u64) -> Verdict {
    if ops.is_empty() {
        return Verdict::Ok;
    }
    // Build the entry list: calls at invoke, returns at complete (or +inf);
    // at equal times calls first (the more permissive order).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_ns, true, i));
        events.push((op.complete_ns.unwrap_or(u64::MAX), false, i));
    }
    events.sort_by_key(|(t, is_call, i)| (*t, !*is_call, *i));
    let mut entries: Vec<Entry> = events
        .iter()
        .map(|(_, is_call, op)| Entry {
            op: *op,
            is_call: *is_call,
            prev: None,
            next: None,
            partner: 0,
        })
        .collect();
    let n = entries.len();
    let mut ret_of = vec![0usize; ops.len()];
    for (idx, e) in entries.iter().enumerate() {
        if !e.is_call {
            ret_of[e.op] = idx;
        }
    }
    for idx in 0..n {
        entries[idx].prev = idx.checked_sub(1);
        entries[idx].next = (idx + 1 < n).then_some(idx + 1);
        if entries[idx].is_call {
            entries[idx].partner = ret_of[entries[idx].op];
        }
    }
    // Sentinel-free doubly linked list with an explicit head.
    let mut head: Option<usize> = Some(0);
    let lift = |entries: &mut Vec<Entry>, head: &mut Option<usize>, idx: usize| {
        for i in [idx, entries[idx].partner] {
            let (p, nx) = (entries[i].prev, entries[i].next);
            match p {
                Some(p) => entries[p].next = nx,
                None => *head = nx,
            }
            if let Some(nx) = nx {
                entries[nx].prev = p;
            }
        }
    };
    let unlift = |entries: &mut Vec<Entry>, head: &mut Option<usize>, idx: usize| {
        for i in [entries[idx].partner, idx] {
            let (p, nx) = (entries[i].prev, entries[i].next);
            match p {
                Some(p) => entries[p].next = Some(i),
                None => *head = Some(i),
            }
            if let Some(nx) = nx {
                entries[nx].prev = Some(i);
            }
        }
    };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<Vec<u64>> = HashSet::new();
    let mut stack: Vec<(usize, AcctState)> = Vec::new();
    let mut state = init;
    let mut entry = head;
    let mut steps = 0u64;
    // The deepest point reached, for the explanation.
    let mut best: (usize, AcctState, Option<usize>) = (0, init, None);

    loop {
        steps += 1;
        if steps > steps_max {
            return Verdict::Unknown { steps };
        }
        let Some(idx) = entry else {
            return Verdict::Ok;
        };
        let e = entries[idx];
        let op = &ops[e.op];
        if e.is_call {
            if let Some(next_state) = step(state, op) {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert(linearized.clone()) {
                    stack.push((idx, state));
                    state = next_state;
                    lift(&mut entries, &mut head, idx);
                    entry = head;
                    continue;
                }
                linearized[e.op / 64] &= !(1 << (e.op % 64));
            }
            entry = e.next;
        } else if op.optional {
            // Never taking effect is allowed: pass its return.
            entry = e.next;
        } else {
            // Its return came and it could not be linearized before it.
            if stack.len() >= best.0 {
                best = (stack.len(), state, Some(e.op));
            }
            let Some((call_idx, prev_state)) = stack.pop() else {
                return violation(ops, best);
            };
            state = prev_state;
            let op_i = entries[call_idx].op;
            linearized[op_i / 64] &= !(1 << (op_i % 64));
            unlift(&mut entries, &mut head, call_idx);
            entry = entries[call_idx].next;
        }
    }
}

fn violation(ops: &[LinOp], best: (usize, AcctState, Option<usize>)) -> Verdict {
    let (depth, state, stuck) = best;
    let Some(i) = stuck else {
        return Verdict::Violation {
            op: 0,
            at_ns: 0,
            explanation: "no linearization exists".into(),
        };
    };
    let op = &ops[i];
    let what = match op.observed {
        Some(o) if op.seq_delta == 0 => format!("read observed {}", fmt_state(o)),
        Some(o) => format!(
            "write (balance {:+}, +{} record) answered {}",
            op.balance_delta,
            op.seq_delta,
            fmt_state(o)
        ),
        None => format!(
            "write (balance {:+}, +{} record) known to have taken effect",
            op.balance_delta, op.seq_delta
        ),
    };
    Verdict::Violation {
        op: op.id,
        at_ns: op.complete_ns.unwrap_or(op.invoke_ns),
        explanation: format!(
            "op {} ({what}, invoked at {} ms) cannot be linearized: after the longest \
             valid prefix ({depth} ops) the register held {}",
            op.id,
            op.invoke_ns / 1_000_000,
            fmt_state(state)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: u64 = 1_000_000;

    fn st(balance: i64, last_seq: u64) -> AcctState {
        AcctState {
            balance: Decimal::from(balance),
            last_seq,
        }
    }
    fn zero() -> AcctState {
        st(0, 0)
    }
    fn write(id: usize, t0: u64, t1: Option<u64>, delta: i64, obs: Option<AcctState>) -> LinOp {
        LinOp {
            id,
            invoke_ns: t0,
            complete_ns: t1,
            balance_delta: Decimal::from(delta),
            seq_delta: 1,
            observed: obs,
            optional: false,
        }
    }
    fn read(id: usize, t0: u64, t1: u64, obs: AcctState) -> LinOp {
        LinOp {
            id,
            invoke_ns: t0,
            complete_ns: Some(t1),
            balance_delta: Decimal::ZERO,
            seq_delta: 0,
            observed: Some(obs),
            optional: false,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            write(0, 0, Some(10), 5, Some(st(5, 1))),
            read(1, 20, 30, st(5, 1)),
            write(2, 40, Some(50), 7, Some(st(12, 2))),
            read(3, 60, 70, st(12, 2)),
        ];
        assert_eq!(check(&ops, zero(), STEPS), Verdict::Ok);
    }

    #[test]
    fn concurrent_writes_in_either_order() {
        // Both writes overlap; the answers say 7 went first.
        let ops = vec![
            write(0, 0, Some(100), 5, Some(st(12, 2))),
            write(1, 10, Some(90), 7, Some(st(7, 1))),
            read(2, 50, 60, st(7, 1)),
            read(3, 110, 120, st(12, 2)),
        ];
        assert_eq!(check(&ops, zero(), STEPS), Verdict::Ok);
    }

    #[test]
    fn stale_read_is_a_violation() {
        // The write was acknowledged (finished at 10) before the read started
        // (20), yet the read shows the old state.
        let ops = vec![
            write(0, 0, Some(10), 5, Some(st(5, 1))),
            read(1, 20, 30, zero()),
        ];
        let v = check(&ops, zero(), STEPS);
        assert!(v.is_violation(), "{v:?}");
        let Verdict::Violation {
            op, explanation, ..
        } = v
        else {
            unreachable!()
        };
        assert_eq!(op, 1);
        assert!(explanation.contains("read observed"), "{explanation}");
    }

    #[test]
    fn read_of_a_value_never_written_is_a_violation() {
        let ops = vec![read(0, 0, 10, st(3, 1))];
        assert!(check(&ops, zero(), STEPS).is_violation());
    }

    #[test]
    fn unknown_write_may_or_may_not_take_effect() {
        let mut w = write(0, 0, None, 5, None);
        w.optional = true;
        // Never took effect.
        let ops = vec![w.clone(), read(1, 20, 30, zero())];
        assert_eq!(check(&ops, zero(), STEPS), Verdict::Ok);
        // Took effect late.
        let ops = vec![
            w.clone(),
            read(1, 20, 30, zero()),
            read(2, 40, 50, st(5, 1)),
        ];
        assert_eq!(check(&ops, zero(), STEPS), Verdict::Ok);
        // But not before its invoke.
        let mut late = w;
        late.invoke_ns = 35;
        let ops = vec![read(1, 20, 30, st(5, 1)), late];
        assert!(check(&ops, zero(), STEPS).is_violation());
    }

    #[test]
    fn write_known_to_have_landed_must_be_placed() {
        // Unanswered but found in the final records: not optional.
        let w = write(0, 0, None, 5, None);
        let ops = vec![w.clone(), read(1, 20, 30, st(5, 1))];
        assert_eq!(check(&ops, zero(), STEPS), Verdict::Ok);
        // A later read that never sees it, while the write must exist: it can
        // still land after that read (return at infinity), so this is fine...
        let ops = vec![w.clone(), read(1, 20, 30, zero())];
        assert_eq!(check(&ops, zero(), STEPS), Verdict::Ok);
        // ...but a read that contradicts every placement is not.
        let ops = vec![w, read(1, 20, 30, st(6, 1))];
        assert!(check(&ops, zero(), STEPS).is_violation());
    }

    #[test]
    fn lost_acknowledged_write_seen_by_reads_is_a_violation() {
        // Write acked with state (5,1), then a later write answers (7,1): the
        // first write vanished.
        let ops = vec![
            write(0, 0, Some(10), 5, Some(st(5, 1))),
            write(1, 20, Some(30), 7, Some(st(7, 1))),
        ];
        assert!(check(&ops, zero(), STEPS).is_violation());
    }

    #[test]
    fn budget_exhaustion_is_unknown_not_ok() {
        // Many fully concurrent optional writes and a read nothing can match:
        // the search must explore many subsets; with a tiny budget it gives up.
        let mut ops: Vec<LinOp> = (0..20)
            .map(|i| {
                let mut w = write(i, 0, None, 1 << i.min(20), None);
                w.optional = true;
                w
            })
            .collect();
        ops.push(read(20, 10, 20, st(-1, 3)));
        assert!(matches!(check(&ops, zero(), 50), Verdict::Unknown { .. }));
    }
}
