//! What a run found: a line per case for people, JUnit XML for CI.

use std::fmt::Write as _;
use std::time::Duration;

/// One case of one check.
#[derive(Debug, Clone)]
pub struct Case {
    /// The check: `scrape`, `illegal_destination`, `rate_limit`.
    pub check: &'static str,
    pub name: String,
    pub duration: Duration,
    pub outcome: Outcome,
    /// Evidence, passed or not: what was seen.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    /// The system under test did the wrong thing.
    Failed(String),
    /// The check could not run (a dependency was down, a port was taken).
    Error(String),
}

impl Case {
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// The human summary.
pub fn summary(cases: &[Case], total: Duration) -> String {
    let mut out = String::new();
    let width = cases
        .iter()
        .map(|c| c.check.len() + c.name.len() + 3)
        .max()
        .unwrap_or(0);
    for case in cases {
        let label = match &case.outcome {
            Outcome::Passed => "PASS ",
            Outcome::Failed(_) => "FAIL ",
            Outcome::Error(_) => "ERROR",
        };
        let title = format!("{} / {}", case.check, case.name);
        let _ = writeln!(out, "  {label} {title:width$}  {:>7.2} s", case.duration.as_secs_f64());
        if let Outcome::Failed(why) | Outcome::Error(why) = &case.outcome {
            let _ = writeln!(out, "        {why}");
        }
        for detail in &case.details {
            let _ = writeln!(out, "        · {detail}");
        }
    }
    let passed = cases.iter().filter(|c| c.passed()).count();
    let failed = cases.iter().filter(|c| matches!(c.outcome, Outcome::Failed(_))).count();
    let errors = cases.len() - passed - failed;
    let _ = writeln!(
        out,
        "{passed} passed, {failed} failed, {errors} could not run, in {:.1} s",
        total.as_secs_f64()
    );
    out
}

/// JUnit XML: one suite per check, one testcase per case; failures carry
/// the reason as the message and the evidence as the text.
pub fn junit(cases: &[Case], total: Duration, timestamp: chrono::DateTime<chrono::Utc>) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let failures = cases.iter().filter(|c| matches!(c.outcome, Outcome::Failed(_))).count();
    let errors = cases.iter().filter(|c| matches!(c.outcome, Outcome::Error(_))).count();
    let _ = writeln!(
        out,
        "<testsuites name=\"clawgress-synthetic\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{:.3}\">",
        cases.len(),
        total.as_secs_f64()
    );
    let mut checks: Vec<&str> = cases.iter().map(|c| c.check).collect();
    checks.dedup();
    for check in checks {
        let in_check: Vec<&Case> = cases.iter().filter(|c| c.check == check).collect();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{:.3}\" timestamp=\"{}\">",
            escape(check),
            in_check.len(),
            in_check
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
                .count(),
            in_check
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Error(_)))
                .count(),
            in_check.iter().map(|c| c.duration.as_secs_f64()).sum::<f64>(),
            timestamp.format("%Y-%m-%dT%H:%M:%S")
        );
        for case in in_check {
            let _ = write!(
                out,
                "    <testcase classname=\"synthetic.{}\" name=\"{}\" time=\"{:.3}\"",
                escape(check),
                escape(&case.name),
                case.duration.as_secs_f64()
            );
            let evidence = case.details.join("\n");
            match &case.outcome {
                Outcome::Passed if evidence.is_empty() => out.push_str("/>\n"),
                Outcome::Passed => {
                    let _ = writeln!(
                        out,
                        ">\n      <system-out>{}</system-out>\n    </testcase>",
                        escape(&evidence)
                    );
                }
                Outcome::Failed(why) | Outcome::Error(why) => {
                    let tag = if matches!(case.outcome, Outcome::Failed(_)) {
                        "failure"
                    } else {
                        "error"
                    };
                    let _ = writeln!(
                        out,
                        ">\n      <{tag} message=\"{}\">{}</{tag}>\n    </testcase>",
                        escape(why),
                        escape(&evidence)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// XML text and attribute escaping; characters XML 1.0 cannot carry at all
/// (most control bytes) become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}
