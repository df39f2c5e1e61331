//! Which groups keep a stream, and how much of it: group patterns (`room:{room}`, `news:*`) and
//! the history bounds routes give the groups they cover.

use std::time::Duration;

/// A group name pattern: literal text, with `{name}` or `*` standing for any non-empty text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Any,
}

impl GroupPattern {
    /// Parses a pattern; `{name}` and `*` both match any non-empty text.
    pub fn new(pattern: &str) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            let wild = match c {
                '*' => Some(1),
                '{' => rest.find('}').map(|end| end + 1),
                _ => None,
            };
            match wild {
                Some(len) => {
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    if parts.last() != Some(&Part::Any) {
                        parts.push(Part::Any);
                    }
                    rest = &rest[len..];
                }
                None => {
                    lit.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        GroupPattern { parts }
    }

    /// A pattern from a template whose `{name}` placeholders with a value in `values` are that
    /// value, literally (a `*` in a value is just a star); `*` and other placeholders match any
    /// non-empty text.
    pub fn from_template(template: &str, values: &[(&str, &str)]) -> Self {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            let placeholder = (c == '{')
                .then(|| rest.find('}'))
                .flatten()
                .map(|end| (&rest[1..end], end + 1));
            match (c, placeholder) {
                (_, Some((name, len))) => {
                    match values.iter().find(|(n, _)| *n == name) {
                        Some((_, v)) => lit.push_str(v),
                        None => {
                            if !lit.is_empty() {
                                parts.push(Part::Literal(std::mem::take(&mut lit)));
                            }
                            parts.push(Part::Any);
                        }
                    }
                    rest = &rest[len..];
                }
                ('*', None) => {
                    if !lit.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Any);
                    rest = &rest[1..];
                }
                _ => {
                    lit.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        GroupPattern { parts }
    }

    /// A pattern that matches exactly `group`.
    pub fn exact(group: &str) -> Self {
        GroupPattern {
            parts: vec![Part::Literal(group.to_string())],
        }
    }

    /// Whether `group` matches.
    pub fn matches(&self, group: &str) -> bool {
        fn go(parts: &[Part], s: &str) -> bool {
            match parts.split_first() {
                None => s.is_empty(),
                Some((Part::Literal(l), rest)) => {
                    s.strip_prefix(l.as_str()).is_some_and(|s| go(rest, s))
                }
                Some((Part::Any, rest)) => {
                    // At least one character, then try every split (patterns are short).
                    s.char_indices()
                        .skip(1)
                        .map(|(i, _)| i)
                        .chain(std::iter::once(s.len()))
                        .filter(|&i| i > 0)
                        .any(|i| go(rest, &s[i..]))
                }
            }
        }
        go(&self.parts, group)
    }
}

/// How much of a group's stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPolicy {
    /// Most publications kept.
    pub size: usize,
    /// Oldest publication kept.
    pub ttl: Duration,
}

/// The stream policy of every group pattern that keeps history, first match wins.
#[derive(Debug, Clone, Default)]
pub struct Policies(Vec<(GroupPattern, StreamPolicy)>);

impl Policies {
    pub fn new(list: Vec<(GroupPattern, StreamPolicy)>) -> Self {
        Policies(list)
    }

    /// The policy for `group`, if any pattern covers it.
    pub fn for_group(&self, group: &str) -> Option<StreamPolicy> {
        self.0
            .iter()
            .find(|(p, _)| p.matches(group))
            .map(|(_, s)| *s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_stars_match_any_non_empty_text() {
        let p = GroupPattern::new("room:{room}");
        assert!(p.matches("room:1"));
        assert!(p.matches("room:a:b"));
        assert!(
            !p.matches("room:"),
            "a placeholder needs at least one character"
        );
        assert!(!p.matches("rooms:1"));
        let p = GroupPattern::new("user:*:inbox");
        assert!(p.matches("user:42:inbox"));
        assert!(!p.matches("user:42:outbox"));
        assert!(GroupPattern::exact("news").matches("news"));
        assert!(!GroupPattern::exact("news").matches("news:1"));
        assert!(
            !GroupPattern::exact("room:{room}").matches("room:1"),
            "exact is literal"
        );
    }

    #[test]
    fn filled_placeholders_are_literal_even_when_the_value_looks_like_a_wildcard() {
        let p = GroupPattern::from_template("room:{room}", &[("room", "*")]);
        assert!(p.matches("room:*"));
        assert!(
            !p.matches("room:1"),
            "a star from the URL is not a wildcard"
        );
        let p = GroupPattern::from_template("user:{u}:*", &[("u", "7")]);
        assert!(p.matches("user:7:inbox"));
        assert!(!p.matches("user:8:inbox"));
    }

    #[test]
    fn the_first_policy_that_covers_a_group_wins() {
        let short = StreamPolicy {
            size: 1,
            ttl: Duration::from_secs(1),
        };
        let long = StreamPolicy {
            size: 9,
            ttl: Duration::from_secs(9),
        };
        let p = Policies::new(vec![
            (GroupPattern::new("room:vip"), long),
            (GroupPattern::new("room:{r}"), short),
        ]);
        assert_eq!(p.for_group("room:vip"), Some(long));
        assert_eq!(p.for_group("room:1"), Some(short));
        assert_eq!(p.for_group("chat:1"), None);
    }
}
