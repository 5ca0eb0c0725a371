//! A rate bound on every log line, by call site: a component caught in a
//! failure loop (ours or openraft's) cannot fill the disk with its log.
//!
//! Each call site may emit [`LINES_PER_WINDOW_MAX`] events per
//! [`WINDOW_MS`]; further events in the window are dropped and counted
//! (`billdb_log_lines_suppressed_total`), and [`spawn_summary`] logs, at
//! most once per window, which call sites were cut and by how many lines.
//! A single line's text is not changed. Debug and trace events (off unless
//! `BILLDB_LOG` asks for them) are not limited: whoever turns them on wants
//! them all.
//!
//! Touches nothing but its own table and the metrics registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines one call site may log per window.
pub const LINES_PER_WINDOW_MAX: u32 = 5;
/// The window, and the longest time between two summary lines.
pub const WINDOW_MS: u64 = 10_000;
/// Call sites named in one summary line.
const SUMMARY_SITES_MAX: usize = 8;

struct Site {
    meta: &'static Metadata<'static>,
    window_start: Instant,
    lines_in_window: u32,
    suppressed: u64,
}

/// The rate-limiting layer (put it before the formatting layer).
#[derive(Clone, Default)]
pub struct RateLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

impl RateLimit {
    /// Whether an event of `meta` may be logged at `now` (counts it).
    fn admit(&self, meta: &'static Metadata<'static>, now: Instant) -> bool {
        if *meta.level() > Level::INFO {
            return true;
        }
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let site = sites.entry(meta.callsite()).or_insert(Site {
            meta,
            window_start: now,
            lines_in_window: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(site.window_start) >= Duration::from_millis(WINDOW_MS) {
            site.window_start = now;
            site.lines_in_window = 0;
        }
        if site.lines_in_window < LINES_PER_WINDOW_MAX {
            site.lines_in_window += 1;
            true
        } else {
            site.suppressed += 1;
            metrics::counter!("billdb_log_lines_suppressed_total").increment(1);
            false
        }
    }

    /// Call sites with suppressed lines since the last call, most first,
    /// as `(target file:line, count)`; resets their counts.
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = sites
            .values_mut()
            .filter(|s| s.suppressed > 0)
            .map(|s| {
                let m = s.meta;
                // A dependency's file path starts with the registry's
                // directory: keep what follows its last `src/`.
                let file = m.file().unwrap_or("?");
                let file = file.rsplit_once("/src/").map_or(file, |(_, f)| f);
                let place = format!("{} {}:{}", m.target(), file, m.line().unwrap_or(0));
                (place, std::mem::take(&mut s.suppressed))
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.admit(event.metadata(), Instant::now())
    }
}

/// Log, at most once per window, which call sites had lines suppressed.
pub fn spawn_summary(limit: RateLimit) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(WINDOW_MS)).await;
            let cut = limit.take_suppressed();
            if cut.is_empty() {
                continue;
            }
            let total: u64 = cut.iter().map(|(_, n)| n).sum();
            let sites: Vec<String> = cut
                .iter()
                .take(SUMMARY_SITES_MAX)
                .map(|(place, n)| format!("{place} x{n}"))
                .collect();
            tracing::warn!(
                suppressed = total,
                window_ms = WINDOW_MS,
                sites = %sites.join("; "),
                "log lines over the rate limit were dropped"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    static SITE_A: tracing::callsite::DefaultCallsite =
        tracing::callsite::DefaultCallsite::new(&META_A);
    static META_A: Metadata<'static> = tracing::metadata!(
        name: "a",
        target: "test",
        level: Level::WARN,
        fields: &[],
        callsite: &SITE_A,
        kind: tracing::metadata::Kind::EVENT
    );
    static SITE_B: tracing::callsite::DefaultCallsite =
        tracing::callsite::DefaultCallsite::new(&META_B);
    static META_B: Metadata<'static> = tracing::metadata!(
        name: "b",
        target: "test",
        level: Level::DEBUG,
        fields: &[],
        callsite: &SITE_B,
        kind: tracing::metadata::Kind::EVENT
    );

    #[test]
    fn a_call_site_gets_its_lines_per_window_then_is_cut_and_counted() {
        let l = RateLimit::default();
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| l.admit(&META_A, t0)).count();
        assert_eq!(admitted, LINES_PER_WINDOW_MAX as usize);
        let cut = l.take_suppressed();
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].1, 100 - u64::from(LINES_PER_WINDOW_MAX));
        assert!(cut[0].0.starts_with("test "), "{cut:?}");
        // Counts reset once taken.
        assert!(l.take_suppressed().is_empty());
        // Next window: admitted again.
        let t1 = t0 + Duration::from_millis(WINDOW_MS);
        assert!(l.admit(&META_A, t1));
    }

    #[test]
    fn debug_lines_are_not_limited() {
        let l = RateLimit::default();
        let t0 = Instant::now();
        assert!((0..1000).all(|_| l.admit(&META_B, t0)));
        assert!(l.take_suppressed().is_empty());
    }
}
