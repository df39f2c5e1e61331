//! The module graph of `src/`, read from the source text: every `use` line and every inline
//! `crate::`/`super::`/child-module path of non-test code is an edge from its file to the file
//! that defines what it names. The tests hold the rules ARCHITECTURE.md states: no import circle
//! among files, none among top-level modules, and no module importing what it must not know.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file's module path (`["ws", "frame"]`; the crate root is `[]`).
type ModPath = Vec<String>;

#[derive(Debug)]
struct Graph {
    /// Module path -> file (relative to `src/`).
    files: BTreeMap<ModPath, String>,
    /// File -> the files it names, with one example path per edge.
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src/ is readable") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, string contents and its `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            // Skip the string's contents (raw strings are rare in src/ and hold no paths).
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push('"');
            i += 1;
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal such as '"' or '\''.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            let end = if b[i + 1] == b'\\' {
                text[i + 3..].find('\'').map_or(b.len(), |e| i + 3 + e + 1)
            } else {
                end
            };
            i = end;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    // Test modules sit at the bottom of a file; what they use is not a production edge.
    if let Some(at) = out.find("#[cfg(test)]\nmod tests") {
        out.truncate(at);
    }
    out
}

/// Expands a use tree (`crate::a::{b, c::{self, D}}`) into full paths.
fn expand_use(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').expect("a closing brace")];
        let base = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], &base, out);
    } else if !tree.is_empty() {
        let item = tree.split(" as ").next().unwrap_or("").trim();
        if item == "self" {
            out.push(prefix.to_string());
        } else {
            out.push(join(prefix, item));
        }
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}::{b}"),
    }
}

/// Child modules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(|n| n.trim().to_string())
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Inline paths that start with one of `roots` (`crate`, `super`, a child module).
fn inline_paths(code: &str, roots: &[String], out: &mut Vec<String>) {
    for root in roots {
        let pat = format!("{root}::");
        let mut from = 0;
        while let Some(at) = code[from..].find(&pat) {
            let start = from + at;
            from = start + pat.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| is_ident(c) || c == ':') {
                continue;
            }
            let mut end = start;
            let bytes: Vec<char> = code[start..].chars().collect();
            let mut i = 0;
            while i < bytes.len() {
                if is_ident(bytes[i]) {
                    i += 1;
                } else if bytes[i] == ':' && bytes.get(i + 1) == Some(&':') {
                    i += 2;
                } else {
                    break;
                }
            }
            end += bytes[..i].iter().map(|c| c.len_utf8()).sum::<usize>();
            out.push(code[start..end].trim_end_matches(':').to_string());
        }
    }
}

/// Turns a path as written in module `here` into an absolute module path.
fn absolute(path: &str, here: &[String], children: &[String]) -> Option<ModPath> {
    let mut segs = path.split("::").filter(|s| !s.is_empty());
    let first = segs.next()?;
    let mut base: ModPath = match first {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        c if children.iter().any(|x| x == c) => {
            let mut b = here.to_vec();
            b.push(c.to_string());
            b
        }
        _ => return None,
    };
    for s in segs {
        if s == "super" {
            base.pop();
        } else {
            base.push(s.to_string());
        }
    }
    Some(base)
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files = BTreeMap::new();
    let mut codes = BTreeMap::new();
    for p in &paths {
        let rel = p.strip_prefix(&src).expect("under src/");
        let name = rel.to_string_lossy().into_owned();
        if name == "main.rs" {
            continue;
        }
        files.insert(module_of(rel), name.clone());
        let text = std::fs::read_to_string(p).expect("a readable source file");
        codes.insert(name, code_of(&text));
    }
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (module, file) in &files {
        let code = &codes[file];
        let kids = children(code);
        let mut named = Vec::new();
        // `use` declarations, possibly over several lines.
        let mut rest = code.as_str();
        while let Some(at) = rest.find("use ") {
            let before = rest[..at].chars().next_back();
            let after = &rest[at + 4..];
            rest = after;
            if before.is_some_and(is_ident) {
                continue;
            }
            let Some(end) = after.find(';') else { break };
            let tree = &after[..end];
            if tree.contains('\n') && !tree.contains('{') {
                continue;
            }
            let mut expanded = Vec::new();
            expand_use(tree, "", &mut expanded);
            named.extend(expanded);
        }
        let mut roots = vec!["crate".to_string(), "super".to_string()];
        roots.extend(kids.iter().cloned());
        inline_paths(code, &roots, &mut named);
        for path in named {
            let Some(abs) = absolute(&path, module, &kids) else {
                continue;
            };
            // The longest prefix that is a file is where the item lives.
            let target = (0..=abs.len())
                .rev()
                .find_map(|n| files.get(&abs[..n]))
                .expect("the crate root is a file");
            if target != file {
                edges
                    .entry(file.clone())
                    .or_default()
                    .entry(target.clone())
                    .or_insert(path);
            }
        }
    }
    Graph { files, edges }
}

/// Every cycle's members (strongly connected components with more than one node).
fn cycles(
    nodes: &BTreeSet<String>,
    edges: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(n.to_string()) {
            return;
        }
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, seen, order);
        }
        order.push(n.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in nodes {
        visit(n, edges, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in edges {
        for b in bs {
            rev.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![n.clone()];
        while let Some(x) = stack.pop() {
            if !assigned.insert(x.clone()) {
                continue;
            }
            comp.push(x.clone());
            for y in rev.get(&x).into_iter().flatten() {
                if !assigned.contains(y) {
                    stack.push(y.clone());
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

/// The top-level module of a file (`ws/frame.rs` -> `ws`, `app.rs` -> `app`, `lib.rs` -> ``).
fn top(file: &str) -> String {
    file.split('/')
        .next()
        .unwrap_or("")
        .trim_end_matches(".rs")
        .replace("lib", "")
}

fn describe(g: &Graph, comp: &[String]) -> String {
    let mut s = String::new();
    for a in comp {
        for (b, example) in g.edges.get(a).into_iter().flatten() {
            if comp.contains(b) {
                s.push_str(&format!("\n  {a} -> {b} (via {example})"));
            }
        }
    }
    s
}

#[test]
fn the_graph_sees_the_files_and_their_uses() {
    let g = graph();
    // A parser that found nothing would pass every rule below, so check it finds real edges.
    assert!(g.files.len() >= 30, "only {} files found", g.files.len());
    let edges_of = |f: &str| g.edges.get(f).cloned().unwrap_or_default();
    assert!(
        edges_of("app.rs").contains_key("config/mod.rs"),
        "app.rs uses the config: {:?}",
        edges_of("app.rs")
    );
    assert!(
        edges_of("proxy/tunnel.rs").contains_key("ws/frame.rs"),
        "the tunnel parses frames: {:?}",
        edges_of("proxy/tunnel.rs")
    );
    let mut test_graph = BTreeMap::new();
    test_graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    test_graph.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    let nodes = BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()]);
    assert_eq!(cycles(&nodes, &test_graph), vec![vec!["a", "b"]]);
}

#[test]
fn no_import_circle_among_files() {
    let g = graph();
    let nodes: BTreeSet<String> = g.files.values().cloned().collect();
    let edges: BTreeMap<String, BTreeSet<String>> = g
        .edges
        .iter()
        .map(|(a, bs)| (a.clone(), bs.keys().cloned().collect()))
        .collect();
    let found = cycles(&nodes, &edges);
    let text: Vec<String> = found.iter().map(|c| describe(&g, c)).collect();
    assert!(
        found.is_empty(),
        "import circles among files:{}",
        text.join("\n")
    );
}

#[test]
fn no_import_circle_among_top_level_modules() {
    let g = graph();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut examples: Vec<String> = Vec::new();
    for (a, bs) in &g.edges {
        for (b, via) in bs {
            let (ta, tb) = (top(a), top(b));
            if ta != tb && !ta.is_empty() && !tb.is_empty() {
                edges.entry(ta.clone()).or_default().insert(tb.clone());
                examples.push(format!("{a} -> {b} (via {via})"));
            }
        }
    }
    let nodes: BTreeSet<String> = g.files.values().map(|f| top(f)).collect();
    let found = cycles(&nodes, &edges);
    if !found.is_empty() {
        let mut why = String::new();
        for comp in &found {
            for e in &examples {
                let (a, rest) = e.split_once(" -> ").expect("an edge");
                let b = rest.split(' ').next().unwrap_or("");
                if comp.contains(&top(a)) && comp.contains(&top(b)) {
                    why.push_str(&format!("\n  {e}"));
                }
            }
        }
        panic!("import circles among modules {found:?}:{why}");
    }
}

/// ARCHITECTURE.md's table of what each module must not know, as imports it must not have.
#[test]
fn no_module_imports_what_it_must_not_know() {
    const RULES: &[(&str, &[&str])] = &[
        (
            "config",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
                "metrics",
            ],
        ),
        (
            "metrics",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "reply",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "transport",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "lifecycle",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "any_cert",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
                "config", "metrics", "doctor",
            ],
        ),
        (
            "uri",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "broker",
            &[
                "server", "ws", "hub", "proxy", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "hub",
            &[
                "server",
                "ws",
                "proxy",
                "api",
                "web",
                "app",
                "cli",
                "bench",
                "reply",
                "transport",
            ],
        ),
        (
            "ws",
            &["server", "proxy", "api", "web", "app", "cli", "bench"],
        ),
        (
            "proxy",
            &[
                "server", "hub", "broker", "api", "web", "app", "cli", "bench",
            ],
        ),
        (
            "api",
            &[
                "server",
                "ws",
                "proxy",
                "web",
                "app",
                "cli",
                "bench",
                "transport",
            ],
        ),
        (
            "web",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "app", "cli", "bench",
            ],
        ),
        (
            "hooks",
            &["server", "proxy", "api", "web", "app", "cli", "bench"],
        ),
        ("server", &["app", "cli", "bench", "admin"]),
        (
            "admin",
            &["ws", "transport", "app", "cli", "bench", "doctor"],
        ),
        (
            "access",
            &[
                "server", "ws", "hub", "broker", "proxy", "api", "web", "app", "cli", "bench",
                "metrics", "admin",
            ],
        ),
        (
            "auth",
            &[
                "server",
                "ws",
                "hub",
                "broker",
                "proxy",
                "api",
                "web",
                "app",
                "cli",
                "bench",
                "transport",
                "reply",
                "metrics",
            ],
        ),
        (
            "bench",
            &["server", "hub", "broker", "proxy", "api", "web", "app"],
        ),
    ];
    let g = graph();
    let mut bad = Vec::new();
    for (a, bs) in &g.edges {
        for (b, via) in bs {
            let (ta, tb) = (top(a), top(b));
            if let Some((_, banned)) = RULES.iter().find(|(m, _)| *m == ta)
                && banned.contains(&tb.as_str())
            {
                bad.push(format!("{a} -> {b} (via {via}): {ta} must not know {tb}"));
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n  {}", bad.join("\n  "));
}

/// permessage-deflate's engine works on bytes only, so the frame decoder can call it without a
/// circle and the bench client can reuse it: it imports nothing from the crate.
#[test]
fn the_deflate_engine_knows_only_bytes() {
    let g = graph();
    assert!(
        g.files.values().any(|f| f == "ws/deflate.rs"),
        "ws/deflate.rs not found"
    );
    let edges = g.edges.get("ws/deflate.rs").cloned().unwrap_or_default();
    assert!(
        edges.is_empty(),
        "ws/deflate.rs imports {:?}",
        edges.keys().collect::<Vec<_>>()
    );
}
