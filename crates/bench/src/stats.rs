//! The harness's arithmetic: percentiles, rates, ratios and the summary
//! line. Plain functions over numbers, tested without a runtime.

use std::time::Duration;

/// Latency percentiles of one series, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

/// The nearest-rank percentile `p` (0..=100) of `sorted` (ascending).
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50 / p99 / max of `samples` (durations), in microseconds.
pub fn latency(samples: &[Duration]) -> Option<Latency> {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    Some(Latency {
        p50: percentile(&us, 50.0)?,
        p99: percentile(&us, 99.0)?,
        max: *us.last()?,
        samples: us.len(),
    })
}

/// MiB/s for `bytes` moved in `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// `num / den`, when both exist and `den` is not zero.
pub fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// KiB per session from a memory delta in KiB over `n` sessions (never
/// negative: a heap that shrank while sessions opened costs nothing).
pub fn kib_per_session(before_kib: u64, after_kib: u64, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    after_kib.saturating_sub(before_kib) as f64 / n as f64
}

/// What the final line reports.
#[derive(Debug, Clone, Default)]
pub struct SummaryInputs {
    pub bulk_ratio: Option<f64>,
    pub split_bulk_ratio: Option<f64>,
    pub p99_echo_ratio: Option<f64>,
    pub idle_kib_per_session: Option<f64>,
    pub sessions_held: usize,
}

fn fixed2(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "0.00".into(),
    }
}

/// The last line of a run, exactly in the form the issue fixes.
pub fn summary_line(s: &SummaryInputs) -> String {
    format!(
        "summary: bulk_ratio_vs_websockify={} split_bulk_ratio_vs_websockify={} \
         p99_echo_ratio_vs_websockify={} idle_kib_per_session={} sessions_held={}",
        fixed2(s.bulk_ratio),
        fixed2(s.split_bulk_ratio),
        fixed2(s.p99_echo_ratio),
        s.idle_kib_per_session
            .map(|k| k.round() as u64)
            .unwrap_or(0),
        s.sessions_held
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn latency_sorts_and_converts_to_microseconds() {
        let samples = [
            Duration::from_micros(300),
            Duration::from_micros(100),
            Duration::from_micros(200),
        ];
        let l = latency(&samples).unwrap();
        assert_eq!((l.p50, l.p99, l.max, l.samples), (200.0, 300.0, 300.0, 3));
        assert!(latency(&[]).is_none());
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(mib_per_s(10 * 1024 * 1024, Duration::from_secs(2)), 5.0);
        assert_eq!(mib_per_s(1, Duration::ZERO), 0.0);
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(kib_per_session(1000, 3000, 100), 20.0);
        assert_eq!(kib_per_session(3000, 1000, 100), 0.0);
        assert_eq!(kib_per_session(0, 10, 0), 0.0);
    }

    #[test]
    fn summary_line_has_the_fixed_form() {
        let s = SummaryInputs {
            bulk_ratio: Some(3.456),
            split_bulk_ratio: Some(1.5),
            p99_echo_ratio: None,
            idle_kib_per_session: Some(41.6),
            sessions_held: 10_000,
        };
        assert_eq!(
            summary_line(&s),
            "summary: bulk_ratio_vs_websockify=3.46 split_bulk_ratio_vs_websockify=1.50 \
             p99_echo_ratio_vs_websockify=0.00 idle_kib_per_session=42 sessions_held=10000"
        );
    }
}
