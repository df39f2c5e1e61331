//! The doctor's report: one [`Step`] per check with a [`Verdict`], what was seen and how to fix
//! it, rendered for a person or as one JSON object.
//!
//! This file only holds and prints results; it does no I/O beyond building strings, and knows
//! nothing about sockets, TLS or HTTP.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Works as a browser needs it.
    Pass,
    /// Works now, but something is likely to bite (a certificate expiring soon, no Pong).
    Warn,
    /// Does not work; the hint says what to change.
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// The fields of each step in `--json`, in order.
pub const STEP_FIELDS: [&str; 7] = [
    "name",
    "url",
    "verdict",
    "detail",
    "hint",
    "elapsed_ms",
    "facts",
];

/// One check: `dns`, `tcp`, `tls`, `upgrade`, `redirect`, `ping`, `idle` or `close`; with
/// `--h2`, `alpn`, `h2`, `settings` and `connect` in place of `upgrade`.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    /// The URL this step checked (it changes after a followed redirect).
    pub url: String,
    pub verdict: Verdict,
    /// What was seen, in plain words; may span lines (request and response heads).
    pub detail: String,
    /// What to change, when there is something to change.
    pub hint: Option<String>,
    /// Milliseconds the step took.
    pub elapsed_ms: f64,
    /// Machine-readable figures for `--json` (status, close code, seconds until a cut, ...).
    pub facts: Map<String, Value>,
}

impl Step {
    pub fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Step {
            name,
            url: String::new(),
            verdict,
            detail: detail.into(),
            hint: None,
            elapsed_ms: 0.0,
            facts: Map::new(),
        }
    }

    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Step::new(name, Verdict::Pass, detail)
    }

    pub fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        Step::new(name, Verdict::Warn, detail)
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Step::new(name, Verdict::Fail, detail)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_fact(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.facts.insert(key.to_string(), value.into());
        self
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "url": self.url,
            "verdict": self.verdict.as_str(),
            "detail": self.detail,
            "hint": self.hint,
            "elapsed_ms": (self.elapsed_ms * 1000.0).round() / 1000.0,
            "facts": self.facts,
        })
    }
}

/// Every step run against one URL (and the URLs it redirected to), in order.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub steps: Vec<Step>,
}

impl Report {
    pub fn new(url: &str) -> Self {
        Report {
            url: url.to_string(),
            steps: Vec::new(),
        }
    }

    /// The endpoint works: the upgrade (over HTTP/2, the extended CONNECT) succeeded and no
    /// step failed.
    pub fn ok(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.name, "upgrade" | "connect") && s.verdict == Verdict::Pass)
            && self.steps.iter().all(|s| s.verdict != Verdict::Fail)
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "url": self.url,
            "ok": self.ok(),
            "steps": self.steps.iter().map(Step::to_json).collect::<Vec<_>>(),
        })
    }

    /// The report for a terminal: a header, a line per step with its details and fix indented
    /// below it, and a closing verdict.
    pub fn render(&self) -> String {
        let mut out = render_header(&self.url);
        let mut url = self.url.as_str();
        for s in &self.steps {
            out.push_str(&render_step(url, s));
            if !s.url.is_empty() {
                url = &s.url;
            }
        }
        out.push_str(&self.render_summary());
        out
    }

    /// The closing line: works, or which steps failed.
    pub fn render_summary(&self) -> String {
        let failed: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| s.verdict == Verdict::Fail)
            .map(|s| s.name)
            .collect();
        let warned = self
            .steps
            .iter()
            .filter(|s| s.verdict == Verdict::Warn)
            .count();
        let mut out = String::from("\n");
        if self.ok() {
            out.push_str("ok: the endpoint works");
            if warned > 0 {
                let _ = write!(out, " ({warned} warning(s) above)");
            }
        } else if failed.is_empty() {
            out.push_str("not ok: the upgrade did not complete");
        } else {
            let _ = write!(
                out,
                "not ok: {} failed; the first fix above is the one to try first",
                failed.join(", ")
            );
        }
        out.push('\n');
        out
    }
}

/// The report's first lines.
pub fn render_header(url: &str) -> String {
    format!("wsgate doctor {url}\n\n")
}

/// One step for a terminal; `prev_url` is the URL of the step before, so that a followed
/// redirect is announced.
pub fn render_step(prev_url: &str, s: &Step) -> String {
    let mut out = String::new();
    if s.url != prev_url && !s.url.is_empty() {
        let _ = writeln!(out, "\n  now at {}\n", s.url);
    }
    let head = format!("{:<4}  {:<8} ", s.verdict.as_str().to_uppercase(), s.name);
    indented(&mut out, &head, &s.detail);
    if let Some(h) = &s.hint {
        indented(&mut out, &format!("{:6}{:<9}", "", "fix:"), h);
    }
    out
}

/// Text width of wrapped prose, after the 15-column indent.
const WIDTH: usize = 85;

/// Writes `text` with `first` before its first line and 15 spaces before the others; prose is
/// wrapped at [`WIDTH`], quoted heads (`> `, `< `) and indented config lines are kept as they are.
fn indented(out: &mut String, first: &str, text: &str) {
    let mut prefix = first.to_string();
    for line in text.lines() {
        let keep = line.starts_with("> ") || line.starts_with('<') || line.starts_with(' ');
        let pieces = if keep {
            vec![line.to_string()]
        } else {
            wrap(line)
        };
        for piece in pieces {
            let _ = writeln!(out, "{prefix}{piece}");
            prefix = " ".repeat(15);
        }
    }
}

/// Splits a line at spaces into pieces of at most [`WIDTH`] characters (a longer word stays whole).
fn wrap(line: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut cur = String::new();
    for word in line.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > WIDTH {
            pieces.push(std::mem::take(&mut cur));
        } else if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    pieces.push(cur);
    pieces
}

/// Milliseconds since `start`, for [`Step::elapsed_ms`].
pub fn ms_since(start: tokio::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verdicts: &[(&'static str, Verdict)]) -> Report {
        let mut r = Report::new("ws://h/");
        for (name, v) in verdicts {
            let mut s = Step::new(name, *v, format!("{name} line one\nline two"));
            s.url = "ws://h/".into();
            r.steps.push(s.with_hint("do this\nthen that"));
        }
        r
    }

    #[test]
    fn ok_needs_a_passed_upgrade_and_no_failure() {
        use Verdict::*;
        assert!(report(&[("tcp", Pass), ("upgrade", Pass), ("ping", Warn)]).ok());
        assert!(!report(&[("tcp", Pass), ("upgrade", Pass), ("idle", Fail)]).ok());
        assert!(!report(&[("tcp", Fail)]).ok());
        assert!(!report(&[("tls", Fail), ("upgrade", Pass)]).ok());
    }

    #[test]
    fn render_indents_details_and_fixes_under_the_step() {
        let text = report(&[("upgrade", Verdict::Fail)]).render();
        assert!(text.contains("FAIL  upgrade  upgrade line one\n"), "{text}");
        let long = render_step("", &Step::fail("tcp", "word ".repeat(40)));
        assert!(long.lines().all(|l| l.len() <= 15 + WIDTH), "{long}");
        assert_eq!(long.lines().count(), 3, "{long}");
        assert!(text.contains("\n               line two\n"), "{text}");
        assert!(text.contains("      fix:     do this\n"), "{text}");
        assert!(text.contains("\n               then that\n"), "{text}");
        assert!(
            text.ends_with("not ok: upgrade failed; the first fix above is the one to try first\n")
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = report(&[("upgrade", Verdict::Pass)]).to_json();
        assert_eq!(v["ok"], true);
        let s = &v["steps"][0];
        for key in STEP_FIELDS {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        assert_eq!(s["verdict"], "pass");
    }
}
