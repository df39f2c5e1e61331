//! Semantic checks and error locations: every problem is collected (not just the first) and
//! pointed at `file:line:column` of the key at fault, or at the environment variable that set it.

use std::fmt;

use toml::de::{DeTable, DeValue};

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name, `<defaults>`, or the environment variable name.
    pub origin: String,
    /// 1-based line and column, when the problem is in a file.
    pub position: Option<(usize, usize)>,
    /// Dotted key path such as `websocket.ping_interval` or `route[1].group`.
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    pub(super) fn plain(origin: String, message: String) -> Self {
        Problem {
            origin,
            position: None,
            key: None,
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

/// A key path segment.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path from its parts: `keys(&["server", "listen"])`.
pub(super) fn keys(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key(p.to_string())).collect()
}

/// `table[index].field`, as in `route[1].group`.
pub(super) fn item(table: &str, index: usize, field: &str) -> Vec<Seg> {
    vec![
        Seg::Key(table.into()),
        Seg::Index(index),
        Seg::Key(field.into()),
    ]
}

pub(super) fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Finds the innermost key whose key or value span contains `offset`.
fn key_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (k, v) in table.iter() {
        let kspan = k.span();
        let vspan = v.span();
        let inside = kspan.contains(&offset) || vspan.contains(&offset);
        path.push(Seg::Key(k.get_ref().to_string()));
        match v.get_ref() {
            DeValue::Table(t) if key_at(t, offset, path) => return true,
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref() {
                        path.push(Seg::Index(i));
                        if key_at(t, offset, path) {
                            return true;
                        }
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        if inside {
            return true;
        }
        path.pop();
    }
    false
}

/// Byte offset of the key at `path`, if the text has it.
pub(super) fn locate(table: &DeTable<'_>, path: &[Seg]) -> Option<usize> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(name) = first else { return None };
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == name)?;
    match rest.split_first() {
        None => Some(k.span().start),
        Some((Seg::Index(i), rest2)) => match v.get_ref() {
            DeValue::Array(items) => {
                let item = items.get(*i)?;
                match (item.get_ref(), rest2.is_empty()) {
                    (DeValue::Table(t), false) => locate(t, rest2).or(Some(item.span().start)),
                    _ => Some(item.span().start),
                }
            }
            _ => Some(k.span().start),
        },
        Some(_) => match v.get_ref() {
            DeValue::Table(t) => locate(t, rest).or(Some(k.span().start)),
            _ => Some(k.span().start),
        },
    }
}

pub(super) fn from_toml_error(origin: &str, text: &str, e: &toml::de::Error) -> Problem {
    let offset = e.span().map(|s| s.start);
    let key = offset.and_then(|off| {
        let table = DeTable::parse(text).ok()?;
        let mut path = Vec::new();
        key_at(table.get_ref(), off, &mut path).then(|| render_path(&path))
    });
    Problem {
        origin: origin.to_string(),
        position: offset.map(|o| line_col(text, o)),
        key: key.filter(|k| !k.is_empty()),
        message: e.message().trim().to_string(),
    }
}

/// Every problem found while loading a configuration, each with its location.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    pub problems: Vec<Problem>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Error {
    pub(super) fn one(p: Problem) -> Self {
        Error { problems: vec![p] }
    }
}
