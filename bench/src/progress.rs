//! Progress on stderr: a redrawn bar when stderr is a terminal (and not
//! `--json`), otherwise a plain line every `LINE_INTERVAL_S`. Touches only
//! stderr.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Seconds between plain progress lines.
pub const LINE_INTERVAL_S: u64 = 10;
const BAR_WIDTH: usize = 30;

/// Shared counter a background thread reports on until `finish`.
pub struct Progress {
    pub done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn render(what: &str, done: u64, total: u64, secs: f64) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let eta = if rate > 0.0 {
        (total.saturating_sub(done)) as f64 / rate
    } else {
        0.0
    };
    let filled = (frac * BAR_WIDTH as f64) as usize;
    format!(
        "{what} [{}{}] {done}/{total} {:.1}% {:.0}/s elapsed {:.0}s eta {:.0}s",
        "#".repeat(filled),
        "-".repeat(BAR_WIDTH - filled),
        frac * 100.0,
        rate,
        secs,
        eta
    )
}

impl Progress {
    pub fn start(what: &str, total: u64, quiet_bar: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let bar = !quiet_bar && std::io::stderr().is_terminal();
        let (d, s, what) = (done.clone(), stop.clone(), what.to_string());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last_line = Instant::now();
            loop {
                let stopping = s.load(Ordering::Relaxed);
                let line = render(
                    &what,
                    d.load(Ordering::Relaxed),
                    total,
                    started.elapsed().as_secs_f64(),
                );
                let mut err = std::io::stderr();
                if bar {
                    let _ = write!(err, "\r{line}\x1b[K");
                    if stopping {
                        let _ = writeln!(err);
                    }
                } else if stopping || last_line.elapsed() >= Duration::from_secs(LINE_INTERVAL_S) {
                    let _ = writeln!(err, "{line}");
                    last_line = Instant::now();
                }
                let _ = err.flush();
                if stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(if bar { 200 } else { 500 }));
            }
        });
        Progress {
            done,
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn render_shows_fraction_and_rate() {
        let s = super::render("load", 50, 200, 5.0);
        assert!(s.contains("50/200"), "{s}");
        assert!(s.contains("25.0%"), "{s}");
        assert!(s.contains("10/s"), "{s}");
    }
}
