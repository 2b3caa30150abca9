//! The fairness run in the report (`--flood`): the other PSPs' success rate and latency alone and
//! beside one PSP's flood, as a table in the HTML report and on the terminal.

use std::fmt::{self, Write};

use super::html::{fmt_count, fmt_us};
use super::model::{Fairness, FairnessPhase};

/// Rows: (phase name, its figures).
fn rows(fairness: &Fairness) -> [(String, &FairnessPhase); 2] {
    [
        ("others alone".to_string(), &fairness.unloaded),
        (format!("with a {} x flood", fairness.flood_multiple), &fairness.flooded),
    ]
}

fn cells(phase: &FairnessPhase) -> [String; 8] {
    [
        format!("{:.3}%", phase.others_success * 100.0),
        format!("{}/s", fmt_count(phase.others_completed_per_s as u64)),
        fmt_us(phase.others_p50_us),
        fmt_us(phase.others_p99_us),
        format!("{}/s", fmt_count(phase.flooder_completed_per_s as u64)),
        format!("{}/s", fmt_count(phase.rate_limited_per_s as u64)),
        format!("{}/s", fmt_count(phase.switch_busy_per_s as u64)),
        fmt_count(phase.unanswered),
    ]
}

const HEADER: [&str; 9] = [
    "phase",
    "others ok",
    "others done",
    "others p50",
    "others p99",
    "flooder done",
    "RATE_LIMITED",
    "SWITCH_BUSY",
    "no answer",
];

/// How the others' p99 beside the flood compares with theirs alone.
fn p99_ratio(fairness: &Fairness) -> Option<f64> {
    let alone = fairness.unloaded.others_p99_us;
    (alone > 0).then(|| fairness.flooded.others_p99_us as f64 / alone as f64)
}

pub fn html(o: &mut String, fairness: &Fairness) -> fmt::Result {
    write!(
        o,
        "<section class=\"card\"><h2>Fairness <span class=\"muted\">(the first PSP offers {}/s, {} x capacity; \
         the other PSPs {}/s together)</span></h2><table><tr>",
        fmt_count(fairness.flooder_offered_per_s as u64),
        fairness.flood_multiple,
        fmt_count(fairness.others_offered_per_s as u64)
    )?;
    for name in HEADER {
        write!(o, "<th>{name}</th>")?;
    }
    o.push_str("</tr>");
    for (name, phase) in rows(fairness) {
        write!(o, "<tr><td>{}</td>", super::html::Esc(&name))?;
        for cell in cells(phase) {
            write!(o, "<td>{cell}</td>")?;
        }
        o.push_str("</tr>");
    }
    o.push_str("</table>");
    if let Some(ratio) = p99_ratio(fairness) {
        write!(o, "<p class=\"muted\">The others' p99 beside the flood is {ratio:.2} x theirs alone.</p>")?;
    }
    o.push_str("</section>\n");
    Ok(())
}

pub fn text(out: &mut String, fairness: &Fairness) {
    let _ = writeln!(
        out,
        "\n   fairness               the first PSP offers {}/s ({} x capacity), the others {}/s together",
        fmt_count(fairness.flooder_offered_per_s as u64),
        fairness.flood_multiple,
        fmt_count(fairness.others_offered_per_s as u64)
    );
    let mut lines = vec![HEADER.map(String::from)];
    for (name, phase) in rows(fairness) {
        let [a, b, c, d, e, f, g, h] = cells(phase);
        lines.push([name, a, b, c, d, e, f, g, h]);
    }
    for line in lines {
        let _ = writeln!(
            out,
            "     {:<18} {:>9} {:>11} {:>10} {:>10} {:>12} {:>12} {:>11} {:>9}",
            line[0], line[1], line[2], line[3], line[4], line[5], line[6], line[7], line[8]
        );
    }
    if let Some(ratio) = p99_ratio(fairness) {
        let _ = writeln!(out, "     the others' p99 beside the flood: {ratio:.2} x theirs alone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fairness() -> Fairness {
        let phase = |success: f64, p99_us: u64, flooder: f64, limited: f64| FairnessPhase {
            others_success: success,
            others_completed_per_s: 1_000.0,
            others_p50_us: 2_000,
            others_p99_us: p99_us,
            flooder_completed_per_s: flooder,
            rate_limited_per_s: limited,
            ..FairnessPhase::default()
        };
        Fairness {
            flood_multiple: 3.0,
            others_offered_per_s: 1_000.0,
            flooder_offered_per_s: 30_000.0,
            unloaded: phase(1.0, 4_000, 0.0, 0.0),
            flooded: phase(0.9995, 6_000, 9_000.0, 21_000.0),
        }
    }

    #[test]
    fn the_table_shows_both_phases_and_the_p99_ratio() {
        let mut out = String::new();
        text(&mut out, &fairness());
        assert!(out.contains("others alone"), "{out}");
        assert!(out.contains("with a 3 x flood"), "{out}");
        assert!(out.contains("99.950%"), "{out}");
        assert!(out.contains("1.50 x theirs alone"), "{out}");
        let mut html_out = String::new();
        html(&mut html_out, &fairness()).expect("write to a String");
        assert!(html_out.contains("21,000/s") && html_out.contains("1.50 x"), "{html_out}");
    }
}
