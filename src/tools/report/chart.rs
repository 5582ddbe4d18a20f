//! Inline SVG bar charts: stacked series per time bucket, with the
//! timeline's events drawn as vertical lines. No script: the tooltips
//! are SVG `<title>` elements.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::html::{esc, stamp};
use super::tally::{Marker, SERIES, Timeline};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 8.0;

/// One stacked series: index into the bucket counts, label, CSS class.
pub(super) struct Series {
    pub(super) index: usize,
    pub(super) label: &'static str,
    pub(super) class: &'static str,
}

/// A stacked bar chart of `series` over `timeline`, with `markers`.
pub(super) fn bars(id: &str, timeline: &Timeline, series: &[Series], markers: &[Marker]) -> String {
    let mut svg = String::new();
    let (Some((&first, _)), n) = (timeline.buckets.first_key_value(), timeline.spanned()) else {
        return svg;
    };
    let width = timeline.width();
    let total = |counts: &[u64; SERIES]| series.iter().map(|s| counts[s.index]).sum::<u64>();
    let max = timeline
        .buckets
        .values()
        .map(total)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let bar = plot_w / n as f64;
    let start = UNIX_EPOCH + Duration::from_secs(first * width);
    let span = (n * width) as f64;
    let _ = write!(
        svg,
        r#"<svg id="{id}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">"#
    );
    let _ = write!(
        svg,
        r#"<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>"#
    );
    for (&index, counts) in &timeline.buckets {
        let x = LEFT + (index - first) as f64 * bar;
        let mut y = TOP + plot_h;
        let from = UNIX_EPOCH + Duration::from_secs(index * width);
        let mut tip = format!("{} (+{}s)", stamp(from), width);
        for s in series {
            let _ = write!(tip, ", {}: {}", s.label, counts[s.index]);
        }
        for s in series {
            let count = counts[s.index];
            if count == 0 {
                continue;
            }
            let h = count as f64 / max as f64 * plot_h;
            y -= h;
            let _ = write!(
                svg,
                r#"<rect class="bar {}" x="{x:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}"><title>{}</title></rect>"#,
                s.class,
                (bar - 0.5).max(0.5),
                esc(&tip)
            );
        }
    }
    for m in markers {
        let offset =
            m.ts.duration_since(start)
                .map_or(0.0, |d| d.as_secs_f64())
                .min(span);
        let x = LEFT + offset / span * plot_w;
        let _ = write!(
            svg,
            r#"<line class="marker {}" x1="{x:.2}" x2="{x:.2}" y1="{TOP}" y2="{:.2}"><title>{} {}</title></line>"#,
            m.kind,
            TOP + plot_h,
            esc(&stamp(m.ts)),
            esc(&m.text)
        );
    }
    // Axes: the count at the top and the middle, the time at both ends and the middle.
    let mut ticks = vec![(max, TOP), (0, TOP + plot_h)];
    if max >= 4 {
        ticks.push((
            max / 2,
            TOP + plot_h * (1.0 - (max / 2) as f64 / max as f64),
        ));
    }
    for (value, y) in ticks {
        let _ = write!(
            svg,
            r#"<text class="axis" x="{:.0}" y="{:.0}" text-anchor="end">{value}</text>"#,
            LEFT - 4.0,
            y + 4.0
        );
    }
    let end = start + Duration::from_secs(n * width);
    let middle = start + Duration::from_secs(n * width / 2);
    for (at, x, anchor) in [
        (start, LEFT, "start"),
        (middle, LEFT + plot_w / 2.0, "middle"),
        (end, LEFT + plot_w, "end"),
    ] {
        let _ = write!(
            svg,
            r#"<text class="axis" x="{x:.0}" y="{:.0}" text-anchor="{anchor}">{}</text>"#,
            HEIGHT - 8.0,
            esc(&stamp(at))
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The legend under a chart.
pub(super) fn legend(series: &[Series], markers: bool) -> String {
    let mut out = String::from(r#"<p class="legend">"#);
    for s in series {
        let _ = write!(out, r#"<span class="key {}"></span>{} "#, s.class, s.label);
    }
    if markers {
        for (class, label) in [
            ("grant", "grant"),
            ("expiry", "expiry, revoke"),
            ("reload", "reload"),
            ("loss", "records lost"),
        ] {
            let _ = write!(out, r#"<span class="key line {class}"></span>{label} "#);
        }
    }
    out.push_str("</p>");
    out
}

/// Seconds per bar, in words.
pub(super) fn bucket_words(width: u64) -> String {
    match width {
        w if w % 86_400 == 0 => format!("{} d", w / 86_400),
        w if w % 3600 == 0 => format!("{} h", w / 3600),
        w if w % 60 == 0 => format!("{} min", w / 60),
        w => format!("{w} s"),
    }
}
