//! The overload sweep in the report: a chart of offered vs completed vs refused by reason per
//! level (grouped bars on one linear scale, the capacity drawn across), a table with the p99 of
//! completed payments and of refusals, answers lost and the switch's memory, and the same table
//! for the terminal.

use std::fmt::{self, Write};

use super::html::{fmt_count, fmt_us, AMBER, BLUE, GREY, RED, SLATE};
use super::model::{Sweep, SweepLevel};

/// Bars per level, in drawing order: (legend, colour, value).
fn bars(level: &SweepLevel) -> [(&'static str, &'static str, f64); 5] {
    [
        ("offered", SLATE, level.offered_per_s),
        ("completed", BLUE, level.completed_per_s),
        ("RATE_LIMITED", AMBER, level.rate_limited_per_s),
        ("SWITCH_BUSY", RED, level.switch_busy_per_s),
        ("other failures", GREY, level.other_per_s),
    ]
}

const W: f64 = 960.0;
const H: f64 = 320.0;
const ML: f64 = 64.0;
const MR: f64 = 20.0;
const MT: f64 = 44.0;
const MB: f64 = 40.0;

/// The HTML section: the chart, then the table.
pub fn html(o: &mut String, sweep: &Sweep) -> fmt::Result {
    write!(
        o,
        "<section class=\"card\"><h2>Overload sweep <span class=\"muted\">(open loop at multiples of a capacity \
         of {}/s, {})</span></h2>",
        fmt_count(sweep.capacity_per_s as u64),
        super::html::Esc(&sweep.capacity_from)
    )?;
    chart(o, sweep)?;
    table(o, sweep)?;
    o.push_str("</section>\n");
    Ok(())
}

fn chart(o: &mut String, sweep: &Sweep) -> fmt::Result {
    if sweep.levels.is_empty() {
        return o.write_str("<div class=\"nodata\">no level ran</div>");
    }
    let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
    let max = sweep
        .levels
        .iter()
        .flat_map(|level| bars(level).map(|(_, _, value)| clean(value)))
        .fold(clean(sweep.capacity_per_s), f64::max)
        .max(1.0);
    let step = super::html::nice_step(max / 5.0);
    let top = (max / step).ceil() * step;
    let py = |v: f64| MT + (1.0 - clean(v) / top) * (H - MT - MB);
    let slot = (W - ML - MR) / sweep.levels.len() as f64;
    let bar = slot * 0.8 / 5.0;
    write!(o, "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"overload sweep\">")?;
    for i in 0..=((top / step).round() as usize).min(20) {
        let v = i as f64 * step;
        super::html::grid_line(o, py(v), ML, W - MR, &super::html::fmt_compact(v))?;
    }
    write!(o, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">/s</text>", ML - 8.0, MT - 18.0)?;
    let base = H - MB;
    for (index, level) in sweep.levels.iter().enumerate() {
        let x0 = ML + index as f64 * slot + slot * 0.1;
        for (k, (name, color, value)) in bars(level).into_iter().enumerate() {
            let y = py(value);
            write!(
                o,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{name}: \
                 {}/s</title></rect>",
                x0 + k as f64 * bar,
                bar - 2.0,
                (base - y).max(0.0),
                fmt_count(clean(value) as u64)
            )?;
        }
        write!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} x ({}/s)</text>",
            x0 + slot * 0.4,
            base + 22.0,
            level.multiple,
            fmt_count(level.offered_per_s as u64)
        )?;
    }
    // The capacity, and 90% of it (the goal for completed payments at every level).
    for (fraction, dash) in [(1.0, "6 4"), (0.9, "2 4")] {
        let y = py(sweep.capacity_per_s * fraction);
        write!(
            o,
            "<line x1=\"{ML}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{BLUE}\" stroke-width=\"1.5\" \
             stroke-dasharray=\"{dash}\"/>",
            W - MR
        )?;
    }
    write!(o, "<line class=\"axis\" x1=\"{ML}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\"/>", W - MR)?;
    let mut lx = ML;
    for (name, color, _) in bars(&sweep.levels[0]) {
        write!(
            o,
            "<rect x=\"{lx}\" y=\"10\" width=\"14\" height=\"12\" fill=\"{color}\"/>\
             <text class=\"legend\" x=\"{}\" y=\"16\" dy=\".32em\">{name}</text>",
            lx + 20.0
        )?;
        lx += 44.0 + 7.0 * name.len() as f64;
    }
    write!(
        o,
        "<text class=\"legend\" x=\"{lx}\" y=\"16\" dy=\".32em\">dashed: capacity, dotted: 90% of it</text></svg>"
    )
}

fn table(o: &mut String, sweep: &Sweep) -> fmt::Result {
    o.push_str(
        "<table><tr><th>Level</th><th class=\"num\">Offered</th><th class=\"num\">Completed</th>\
         <th class=\"num\">of capacity</th><th class=\"num\">RATE_LIMITED</th><th class=\"num\">SWITCH_BUSY</th>\
         <th class=\"num\">Other</th><th class=\"num\">No answer</th><th class=\"num\">p99 completed</th>\
         <th class=\"num\">p99 refused</th><th class=\"num\">Switch RSS</th><th class=\"num\">CPU/payment</th></tr>",
    );
    for row in rows(sweep) {
        o.push_str("<tr>");
        for (index, cell) in row.iter().enumerate() {
            let class = if index == 0 { "mono" } else { "num" };
            write!(o, "<td class=\"{class}\">{}</td>", super::html::Esc(cell))?;
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    Ok(())
}

/// The table's cells, shared by the HTML and the terminal.
fn rows(sweep: &Sweep) -> Vec<[String; 12]> {
    let rate = |v: f64| format!("{}/s", fmt_count(if v.is_finite() && v > 0.0 { v as u64 } else { 0 }));
    sweep
        .levels
        .iter()
        .map(|level| {
            let share =
                if sweep.capacity_per_s > 0.0 { level.completed_per_s / sweep.capacity_per_s * 100.0 } else { 0.0 };
            [
                format!("{} x", level.multiple),
                rate(level.offered_per_s),
                rate(level.completed_per_s),
                format!("{share:.0}%"),
                rate(level.rate_limited_per_s),
                rate(level.switch_busy_per_s),
                rate(level.other_per_s),
                fmt_count(level.unanswered),
                fmt_us(level.completed_p99_us),
                fmt_us(level.shed_p99_us),
                level.switch_rss_bytes.map_or_else(|| "-".into(), |bytes| format!("{} MiB", fmt_count(bytes >> 20))),
                level.switch_cpu_us_per_payment.map_or_else(|| "-".into(), |us| format!("{us:.1} µs")),
            ]
        })
        .collect()
}

/// The terminal's table.
pub fn text(out: &mut String, sweep: &Sweep) {
    let _ = writeln!(
        out,
        "\n   overload sweep         capacity {}/s ({})",
        fmt_count(sweep.capacity_per_s as u64),
        sweep.capacity_from
    );
    let header = [
        "level",
        "offered",
        "completed",
        "of cap.",
        "RATE_LIMITED",
        "SWITCH_BUSY",
        "other",
        "no answer",
        "p99 done",
        "p99 refused",
        "RSS",
        "CPU/pay",
    ];
    let mut lines = vec![header.map(String::from)];
    lines.extend(rows(sweep));
    for line in lines {
        let _ = writeln!(
            out,
            "     {:<6} {:>10} {:>10} {:>7} {:>12} {:>11} {:>9} {:>9} {:>10} {:>11} {:>9} {:>9}",
            line[0],
            line[1],
            line[2],
            line[3],
            line[4],
            line[5],
            line[6],
            line[7],
            line[8],
            line[9],
            line[10],
            line[11]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> Sweep {
        let level = |multiple: f64, completed: f64, limited: f64| SweepLevel {
            multiple,
            offered_per_s: 10_000.0 * multiple,
            sent: (300_000.0 * multiple) as u64,
            completed_per_s: completed,
            rate_limited_per_s: limited,
            switch_busy_per_s: 100.0,
            completed_p99_us: 4_000,
            shed_p99_us: 900,
            switch_rss_bytes: Some(300 << 20),
            switch_cpu_us_per_payment: Some(61.5),
            ..SweepLevel::default()
        };
        Sweep {
            capacity_per_s: 10_000.0,
            capacity_from: "given".into(),
            levels: vec![level(1.0, 9_800.0, 0.0), level(2.0, 9_500.0, 10_400.0), level(3.0, 9_300.0, 20_600.0)],
            fairness: None,
        }
    }

    #[test]
    fn the_chart_has_a_group_of_bars_per_level_and_the_table_a_row() {
        let mut html = String::new();
        super::html(&mut html, &sweep()).expect("render");
        assert_eq!(html.matches("<svg").count(), 1);
        assert_eq!(html.matches("<rect").count(), 3 * 5 + 5, "five bars per level, five legend keys");
        assert!(html.contains("3 x (30,000/s)"), "{html}");
        assert_eq!(html.matches("<tr>").count(), 1 + 3);
        assert!(html.contains("93%") && html.contains("900 µs") && html.contains("300 MiB"), "{html}");
    }

    #[test]
    fn the_terminal_table_has_a_line_per_level() {
        let mut out = String::new();
        text(&mut out, &sweep());
        assert!(out.contains("capacity 10,000/s (given)"), "{out}");
        assert_eq!(out.lines().filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit())).count(), 3);
        let empty = Sweep { levels: Vec::new(), ..sweep() };
        let mut html = String::new();
        super::html(&mut html, &empty).expect("render");
        assert!(html.contains("no level ran"));
    }
}
