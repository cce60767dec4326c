//! `wallex bench …`: load generators that measure the running service.
//!
//! Why it exists: speed targets are checked by benchmarks run by hand on a quiet machine, never by
//! timed tests. Each bench prints its figures and the settings that produced them.

pub mod create;
pub mod deploy;
pub mod projections;
pub mod system;

use hdrhistogram::Histogram;

/// Latency histogram in microseconds, from 1 µs to 60 s with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// `p50 … p95 … p99 … max …` in milliseconds.
pub fn format_latencies(histogram: &Histogram<u64>) -> String {
    let ms = |micros: u64| micros as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(histogram.value_at_quantile(0.50)),
        ms(histogram.value_at_quantile(0.95)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    )
}
