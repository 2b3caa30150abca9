//! The run's report: the terminal summary, `--json`, and the files (`report.html`, `report.json`)
//! written to the report directory.

pub mod fairness;
pub mod html;
pub mod model;
pub mod sweep;

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use model::{LatencySummary, Report};

// One set of number formats for the terminal and the HTML report.
pub use html::{fmt_count, fmt_us};

fn latency_line(latency: &LatencySummary) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        fmt_us(latency.p50_us),
        fmt_us(latency.p90_us),
        fmt_us(latency.p99_us),
        fmt_us(latency.p999_us),
        fmt_us(latency.max_us)
    )
}

/// The terminal summary.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n== loadgen: {}", report.title);
    if let Some(why) = &report.aborted {
        let _ = writeln!(out, "!! ABORTED, partial report: {why}");
    }
    for (name, value) in &report.settings {
        let _ = writeln!(out, "   {name:<22} {value}");
    }
    let offered =
        report.offered_per_s.map_or_else(|| "closed loop".to_string(), |rate| format!("{}/s", fmt_count(rate as u64)));
    let _ = writeln!(out, "\n   offered                {offered}");
    let _ = writeln!(
        out,
        "   achieved               {}/s over {:.1} s",
        fmt_count(report.achieved_per_s as u64),
        report.duration_s
    );
    let _ = writeln!(
        out,
        "   operations             {} sent, {} answered, {} without answer",
        fmt_count(report.sent),
        fmt_count(report.answered),
        fmt_count(report.unanswered)
    );
    let _ = writeln!(out, "   latency                {}", latency_line(&report.latency));
    let _ = writeln!(out, "   (from each operation's intended send time; {} samples)", fmt_count(report.latency.count));
    if let Some(sweep) = &report.sweep {
        if !sweep.levels.is_empty() {
            sweep::text(&mut out, sweep);
        }
        if let Some(fairness) = &sweep.fairness {
            fairness::text(&mut out, fairness);
        }
    }
    for (number, failover) in report.failovers.iter().enumerate() {
        let _ = writeln!(
            out,
            "   failover {:<13} at {:.1} s: {} -> {}, leader found after {:.2} s, gap {:.1} s, {} operations resent",
            number + 1,
            failover.lost_at_s,
            failover.from,
            failover.to,
            failover.found_after_s,
            failover.gap_s,
            fmt_count(failover.resent)
        );
    }
    let _ = writeln!(out, "\n   outcomes");
    let total: u64 = report.outcomes.iter().map(|outcome| outcome.count).sum();
    for outcome in &report.outcomes {
        let share = if total == 0 { 0.0 } else { outcome.count as f64 * 100.0 / total as f64 };
        let _ = writeln!(out, "     {:>12}  {share:6.2}%  {}", fmt_count(outcome.count), outcome.label);
    }
    if let Some(verification) = &report.verification {
        let verdict = if verification.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "\n   verification           {verdict} ({} records checked)",
            fmt_count(verification.payments_checked)
        );
        for check in &verification.checks {
            let _ = writeln!(out, "     ok? {check}");
        }
        for problem in &verification.problems {
            let _ = writeln!(out, "     !! {problem}");
        }
    }
    if let Some(baseline) = &report.baseline {
        let _ = writeln!(out, "\n   baseline               {}", baseline.name);
        let _ = writeln!(
            out,
            "     {}/s ({} committed, {} refused by the cap, {} connections, {:.1} s)",
            fmt_count(baseline.achieved_per_s as u64),
            fmt_count(baseline.committed),
            fmt_count(baseline.refused),
            baseline.connections,
            baseline.duration_s
        );
        let _ = writeln!(out, "     latency {}", latency_line(&baseline.latency));
        for check in &baseline.verification {
            let _ = writeln!(out, "     ok: {check}");
        }
        let _ = writeln!(out, "   switch / baseline      {:.1}x", baseline.ratio);
    }
    out
}

/// Writes `report.html` and `report.json` into `dir`; returns the HTML path.
pub fn write_files(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let html = dir.join("report.html");
    std::fs::write(&html, html::render(report)).with_context(|| format!("writing {}", html.display()))?;
    let json = dir.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_aborts_verification_and_the_baseline() {
        let report = Report {
            title: "test".into(),
            aborted: Some("the switch stopped answering".into()),
            verification: Some(model::Verification {
                passed: false,
                problems: vec!["lost 1".into()],
                ..Default::default()
            }),
            baseline: Some(model::Baseline { name: "PostgreSQL 15".into(), ratio: 63.0, ..Default::default() }),
            ..Report::default()
        };
        let text = text(&report);
        assert!(text.contains("ABORTED, partial report: the switch stopped answering"));
        assert!(text.contains("FAILED") && text.contains("!! lost 1"));
        assert!(text.contains("63.0x"));
        let dir = tempfile::tempdir().expect("temporary directory");
        let html = write_files(&report, dir.path()).expect("written");
        assert!(html.exists() && dir.path().join("report.json").exists());
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).expect("read")).expect("valid JSON");
        assert_eq!(json["aborted"], "the switch stopped answering");
    }
}
