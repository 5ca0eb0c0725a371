//! What a node process costs, read from outside it: CPU ticks from
//! `/proc`, log growth, and the densest second of warnings in its log
//! (tests and the chaos suite check that nodes stay cheap while others are
//! down). Read-only.

use std::collections::BTreeMap;
use std::path::Path;

/// Clock ticks per second of `/proc` CPU times.
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process in clock ticks (`None` if it is gone).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The most warning or error lines in any one second after byte `from` of
/// a node's log (its lines start with an RFC 3339 time), and that second.
pub fn max_warn_lines_per_s(log: &Path, from: u64) -> (usize, String) {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let mut per_s: BTreeMap<String, usize> = BTreeMap::new();
    for line in tail.lines() {
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            let second: String = line.chars().take(19).collect();
            *per_s.entry(second).or_default() += 1;
        }
    }
    per_s
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        .map(|(s, k)| (k, s))
        .unwrap_or((0, String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_ticks_read_and_warn_seconds_counted() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(clock_ticks_per_s() > 0.0);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        std::fs::write(
            &log,
            "2026-12-05T10:00:00.1Z  WARN a\n2026-12-05T10:00:00.5Z ERROR b\n\
             2026-12-05T10:00:01.0Z  INFO c\n2026-12-05T10:00:02.0Z  WARN d\n",
        )
        .unwrap();
        assert_eq!(
            max_warn_lines_per_s(&log, 0),
            (2, "2026-12-05T10:00:00".into())
        );
        // Counting from past the first two lines.
        let from = "2026-12-05T10:00:00.1Z  WARN a\n2026-12-05T10:00:00.5Z ERROR b\n".len() as u64;
        assert_eq!(
            max_warn_lines_per_s(&log, from),
            (1, "2026-12-05T10:00:02".into())
        );
    }
}
