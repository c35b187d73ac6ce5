//! The overview's history as SVG charts, drawn by the server: the backlog per stage, and the
//! records appended and processed per second per stage, over the kept history. No script and no
//! chart library; the numbers are ours, and maud escapes every label.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

use super::overview::Overview;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 12.0;
/// One colour per stage, in order (main, retries, DLQ), repeating past the end.
const COLOURS: [&str; 6] = [
    "#1f6feb", "#d29922", "#bf8700", "#9a6700", "#8250df", "#cf222e",
];

/// The chart of `overview.history`: backlog per stage against time.
pub fn lag_chart(overview: &Overview) -> Markup {
    let series = overview
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| Series {
            label: stage.stage.clone(),
            colour: COLOURS[index % COLOURS.len()],
            dashed: false,
            points: overview
                .history
                .iter()
                .filter_map(|point| {
                    let value = point.backlogs.get(index).copied().flatten()?;
                    Some((point.at, value as f64))
                })
                .collect(),
        })
        .collect();
    line_chart("Backlog per stage over time", "lag-chart", series)
}

/// The chart of the rates in `overview.history`: per stage, records appended per second (solid)
/// and processed per second (dashed; the DLQ has no group, so no processed line).
pub fn rate_chart(overview: &Overview) -> Markup {
    let mut series = Vec::new();
    for (index, stage) in overview.stages.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let points = |rates: fn(&super::overview::LagPoint) -> &Vec<Option<f64>>| {
            overview
                .history
                .iter()
                .filter_map(|point| Some((point.at, rates(point).get(index).copied().flatten()?)))
                .collect::<Vec<_>>()
        };
        series.push(Series {
            label: format!("{} appended/s", stage.stage),
            colour,
            dashed: false,
            points: points(|point| &point.appended_per_sec),
        });
        if stage.group.is_some() {
            series.push(Series {
                label: format!("{} processed/s", stage.stage),
                colour,
                dashed: true,
                points: points(|point| &point.processed_per_sec),
            });
        }
    }
    line_chart(
        "Records appended and processed per second per stage over time",
        "rate-chart",
        series,
    )
}

/// One line of a chart.
struct Series {
    label: String,
    colour: &'static str,
    dashed: bool,
    points: Vec<(DateTime<Utc>, f64)>,
}

fn line_chart(description: &str, id: &str, series: Vec<Series>) -> Markup {
    let all_points = || series.iter().flat_map(|series| series.points.iter());
    let (Some(first), Some(last)) = (
        all_points().map(|(at, _)| *at).min(),
        all_points().map(|(at, _)| *at).max(),
    ) else {
        return html! { p.muted { "No samples yet." } };
    };
    let max = all_points()
        .map(|(_, value)| *value)
        .fold(0.0, f64::max)
        .max(1.0);
    let span = (last - first).num_milliseconds().max(1) as f64;
    let x = |at: DateTime<Utc>| {
        LEFT + (at - first).num_milliseconds() as f64 / span * (WIDTH - LEFT - 8.0)
    };
    let y = |value: f64| TOP + (1.0 - value / max) * (HEIGHT - TOP - BOTTOM);
    html! {
        svg.chart id=(id) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(description) {
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) stroke="#999" {}
            line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - 8.0) y2=(HEIGHT - BOTTOM) stroke="#999" {}
            text x=(LEFT - 6.0) y=(TOP + 8.0) text-anchor="end" font-size="11" { (axis_label(max)) }
            text x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" font-size="11" { "0" }
            text x=(LEFT) y=(HEIGHT - 6.0) font-size="11" { (first.format("%H:%M:%S")) }
            text x=(WIDTH - 8.0) y=(HEIGHT - 6.0) text-anchor="end" font-size="11" { (last.format("%H:%M:%S UTC")) }
            @for line in &series {
                @let points = line
                    .points
                    .iter()
                    .map(|(at, value)| format!("{:.1},{:.1}", x(*at), y(*value)))
                    .collect::<Vec<_>>()
                    .join(" ");
                polyline points=(points) fill="none" stroke=(line.colour) stroke-width="2" stroke-dasharray=[line.dashed.then_some("6 4")] {
                    title { (line.label) }
                }
            }
        }
        ul.legend {
            @for line in &series {
                li {
                    svg width="18" height="12" {
                        line x1="0" y1="6" x2="18" y2="6" stroke=(line.colour) stroke-width="3" stroke-dasharray=[line.dashed.then_some("4 3")] {}
                    }
                    " " (line.label)
                }
            }
        }
    }
}

/// The top of the axis: whole numbers as such, small rates with one decimal.
fn axis_label(max: f64) -> String {
    if max.fract() == 0.0 || max >= 100.0 {
        format!("{max:.0}")
    } else {
        format!("{max:.1}")
    }
}
