//! `--plot FILE.svg|FILE.html`: latency percentile curves per ack mode (publish solid,
//! end-to-end dashed, on a "nines" axis as HdrHistogram plots them) next to throughput
//! over time. Plain SVG written by hand: no dependency, opens in any browser.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::stats::Point;

/// One ack mode's data.
pub struct Curves<'a> {
    pub label: &'a str,
    pub publish: &'a Histogram<u64>,
    pub end_to_end: Option<&'a Histogram<u64>>,
    pub series: &'a [Point],
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 440.0;
const PANEL_WIDTH: f64 = 400.0;
const PANEL_HEIGHT: f64 = 300.0;
const TOP: f64 = 70.0;
const LEFT_PANEL_X: f64 = 80.0;
const RIGHT_PANEL_X: f64 = 570.0;
const MOST_NINES: f64 = 5.0;

fn color(label: &str) -> &'static str {
    match label {
        "0" => "#1f77b4",
        "1" => "#ff7f0e",
        "all" => "#2ca02c",
        _ => "#7f7f7f",
    }
}

/// `(nines, microseconds)` along a histogram's percentile curve, up to as many nines
/// as its sample count supports.
fn percentile_curve(histogram: &Histogram<u64>) -> Vec<(f64, u64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let nines = (histogram.len() as f64).log10().clamp(0.0, MOST_NINES);
    let steps = (nines / 0.05).ceil() as usize;
    (0..=steps)
        .map(|step| {
            let x = (step as f64 * 0.05).min(nines);
            let quantile = 1.0 - 10f64.powf(-x);
            (x, histogram.value_at_quantile(quantile).max(1))
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document for `modes` under `title`.
pub fn svg(title: &str, modes: &[Curves<'_>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    legend(&mut out, modes);
    latency_panel(&mut out, modes);
    throughput_panel(&mut out, modes);
    out.push_str("</svg>\n");
    out
}

/// The document for `path`: the SVG itself, or wrapped in a page for `.html`.
pub fn document(path: &std::path::Path, title: &str, modes: &[Curves<'_>]) -> String {
    let svg = svg(title, modes);
    match path.extension().and_then(|extension| extension.to_str()) {
        Some("html" | "htm") => format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{svg}</body></html>\n",
            escape(title)
        ),
        _ => svg,
    }
}

fn legend(out: &mut String, modes: &[Curves<'_>]) {
    let mut x = LEFT_PANEL_X;
    for mode in modes {
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="44" x2="{}" y2="44" stroke="{}" stroke-width="2"/><text x="{}" y="48">acks={}</text>"#,
            x + 24.0,
            color(mode.label),
            x + 30.0,
            escape(mode.label)
        );
        x += 100.0;
    }
    let _ = writeln!(
        out,
        r##"<text x="{x}" y="48" fill="#555">solid: publish (send → ack) / produced; dashed: end to end (send → consumed) / consumed</text>"##
    );
}

/// Axes frame with a title and labels.
fn frame(out: &mut String, x0: f64, title: &str, x_label: &str, y_label: &str) {
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{title}</text>"#,
        x0 + PANEL_WIDTH / 2.0,
        TOP - 8.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        x0 + PANEL_WIDTH / 2.0,
        TOP + PANEL_HEIGHT + 40.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{y_label}</text>"#,
        x0 - 55.0,
        TOP + PANEL_HEIGHT / 2.0
    );
}

fn polyline(out: &mut String, points: &[(f64, f64)], stroke: &str, dashed: bool) {
    if points.is_empty() {
        return;
    }
    let coordinates: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{stroke}" stroke-width="2"{} points="{}"/>"#,
        if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        },
        coordinates.join(" ")
    );
}

/// `(ack mode, percentile curve, dashed)`.
type Curve<'a> = (&'a str, Vec<(f64, u64)>, bool);

fn latency_panel(out: &mut String, modes: &[Curves<'_>]) {
    frame(
        out,
        LEFT_PANEL_X,
        "Latency by percentile",
        "percentile",
        "latency (µs, log scale)",
    );
    let curves: Vec<Curve<'_>> = modes
        .iter()
        .flat_map(|mode| {
            std::iter::once((mode.label, percentile_curve(mode.publish), false)).chain(
                mode.end_to_end
                    .map(|histogram| (mode.label, percentile_curve(histogram), true)),
            )
        })
        .collect();
    let values = curves
        .iter()
        .flat_map(|(_, curve, _)| curve.iter().map(|(_, v)| *v));
    let (low, high) = values.fold((u64::MAX, 1), |(low, high), v| (low.min(v), high.max(v)));
    let low_decade = (low.max(1) as f64).log10().floor();
    let high_decade = (high as f64).log10().ceil().max(low_decade + 1.0);
    let x_of = |nines: f64| LEFT_PANEL_X + nines / MOST_NINES * PANEL_WIDTH;
    let y_of = |micros: f64| {
        TOP + PANEL_HEIGHT
            - (micros.log10() - low_decade) / (high_decade - low_decade) * PANEL_HEIGHT
    };
    for (nines, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = x_of(nines as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            TOP + PANEL_HEIGHT,
            TOP + PANEL_HEIGHT + 16.0
        );
    }
    let mut decade = low_decade;
    while decade <= high_decade {
        let y = y_of(10f64.powf(decade));
        let label = match 10f64.powf(decade) {
            v if v >= 1e6 => format!("{} s", v / 1e6),
            v if v >= 1e3 => format!("{} ms", v / 1e3),
            v => format!("{v} µs"),
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT_PANEL_X}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT_PANEL_X + PANEL_WIDTH,
            LEFT_PANEL_X - 6.0,
            y + 4.0
        );
        decade += 1.0;
    }
    for (label, curve, dashed) in &curves {
        let points: Vec<(f64, f64)> = curve
            .iter()
            .map(|(nines, micros)| (x_of(*nines), y_of(*micros as f64)))
            .collect();
        polyline(out, &points, color(label), *dashed);
    }
}

fn throughput_panel(out: &mut String, modes: &[Curves<'_>]) {
    frame(
        out,
        RIGHT_PANEL_X,
        "Throughput over time",
        "seconds",
        "MB/s (10^6 bytes of values)",
    );
    let longest = modes
        .iter()
        .flat_map(|mode| mode.series.iter().map(|point| point.t_s))
        .fold(1.0f64, f64::max);
    let highest = modes
        .iter()
        .flat_map(|mode| {
            mode.series
                .iter()
                .map(|point| point.producer_mb_per_s.max(point.consumer_mb_per_s))
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let x_of = |seconds: f64| RIGHT_PANEL_X + seconds / longest * PANEL_WIDTH;
    let y_of = |mb: f64| TOP + PANEL_HEIGHT - mb / highest * PANEL_HEIGHT;
    for step in 0..=4 {
        let mb = highest * f64::from(step) / 4.0;
        let seconds = longest * f64::from(step) / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{mb:.0}</text><text x="{:.1}" y="{}" text-anchor="middle">{seconds:.0}</text>"#,
            RIGHT_PANEL_X - 6.0,
            y_of(mb) + 4.0,
            x_of(seconds),
            TOP + PANEL_HEIGHT + 16.0
        );
    }
    for mode in modes {
        // The last window of a run is a fraction of a second: its rate says little.
        let whole = || mode.series.iter().filter(|point| point.window_s >= 0.5);
        let produced: Vec<(f64, f64)> = whole()
            .map(|point| (x_of(point.t_s), y_of(point.producer_mb_per_s)))
            .collect();
        polyline(out, &produced, color(mode.label), false);
        if mode.end_to_end.is_some() {
            let consumed: Vec<(f64, f64)> = whole()
                .map(|point| (x_of(point.t_s), y_of(point.consumer_mb_per_s)))
                .collect();
            polyline(out, &consumed, color(mode.label), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{histogram, Tally};

    #[test]
    fn the_plot_draws_one_curve_per_histogram_and_series() {
        let mut publish = histogram();
        let mut end_to_end = histogram();
        for micros in 1..=100_000u64 {
            publish.record(micros).unwrap();
            end_to_end.record(micros * 2).unwrap();
        }
        let window = Tally {
            produced_bytes: 5_000_000,
            ..Tally::default()
        };
        let series = vec![
            Point::of(&window, 1.0, 1.0, false),
            Point::of(&window, 2.0, 1.0, false),
        ];
        let modes = [
            Curves {
                label: "1",
                publish: &publish,
                end_to_end: Some(&end_to_end),
                series: &series,
            },
            Curves {
                label: "all",
                publish: &publish,
                end_to_end: None,
                series: &series,
            },
        ];
        let svg = svg("test <run>", &modes);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("test &lt;run&gt;"));
        // Latency: 3 curves (two publish, one end to end); throughput: 2 produced + 1
        // consumed.
        assert_eq!(svg.matches("<polyline").count(), 6);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        // 100,000 samples support five nines: the curve reaches the right edge.
        let curve = percentile_curve(&publish);
        assert_eq!(curve.last().unwrap().0, 5.0);
        assert!(curve.windows(2).all(|pair| pair[0].1 <= pair[1].1));
        let html = document(std::path::Path::new("plot.html"), "t", &modes);
        assert!(html.starts_with("<!doctype html>") && html.contains("<svg"));
    }
}
