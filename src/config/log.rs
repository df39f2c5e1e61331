//! `[log]`: how wsgate writes its log.

use serde::Deserialize;

/// Human lines for a terminal, or one JSON object per line for a log pipeline.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[log]`: how wsgate writes its log (to stderr).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `"human"` (default) or `"json"`; `--log-format` overrides it. Access lines (target
    /// `wsgate::access`) are filtered like any other: `--log info,wsgate::access=off`.
    pub format: LogFormat,
}
