//! The Grafana dashboard and Prometheus alert rules for the switch's metrics, generated from
//! code (as TiKV does) so that they change with the metrics in review, never by hand-editing
//! exported JSON. `switch observability` writes them under `deploy/`; a test fails when the
//! committed files differ from what this code generates, and checks the rules with promtool.

pub mod alerts;
pub mod grafana;

use std::path::Path;

/// Where the generated files live, relative to the repository root (or `--deploy-dir`'s parent).
pub const DASHBOARD_FILE: &str = "grafana/payment-switch.json";
pub const ALERTS_FILE: &str = "prometheus/alerts.yml";

/// The dashboard as committed: pretty JSON with a final newline.
pub fn dashboard_json() -> String {
    let mut text = serde_json::to_string_pretty(&grafana::dashboard()).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes both files under `deploy_dir` (e.g. `deploy`).
pub fn write(deploy_dir: &Path) -> std::io::Result<()> {
    for (file, text) in [(DASHBOARD_FILE, dashboard_json()), (ALERTS_FILE, alerts::rules())] {
        let path = deploy_dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}
