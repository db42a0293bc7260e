//! The result model of `locald doctor`: one finding per check, with a stable id that scripts
//! and documentation can refer to, and a fix hint.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    /// locald works, but not fully (for instance: unprivileged ports instead of 80/443).
    Warn,
    /// Something locald needs is broken; `doctor` exits non-zero.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable, dotted, e.g. `shim.version`; never reworded once published.
    pub id: &'static str,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    pub fn ok(id: &'static str, message: impl Into<String>) -> Self {
        Self { id, severity: Severity::Ok, message: message.into(), hint: None }
    }

    pub fn warn(id: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { id, severity: Severity::Warn, message: message.into(), hint: Some(hint.into()) }
    }

    pub fn error(id: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self { id, severity: Severity::Error, message: message.into(), hint: Some(hint.into()) }
    }
}

/// A whole doctor run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Nothing blocks when no finding is an error; warnings degrade but do not block.
    pub fn blocks(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// One line per finding: `ok    shim.found   message  (fix: hint)`.
    pub fn render_text(&self) -> String {
        let width = self.findings.iter().map(|f| f.id.len()).max().unwrap_or(0);
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Ok => "ok",
                Severity::Warn => "warn",
                Severity::Error => "error",
            };
            out.push_str(&format!("{tag:<5} {:<width$}  {}", f.id, f.message));
            if let Some(hint) = &f.hint {
                out.push_str(&format!("  (fix: {hint})"));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_block() {
        let mut report =
            Report { findings: vec![Finding::ok("a", "fine"), Finding::warn("b", "meh", "do x")] };
        assert!(!report.blocks());
        report.findings.push(Finding::error("c", "broken", "do y"));
        assert!(report.blocks());
    }

    #[test]
    fn text_has_one_line_per_finding_with_id_and_hint() {
        let report = Report {
            findings: vec![
                Finding::ok("shim.found", "found"),
                Finding::error("shim.mode", "not setuid", "run z"),
            ],
        };
        let text = report.render_text();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().nth(1).unwrap().starts_with("error shim.mode"));
        assert!(text.contains("(fix: run z)"));
    }

    #[test]
    fn json_uses_lowercase_severity_and_omits_empty_hint() {
        let json = serde_json::to_value(Report { findings: vec![Finding::ok("x.y", "m")] }).unwrap();
        assert_eq!(json["findings"][0]["severity"], "ok");
        assert!(json["findings"][0].get("hint").is_none());
    }
}
