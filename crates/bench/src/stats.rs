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

/// The median of `v` (sorted in place): the middle value, or the mean of
/// the two middle ones.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Latency of a series taken in `windows`: p50 and p99 are the medians of
/// each window's own p50 and p99 (one noisy window does not decide them),
/// max is the largest sample of all.
pub fn latency_windows(windows: &[Vec<Duration>]) -> Option<Latency> {
    let each: Vec<Latency> = windows.iter().filter_map(|w| latency(w)).collect();
    Some(Latency {
        p50: median(&mut each.iter().map(|l| l.p50).collect::<Vec<_>>())?,
        p99: median(&mut each.iter().map(|l| l.p99).collect::<Vec<_>>())?,
        max: each.iter().map(|l| l.max).reduce(f64::max)?,
        samples: each.iter().map(|l| l.samples).sum(),
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
    /// The split gateway's CPU per MiB over websockify's (lower is better).
    pub gateway_cpu_ratio: Option<f64>,
    /// Split mode's 1-stream bulk over the client ceiling's.
    pub bulk_vs_client_ceiling: Option<f64>,
    /// Split mode's 8-stream aggregate over websockify's.
    pub streams8_ratio: Option<f64>,
    /// Split mode's echo p50 minus the client ceiling's, µs.
    pub echo_p50_over_ceiling_us: Option<f64>,
    /// websockify's keystroke-to-screen p50 over vmgate split's (higher is better).
    pub key_to_screen_p50_ratio: Option<f64>,
}

fn fixed2(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        _ => "0.00".into(),
    }
}

/// The last line of a run, exactly in the form the issues fix (issue 17
/// added the fields after `sessions_held`). A figure not measured is 0.
pub fn summary_line(s: &SummaryInputs) -> String {
    format!(
        "summary: bulk_ratio_vs_websockify={} split_bulk_ratio_vs_websockify={} \
         p99_echo_ratio_vs_websockify={} idle_kib_per_session={} sessions_held={} \
         gateway_cpu_ratio_vs_websockify={} bulk_vs_client_ceiling={} \
         streams8_ratio_vs_websockify={} echo_p50_over_ceiling_us={} \
         key_to_screen_p50_ratio_vs_websockify={}",
        fixed2(s.bulk_ratio),
        fixed2(s.split_bulk_ratio),
        fixed2(s.p99_echo_ratio),
        s.idle_kib_per_session
            .map(|k| k.round() as u64)
            .unwrap_or(0),
        s.sessions_held,
        fixed2(s.gateway_cpu_ratio),
        fixed2(s.bulk_vs_client_ceiling),
        fixed2(s.streams8_ratio),
        s.echo_p50_over_ceiling_us
            .filter(|v| v.is_finite())
            .map(|v| v.round() as i64)
            .unwrap_or(0),
        fixed2(s.key_to_screen_p50_ratio),
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
            gateway_cpu_ratio: Some(0.456),
            bulk_vs_client_ceiling: Some(0.8),
            streams8_ratio: Some(2.0),
            echo_p50_over_ceiling_us: Some(-3.6),
            key_to_screen_p50_ratio: None,
        };
        assert_eq!(
            summary_line(&s),
            "summary: bulk_ratio_vs_websockify=3.46 split_bulk_ratio_vs_websockify=1.50 \
             p99_echo_ratio_vs_websockify=0.00 idle_kib_per_session=42 sessions_held=10000 \
             gateway_cpu_ratio_vs_websockify=0.46 bulk_vs_client_ceiling=0.80 \
             streams8_ratio_vs_websockify=2.00 echo_p50_over_ceiling_us=-4 \
             key_to_screen_p50_ratio_vs_websockify=0.00"
        );
    }

    #[test]
    fn medians_and_windowed_latency() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        let us = |v: &[u64]| {
            v.iter()
                .map(|&u| Duration::from_micros(u))
                .collect::<Vec<_>>()
        };
        // One window with a burst of load: its p99 does not decide the figure.
        let w = [
            us(&[10, 10, 10, 20]),
            us(&[10, 10, 10, 5000]),
            us(&[12, 12, 12, 30]),
        ];
        let l = latency_windows(&w).unwrap();
        assert_eq!((l.p50, l.p99, l.max, l.samples), (10.0, 30.0, 5000.0, 12));
        assert!(latency_windows(&[]).is_none());
    }
}
