//! Per-operation latency histograms (hdrhistogram, microseconds) and error
//! counts by code; merging across client threads; table and JSON output.
//! Pure: touches no I/O.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Largest latency a histogram records: one minute, in microseconds.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// One operation's latencies and refusals.
pub struct OpStat {
    pub hist: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl OpStat {
    pub fn new() -> OpStat {
        OpStat {
            // Bounds are constants within hdrhistogram's limits: cannot fail.
            hist: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant bounds"),
            errors: BTreeMap::new(),
        }
    }

    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

impl Default for OpStat {
    fn default() -> Self {
        Self::new()
    }
}

/// All operations of one workload, by name.
#[derive(Default)]
pub struct Stats {
    pub ops: BTreeMap<String, OpStat>,
}

impl Stats {
    pub fn op(&mut self, name: &str) -> &mut OpStat {
        self.ops.entry(name.to_string()).or_default()
    }

    pub fn ok(&mut self, name: &str, us: u64) {
        self.op(name).record_us(us);
    }

    /// Successful operations named `name` (0 if none ran).
    pub fn count(&self, name: &str) -> u64 {
        self.ops.get(name).map_or(0, |s| s.hist.len())
    }

    pub fn err(&mut self, name: &str, code: String) {
        *self.op(name).errors.entry(code).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        for (k, v) in other.ops {
            let mine = self.op(&k);
            // Same bounds on both sides: adding cannot fail.
            let _ = mine.hist.add(&v.hist);
            for (c, n) in v.errors {
                *mine.errors.entry(c).or_insert(0) += n;
            }
        }
    }

    /// `{op: {count, ops_per_s, p50_ms, p90_ms, p99_ms, max_ms, errors}}`.
    pub fn to_json(&self, secs: f64) -> Value {
        let mut m = serde_json::Map::new();
        for (k, s) in &self.ops {
            let n = s.hist.len();
            m.insert(
                k.clone(),
                json!({
                    "count": n,
                    "ops_per_s": if secs > 0.0 { n as f64 / secs } else { 0.0 },
                    "p50_ms": s.ms(0.50),
                    "p90_ms": s.ms(0.90),
                    "p99_ms": s.ms(0.99),
                    "max_ms": s.hist.max() as f64 / 1000.0,
                    "errors": s.errors,
                }),
            );
        }
        Value::Object(m)
    }

    /// A fixed-width table, one line per operation.
    pub fn table(&self, secs: f64) -> String {
        let mut out = format!(
            "{:<20} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}  errors\n",
            "operation", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (k, s) in &self.ops {
            let n = s.hist.len();
            let errs: Vec<String> = s.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
            out.push_str(&format!(
                "{:<20} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {}\n",
                k,
                n,
                if secs > 0.0 { n as f64 / secs } else { 0.0 },
                s.ms(0.50),
                s.ms(0.90),
                s.ms(0.99),
                s.hist.max() as f64 / 1000.0,
                if errs.is_empty() {
                    "-".to_string()
                } else {
                    errs.join(" ")
                }
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_errors() {
        let mut a = Stats::default();
        a.ok("p", 1000);
        a.err("p", "UNAVAILABLE".into());
        let mut b = Stats::default();
        b.ok("p", 3000);
        b.ok("q", 10);
        b.err("p", "UNAVAILABLE".into());
        a.merge(b);
        assert_eq!(a.ops["p"].hist.len(), 2);
        assert_eq!(a.ops["q"].hist.len(), 1);
        assert_eq!(a.ops["p"].errors["UNAVAILABLE"], 2);
        let j = a.to_json(2.0);
        assert_eq!(j["p"]["count"], 2);
        assert_eq!(j["p"]["ops_per_s"], 1.0);
        assert!(j["p"]["max_ms"].as_f64().unwrap_or(0.0) >= 2.9);
        assert!(a.table(2.0).contains("UNAVAILABLE=2"));
    }
}
