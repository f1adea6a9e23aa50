//! Percentiles, latency histograms, plots and memory as every scenario reports them.

use crate::commands::plot::Line;
use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

pub(super) fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

pub(super) fn percentile_line(h: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   ({} samples)",
        crate::commands::human_ns(h.value_at_quantile(0.50)),
        crate::commands::human_ns(h.value_at_quantile(0.90)),
        crate::commands::human_ns(h.value_at_quantile(0.99)),
        crate::commands::human_ns(h.value_at_quantile(0.999)),
        crate::commands::human_ns(h.max()),
        h.len()
    )
}

/// An empty latency histogram (1 ns to 60 s, 3 significant digits), as every phase uses.
pub(super) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Writes the latency distributions as an SVG chart to `path`.
pub(super) fn write_plot(
    path: &std::path::Path,
    title: &str,
    lines: &[Line],
    quiet: bool,
) -> anyhow::Result<()> {
    let svg = crate::commands::plot::cdf(title, lines)?;
    std::fs::write(path, svg).with_context(|| format!("writing the plot {}", path.display()))?;
    if !quiet {
        eprintln!("latency distribution plotted to {}", path.display());
    }
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    dualbus_stress::peak_rss_of("self")
}
