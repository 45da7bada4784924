//! The crate's layers point one way: no file imports, directly or through others, a file that
//! imports it back, and the lower layers import none of the upper ones.
//!
//! Read from the source text: every `crate::`, `super::` and `self::` path and every path through
//! a child module (`mod x;` then `x::…`), outside comments, string literals and `#[cfg(test)]`
//! modules. A path to an item a `mod.rs` only re-exports (`pub use child::Item`) is followed to
//! the file that defines it, so a facade that re-exports its children is not itself a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lower layers (left) that must not import upper ones (right), each as a module path prefix.
/// The types the layers exchange live in `conversation`, which imports none of them.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "conversation",
        &[
            "http", "store", "worker", "agent", "outbound", "received", "app", "config",
        ],
    ),
    (
        "wecom",
        &[
            "http", "store", "worker", "agent", "outbound", "received", "app", "config",
        ],
    ),
    (
        "store",
        &[
            "http", "worker", "agent", "outbound", "received", "app", "config",
        ],
    ),
    ("agent", &["http", "worker", "outbound", "app", "config"]),
    (
        "outbound",
        &["http", "worker", "agent", "store", "received", "config"],
    ),
    ("http", &["worker", "agent", "config"]),
    ("aibot", &["http", "worker", "config", "simulate"]),
    ("worker", &["http"]),
];

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let graph = Graph::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path());
    assert!(
        graph.files.len() > 40,
        "too few files read: {:?}",
        graph.files.keys()
    );
    let circles = graph.circles();
    assert!(
        circles.is_empty(),
        "import circles between files (each line: one circle, then one path around it):\n{}",
        circles.join("\n")
    );
}

#[test]
fn lower_layers_import_no_upper_layer() {
    let graph = Graph::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path());
    let mut wrong = Vec::new();
    for (file, deps) in &graph.edges {
        let from = graph.files[file].join("::");
        for (lower, uppers) in FORBIDDEN {
            if !under(&from, lower) {
                continue;
            }
            for dep in deps {
                let to = graph.files[dep].join("::");
                if uppers.iter().any(|u| under(&to, u)) {
                    wrong.push(format!("{} imports {}", file.display(), dep.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layers pointing the wrong way:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_and_a_reexport() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod x;\npub use x::Thing;\n").unwrap();
    std::fs::write(
        src.join("a/x.rs"),
        "// use crate::b::Nothing;\nconst S: &str = \"crate::c::Nor\";\npub struct Thing;\n",
    )
    .unwrap();
    // b → a::Thing resolves to a/x.rs, not a/mod.rs; c ↔ b is a circle.
    std::fs::write(
        src.join("b.rs"),
        "use crate::{a::Thing, c};\nfn f() { c::g() }\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "pub fn g() { super::b::f() }\n").unwrap();
    let graph = Graph::read(src);
    let deps = |f: &str| graph.edges[&PathBuf::from(f)].clone();
    assert_eq!(
        deps("b.rs"),
        BTreeSet::from(["a/x.rs".into(), "c.rs".into()])
    );
    assert!(
        deps("a/x.rs").is_empty(),
        "comments and strings are not imports"
    );
    let circles = graph.circles();
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(circles[0].starts_with("b.rs, c.rs"), "{circles:?}");
}

fn under(module: &str, prefix: &str) -> bool {
    module == prefix || module.starts_with(&format!("{prefix}::"))
}

struct Graph {
    /// Each file (relative to src/) and its module path.
    files: BTreeMap<PathBuf, Vec<String>>,
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

struct Source {
    module: Vec<String>,
    /// `mod x;` declared here.
    children: BTreeSet<String>,
    /// `pub use … as name` here: name → absolute path.
    reexports: BTreeMap<String, Vec<String>>,
    /// Every path used, made absolute.
    paths: Vec<Vec<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut sources = BTreeMap::new();
        for file in rust_files(src) {
            let rel = file.strip_prefix(src).unwrap().to_path_buf();
            if rel == Path::new("main.rs") || rel.starts_with("bin") {
                continue; // binaries sit on top of the library; nothing imports them
            }
            let text = code_only(&std::fs::read_to_string(&file).unwrap());
            sources.insert(rel.clone(), Source::parse(module_of(&rel), &text));
        }
        let by_module: BTreeMap<Vec<String>, PathBuf> = sources
            .iter()
            .map(|(f, s)| (s.module.clone(), f.clone()))
            .collect();
        let resolve = |path: &[String]| -> Option<PathBuf> {
            let mut path = path.to_vec();
            for _ in 0..16 {
                let n = (0..=path.len())
                    .rev()
                    .find(|n| by_module.contains_key(&path[..*n]))?;
                let file = &by_module[&path[..n]];
                match path
                    .get(n)
                    .and_then(|name| sources[file].reexports.get(name))
                {
                    Some(target) if target.as_slice() != path.as_slice() => {
                        let mut next = target.clone();
                        next.extend_from_slice(&path[n + 1..]);
                        path = next;
                    }
                    _ => return Some(file.clone()),
                }
            }
            None
        };
        let mut edges = BTreeMap::new();
        for (file, source) in &sources {
            let deps: BTreeSet<PathBuf> = source
                .paths
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|dep| dep != file)
                .collect();
            edges.insert(file.clone(), deps);
        }
        let files = sources.into_iter().map(|(f, s)| (f, s.module)).collect();
        Graph { files, edges }
    }

    /// Each group of files that reach one another, with one path around it.
    fn circles(&self) -> Vec<String> {
        let reach = |from: &PathBuf| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(f) = todo.pop() {
                for d in &self.edges[&f] {
                    if seen.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&PathBuf, BTreeSet<PathBuf>> =
            self.edges.keys().map(|f| (f, reach(f))).collect();
        let mut done = BTreeSet::new();
        let mut out = Vec::new();
        for (f, r) in &reaches {
            if done.contains(*f) || !r.contains(*f) {
                continue;
            }
            let group: Vec<&PathBuf> = reaches
                .iter()
                .filter(|(g, gr)| r.contains(**g) && gr.contains(*f))
                .map(|(g, _)| *g)
                .collect();
            done.extend(group.iter().map(|g| (*g).clone()));
            let names: Vec<String> = group.iter().map(|g| g.display().to_string()).collect();
            out.push(format!("{}: {}", names.join(", "), self.path_around(f)));
        }
        out
    }

    /// The shortest path from `f` back to itself.
    fn path_around(&self, f: &PathBuf) -> String {
        let mut prev: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([f.clone()]);
        while let Some(at) = queue.pop_front() {
            for d in &self.edges[&at] {
                if d == f {
                    let mut path = vec![f.display().to_string(), at.display().to_string()];
                    let mut cur = at.clone();
                    while let Some(p) = prev.get(&cur) {
                        path.push(p.display().to_string());
                        cur = p.clone();
                    }
                    path.reverse();
                    path.push(f.display().to_string());
                    path.dedup();
                    return path.join(" → ");
                }
                if !prev.contains_key(d) && d != f {
                    prev.insert(d.clone(), at.clone());
                    queue.push_back(d.clone());
                }
            }
        }
        String::new()
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The text with comments, string and char literals blanked and `#[cfg(test)]` items removed.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
            out.push(' ');
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            i = text[start..]
                .find(&close)
                .map_or(b.len(), |e| start + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            let end = text[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = end;
            out.push_str("' '");
        } else if b[i..].starts_with(b"#[cfg(test)]") {
            i = skip_item(b, i + "#[cfg(test)]".len());
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The index after the item starting at `i`: through its matching `}` or its `;`.
fn skip_item(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

impl Source {
    fn parse(module: Vec<String>, code: &str) -> Source {
        let tokens = tokenize(code);
        let mut children = BTreeSet::new();
        for w in tokens.windows(3) {
            if w[0] == "mod" && is_ident(&w[1]) && w[2] == ";" {
                children.insert(w[1].clone());
            }
        }
        let mut source = Source {
            module,
            children,
            reexports: BTreeMap::new(),
            paths: Vec::new(),
        };
        let mut i = 0;
        while i < tokens.len() {
            let public = tokens[i] == "pub";
            // `use` trees, whose relative paths start at a child module or an external crate.
            let use_at = if public {
                (i + 1..(i + 6).min(tokens.len())).find(|j| tokens[*j] == "use")
            } else if tokens[i] == "use" {
                Some(i)
            } else {
                None
            };
            if let Some(u) =
                use_at.filter(|u| !public || tokens[i + 1..*u].iter().all(|t| t != ";"))
            {
                let mut leaves = Vec::new();
                let end = use_tree(&tokens, u + 1, Vec::new(), &mut leaves);
                for (path, name) in leaves {
                    if let Some(abs) = source.absolute(&path) {
                        if public {
                            if let Some(name) = name.filter(|n| n != "*" && n != "self") {
                                source.reexports.insert(name, abs.clone());
                            }
                        }
                        source.paths.push(abs);
                    }
                }
                i = end;
                continue;
            }
            // Paths in code: `crate::a::b`, `super::x`, `child::y`.
            let starts = tokens[i] == "crate"
                || tokens[i] == "super"
                || tokens[i] == "self"
                || source.children.contains(&tokens[i]);
            let after_colons = i > 0 && tokens[i - 1] == "::";
            if starts && !after_colons && tokens.get(i + 1).is_some_and(|t| t == "::") {
                let mut path = vec![tokens[i].clone()];
                let mut j = i + 1;
                while tokens.get(j).is_some_and(|t| t == "::")
                    && tokens.get(j + 1).is_some_and(|t| is_ident(t))
                {
                    path.push(tokens[j + 1].clone());
                    j += 2;
                }
                if let Some(abs) = source.absolute(&path) {
                    source.paths.push(abs);
                }
                i = j;
                continue;
            }
            i += 1;
        }
        source
    }

    /// A path as written here, made absolute from the crate root; `None` for an external crate.
    fn absolute(&self, path: &[String]) -> Option<Vec<String>> {
        let first = path.first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.module.clone(),
            "super" => self.module.clone(),
            name if self.children.contains(name) => {
                let mut m = self.module.clone();
                m.push(name.to_owned());
                return Some(m.into_iter().chain(path[1..].iter().cloned()).collect());
            }
            _ => return None,
        };
        let mut rest = &path[1..];
        if first == "super" {
            base.pop();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

/// Walks a `use` tree from `i`, collecting each leaf path with the name it brings in; returns
/// the index after the tree.
fn use_tree(
    tokens: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    leaves: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    while i < tokens.len() {
        let t = tokens[i].as_str();
        match t {
            "{" => {
                i += 1;
                loop {
                    i = use_tree(tokens, i, prefix.clone(), leaves);
                    match tokens.get(i).map(String::as_str) {
                        Some(",") => {
                            i += 1;
                            if tokens.get(i).is_some_and(|t| t == "}") {
                                return i + 1;
                            }
                        }
                        Some("}") => return i + 1,
                        _ => return i,
                    }
                }
            }
            "*" => {
                leaves.push((prefix, Some("*".into())));
                return i + 1;
            }
            "::" => i += 1,
            _ if is_ident(t) => {
                prefix.push(t.to_owned());
                i += 1;
                if tokens.get(i).is_some_and(|t| t == "as") {
                    if prefix.last().is_some_and(|l| l == "self") {
                        prefix.pop();
                    }
                    leaves.push((prefix, tokens.get(i + 1).cloned()));
                    return i + 2;
                }
                if tokens.get(i).is_none_or(|t| t != "::") {
                    let name = prefix.last().cloned();
                    if name.as_deref() == Some("self") {
                        prefix.pop();
                        let name = prefix.last().cloned();
                        leaves.push((prefix, name));
                    } else {
                        leaves.push((prefix, name));
                    }
                    return i;
                }
            }
            _ => return i,
        }
    }
    i
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::`, and every other character as its own token.
fn tokenize(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut end = at + c.len_utf8();
            while let Some((j, d)) = chars.peek().copied() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(code[at..end].to_owned());
        } else if c == ':' && chars.peek().is_some_and(|(_, d)| *d == ':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}
