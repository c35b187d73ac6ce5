//! Latency recording (HdrHistogram, microseconds) and the summaries the report prints.
//!
//! Coordinated omission: a closed-loop client (send, wait, send) stops sending while the server
//! stalls, so the stall is recorded once instead of for every request that would have been sent. Two
//! corrections are used, as wrk and wrk2 do:
//! - open loop (fixed rate): each request has an intended send time on a schedule, and its latency
//!   is measured from that time, so a stall counts against every request it delayed;
//! - closed loop (max rate): the recorded histogram is re-weighted with `clone_correct`, the expected
//!   interval being the mean per-connection service time, which back-fills the requests a stalled
//!   connection did not send.

use hdrhistogram::Histogram;
use serde::Serialize;

/// 1 µs to 120 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Records `micros`, clamped to the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.max(1));
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// The closed-loop correction: `expected_interval_us` is the mean time a connection takes per
/// request (connections / throughput).
pub fn corrected(histogram: &Histogram<u64>, expected_interval_us: u64) -> Histogram<u64> {
    if expected_interval_us == 0 {
        return histogram.clone();
    }
    histogram.clone_correct(expected_interval_us)
}

/// Median of `values` (the mean of the middle two for an even count); `None` when empty. NaNs are
/// ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    })
}

pub mod checks {
    use super::*;

    pub fn median_handles_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    pub fn percentiles_of_a_known_distribution() {
        let mut histogram = new_histogram();
        for micros in 1..=10_000u64 {
            record(&mut histogram, micros * 10); // 10 µs .. 100 ms, uniform
        }
        let p = Percentiles::of(&histogram);
        assert_eq!(p.count, 10_000);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.p999_ms - 99.9).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
        assert!((p.mean_ms - 50.005).abs() < 0.1, "{p:?}");
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    /// A closed-loop client that saw 99 fast answers and one 1 s stall: uncorrected, p99 looks fast;
    /// corrected with a 1 ms interval, the ~1000 requests the stall held back appear, and p99 is slow.
    pub fn coordinated_omission_correction_backfills_stalls() {
        let mut histogram = new_histogram();
        for _ in 0..99 {
            record(&mut histogram, 1_000);
        }
        record(&mut histogram, 1_000_000);
        assert!(Percentiles::of(&histogram).p99_ms < 1.1);
        let fixed = corrected(&histogram, 1_000);
        let p = Percentiles::of(&fixed);
        assert!(p.count > 1_000, "{p:?}");
        assert!(p.p50_ms > 400.0, "{p:?}");
        assert!(p.p99_ms > 900.0, "{p:?}");
        assert_eq!(corrected(&histogram, 0).len(), 100);
        // Out-of-range values are clamped, not dropped.
        record(&mut histogram, 0);
        record(&mut histogram, u64::MAX);
        assert_eq!(histogram.len(), 102);
    }
}
