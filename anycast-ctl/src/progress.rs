//! Progress of long operations (`load` of many memberships, a large `show`): one line on
//! stderr, rewritten in place with `\r`.
//!
//! Invariants:
//! - Nothing is written unless stderr is a terminal: piped or redirected, a command's stderr
//!   carries its errors only.
//! - At most one update per [`INTERVAL`] (10 a second), so a fast loop pays one clock read
//!   per step and the terminal is not flooded; [`Progress::finish`] blanks the line again, so
//!   the command's own output starts on a clean line.
use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

/// The shortest time between two updates.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// A progress line for `total` steps of `what` (a plural noun: "memberships").
pub struct Progress {
    what: &'static str,
    total: usize,
    throttle: Throttle,
    /// Length of the line on the terminal (0: none shown).
    shown: usize,
    enabled: bool,
}

impl Progress {
    /// A progress line, shown only if stderr is a terminal.
    pub fn new(what: &'static str, total: usize) -> Self {
        Progress {
            what,
            total,
            throttle: Throttle::new(INTERVAL),
            shown: 0,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Notes that `done` of the steps are done; shows it if the last update is old enough.
    pub fn set(&mut self, done: usize) {
        if !self.enabled || !self.throttle.due(Instant::now()) {
            return;
        }
        let text = line(self.what, done, self.total);
        // Pad over a longer previous line; a failed write to the terminal is not worth an error.
        let pad = self.shown.saturating_sub(text.len());
        let _ = write!(std::io::stderr(), "\r{text}{:pad$}", "");
        self.shown = text.len();
    }

    /// Blanks the line, if one was shown.
    pub fn finish(&mut self) {
        if self.shown > 0 {
            let _ = write!(std::io::stderr(), "\r{:width$}\r", "", width = self.shown);
            self.shown = 0;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `what: done/total (percent%)`, with thousands separators.
pub fn line(what: &str, done: usize, total: usize) -> String {
    let percent = match total {
        0 => 100,
        _ => done.min(total) * 100 / total,
    };
    format!(
        "{what}: {}/{} ({percent}%)",
        thousands(done),
        thousands(total)
    )
}

/// `65536` as `65,536`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Lets one event through per interval.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Throttle { every, last: None }
    }

    /// Whether an update at `now` is due (the first always is); if so, it counts as done.
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_counts_with_separators_and_percent() {
        assert_eq!(
            line("memberships", 12_345, 65_536),
            "memberships: 12,345/65,536 (18%)"
        );
        assert_eq!(line("addresses", 0, 7), "addresses: 0/7 (0%)");
        assert_eq!(
            line("addresses", 1_000_000, 1_000_000),
            "addresses: 1,000,000/1,000,000 (100%)"
        );
        assert_eq!(line("addresses", 0, 0), "addresses: 0/0 (100%)");
    }

    #[test]
    fn throttle_lets_at_most_one_update_per_interval() {
        let start = Instant::now();
        let mut t = Throttle::new(INTERVAL);
        let at = |ms| start + Duration::from_millis(ms);
        assert!(t.due(at(0)));
        assert!(!t.due(at(1)));
        assert!(!t.due(at(99)));
        assert!(t.due(at(100)));
        assert!(!t.due(at(150)));
        assert!(t.due(at(250)));
        // 10,000 steps over one second: about 10 updates, never more than 11.
        let mut t = Throttle::new(INTERVAL);
        let shown = (0..10_000u64).filter(|i| t.due(at(1_000 + i / 10))).count();
        assert!((10..=11).contains(&shown), "{shown}");
    }
}
