//! Warnings any caller can cause (refused connections): counted, and logged at most a
//! line a second with the count since the last line, so a flood cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct CountedWarnings {
    since_last_line: AtomicU64,
    /// Seconds (plus one) after `started` when the last line was due.
    last_line_s: AtomicU64,
    started: Instant,
}

impl Default for CountedWarnings {
    fn default() -> CountedWarnings {
        CountedWarnings {
            since_last_line: AtomicU64::new(0),
            last_line_s: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl CountedWarnings {
    /// Counts one; when a line is due (none yet this second), how many were counted
    /// since the last line, this one included.
    pub fn count(&self) -> Option<u64> {
        self.since_last_line.fetch_add(1, Ordering::Relaxed);
        let now_s = self.started.elapsed().as_secs() + 1;
        let last = self.last_line_s.load(Ordering::Relaxed);
        let due = now_s > last
            && self
                .last_line_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        due.then(|| self.since_last_line.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_a_second_with_the_count_since_the_last() {
        let warnings = CountedWarnings::default();
        assert_eq!(warnings.count(), Some(1));
        assert_eq!((0..99).filter_map(|_| warnings.count()).count(), 0);
        std::thread::sleep(std::time::Duration::from_millis(1_050));
        assert_eq!(warnings.count(), Some(100));
    }
}
