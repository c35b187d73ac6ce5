//! The lag history as an SVG chart, drawn by the server: one line per stage over the kept history.
//! No script and no chart library; the numbers are ours, and maud escapes every label.

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
    let history = &overview.history;
    let max = history
        .iter()
        .flat_map(|point| point.backlogs.iter().flatten())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (Some(first), Some(last)) = (history.first(), history.last()) else {
        return html! { p.muted { "No samples yet." } };
    };
    let span = (last.at - first.at).num_milliseconds().max(1) as f64;
    let x = |at: chrono::DateTime<chrono::Utc>| {
        LEFT + (at - first.at).num_milliseconds() as f64 / span * (WIDTH - LEFT - 8.0)
    };
    let y = |value: i64| TOP + (1.0 - value as f64 / max) * (HEIGHT - TOP - BOTTOM);
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label="Backlog per stage over time" {
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) stroke="#999" {}
            line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - 8.0) y2=(HEIGHT - BOTTOM) stroke="#999" {}
            text x=(LEFT - 6.0) y=(TOP + 8.0) text-anchor="end" font-size="11" { (max as i64) }
            text x=(LEFT - 6.0) y=(HEIGHT - BOTTOM) text-anchor="end" font-size="11" { "0" }
            text x=(LEFT) y=(HEIGHT - 6.0) font-size="11" { (first.at.format("%H:%M:%S")) }
            text x=(WIDTH - 8.0) y=(HEIGHT - 6.0) text-anchor="end" font-size="11" { (last.at.format("%H:%M:%S UTC")) }
            @for (index, stage) in overview.stages.iter().enumerate() {
                @let points = history
                    .iter()
                    .filter_map(|point| point.backlogs.get(index).copied().flatten().map(|value| format!("{:.1},{:.1}", x(point.at), y(value))))
                    .collect::<Vec<_>>()
                    .join(" ");
                polyline points=(points) fill="none" stroke=(COLOURS[index % COLOURS.len()]) stroke-width="2" {
                    title { (stage.stage) }
                }
            }
        }
        ul.legend {
            @for (index, stage) in overview.stages.iter().enumerate() {
                li {
                    svg width="12" height="12" { rect width="12" height="12" fill=(COLOURS[index % COLOURS.len()]) {} }
                    " " (stage.stage) " (" (stage.topic) ")"
                }
            }
        }
    }
}
