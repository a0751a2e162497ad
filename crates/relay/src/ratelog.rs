//! A budget for log lines about refusals a peer can cause at will (the
//! gateway's public and admin listeners, the agent's TCP listener), so a
//! flood of refused connections cannot flood the log too. Sans-IO: the
//! caller passes `now`.

use std::time::{Duration, Instant};

/// A budget for log lines about refusals a client can cause at will: at
/// most `lines` per `window`, and the next line allowed says how many were
/// left out, so a flood cannot flood the log too.
#[derive(Debug)]
pub struct RateLog {
    lines: u32,
    window: Duration,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLog {
    pub fn new(lines: u32, window: Duration) -> RateLog {
        RateLog {
            lines,
            window,
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the number of
    /// lines left out since the last one logged, or `None` (left out).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if fresh {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used >= self.lines {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_log_is_bounded_per_window_and_says_what_it_left_out() {
        let mut log = RateLog::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(log.allow(t), Some(0));
        assert_eq!(log.allow(t), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.allow(t + Duration::from_secs(9)), None);
        }
        assert_eq!(log.allow(t + Duration::from_secs(10)), Some(1000));
        assert_eq!(log.allow(t + Duration::from_secs(10)), Some(0));
        assert_eq!(log.allow(t + Duration::from_secs(11)), None);
    }
}
