//! SVG charts for the reports (`backtest --html`, `bench --plot`), drawn with plotters' SVG
//! backend. Text goes out as SVG `<text>` elements that the viewer renders with its own fonts,
//! so nothing here needs a font file or a C library.

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

/// Chart size in pixels.
pub(crate) const SIZE: (u32, u32) = (960, 340);
/// Most points a line keeps (more are thinned out evenly, the last always kept).
const MAX_POINTS: usize = 2_000;

/// Colours of successive series.
pub(crate) const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];
const BUY: RGBColor = RGBColor(0, 150, 60);
const SELL: RGBColor = RGBColor(215, 25, 28);

/// A shared x axis: its title and range.
pub(crate) struct XAxis {
    pub(crate) desc: String,
    pub(crate) range: std::ops::Range<f64>,
}

/// One named line.
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) points: Vec<(f64, f64)>,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

/// At most [`MAX_POINTS`] of `points`, evenly spaced by index, the first and last kept.
pub(crate) fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let step = points.len().div_ceil(MAX_POINTS);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let Some(last) = points.last() {
        if out.last() != Some(last) {
            out.push(*last);
        }
    }
    out
}

/// The range of `values` with 5% of room on each side (a unit around a single value).
fn padded(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.01
    };
    lo - pad..hi + pad
}

/// Lines over a shared x axis, coloured in [`PALETTE`] order (no legend box, which would hide
/// data: the caller names the colours in the title).
pub(crate) fn lines(
    title: &str,
    x: &XAxis,
    y_desc: &str,
    lines: &[Line],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let all = || lines.iter().flat_map(|l| l.points.iter());
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x.range.clone(), padded(all().map(|p| p.1)))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x.desc.as_str())
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, l) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(thin(&l.points), color.stroke_width(2)))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// A price line (grey) with the buys (upward green triangles) and sells (downward red
/// triangles) marked at their fill price; no legend box (the caller's title says it).
pub(crate) fn price_with_fills(
    title: &str,
    x: &XAxis,
    prices: &[(f64, f64)],
    buys: &[(f64, f64)],
    sells: &[(f64, f64)],
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let all = || prices.iter().chain(buys).chain(sells);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x.range.clone(), padded(all().map(|p| p.1)))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x.desc.as_str())
            .y_desc("price")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(thin(prices), PALETTE[5].stroke_width(1)))
            .map_err(err)?;
        chart
            .draw_series(buys.iter().map(|&p| {
                EmptyElement::at(p) + Polygon::new(vec![(0, -5), (-5, 4), (5, 4)], BUY.filled())
            }))
            .map_err(err)?;
        chart
            .draw_series(sells.iter().map(|&p| {
                EmptyElement::at(p) + Polygon::new(vec![(0, 5), (-5, -4), (5, -4)], SELL.filled())
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One bar per item, green above zero and red below.
pub(crate) fn bars(title: &str, y_desc: &str, items: &[(String, f64)]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let n = items.len().max(1);
        let y = padded(items.iter().map(|i| i.1).chain([0.0]));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d((0..n - 1).into_segmented(), y)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => items.get(*i).map(|x| x.0.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(err)?;
        chart
            .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
                let color = if *v >= 0.0 { BUY } else { SELL };
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *v),
                    ],
                    color.mix(0.8).filled(),
                );
                r.set_margin(0, 0, 12, 12);
                r
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The cumulative distribution of a latency histogram (recorded in ns): (µs, fraction of the
/// messages at or below it), one point per recorded bucket.
pub(crate) fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let total = h.len().max(1) as f64;
    let mut seen = 0u64;
    h.iter_recorded()
        .map(|v| {
            seen += v.count_since_last_iteration();
            (
                v.value_iterated_to().max(1) as f64 / 1e3,
                seen as f64 / total,
            )
        })
        .collect()
}

/// Latency distributions as cumulative distribution functions on a logarithmic µs axis.
pub(crate) fn cdf(title: &str, lines: &[Line]) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let xs = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .filter(|x| *x > 0.0);
        let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        let (lo, hi) = if lo.is_finite() {
            (lo, hi)
        } else {
            (1.0, 10.0)
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("latency, µs (log scale)")
            .y_desc("fraction of messages at or below")
            .draw()
            .map_err(err)?;
        for (i, l) in lines.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            // A step line: each bucket's fraction holds until the next bucket.
            let mut steps = Vec::with_capacity(l.points.len() * 2);
            let mut prev = 0.0;
            for &(x, y) in &l.points {
                steps.push((x, prev));
                steps.push((x, y));
                prev = y;
            }
            chart
                .draw_series(LineSeries::new(thin(&steps), color.stroke_width(2)))
                .map_err(err)?
                .label(l.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            // Below every curve of a CDF: at large latencies the curves are near 1, so the lower
            // right stays empty.
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_at_most_max_points() {
        let pts: Vec<(f64, f64)> = (0..10_001).map(|i| (i as f64, 0.0)).collect();
        let t = thin(&pts);
        assert!(t.len() <= MAX_POINTS + 1, "{}", t.len());
        assert_eq!(t.first(), pts.first());
        assert_eq!(t.last(), pts.last());
    }

    #[test]
    fn the_cdf_of_a_histogram_ends_at_one() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in [1_000, 2_000, 2_000, 100_000] {
            h.record(ns).unwrap();
        }
        let c = cdf_points(&h);
        assert_eq!(c.len(), 3);
        assert!(
            (c[0].0 - 1.0).abs() < 0.01 && (c[0].1 - 0.25).abs() < 1e-12,
            "{c:?}"
        );
        assert!((c[1].1 - 0.75).abs() < 1e-12);
        assert_eq!(c.last().unwrap().1, 1.0);
        let svg = cdf(
            "t",
            &[Line {
                name: "ours".into(),
                points: c,
            }],
        )
        .unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
        assert!(
            svg.contains(">\nours\n</text>") || svg.contains("ours"),
            "{svg}"
        );
    }
}
