//! The crate's layers, checked from its source: the pure core imports no shell module, and no two
//! top-level modules depend on each other (directly or through others).
//!
//! The scanner reads each file under `src/` with its comments and literals blanked out, and takes
//! every `crate::<module>` path: in `use` declarations (nested groups `use crate::{a::x, b::{y,
//! z}}` included) and inline (`crate::sync::SyncError` in an expression or a type).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The modules that do I/O or hold the process together; `src/core` must import none of them.
const SHELL_MODULES: &[&str] = &[
    "sync",
    "storage",
    "devices",
    "server",
    "controller",
    "standalone",
    "telemetry",
    "cli",
    "analysis",
];

/// The code of a Rust source with comments, string and character literals replaced by spaces
/// (newlines kept, so positions keep their line), so that only real paths remain.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"') | Some('#'))
            && !is_ident_char(chars.get(i.wrapping_sub(1)))
        {
            // A raw string: r"..." or r#"..."#, with as many `#` at the end as at the start.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &skipped in &chars[i..j.min(chars.len())] {
                blank(&mut out, skipped);
            }
            i = j;
        } else if c == '"' {
            blank(&mut out, c);
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
                if i < chars.len() {
                    blank(&mut out, chars[i]);
                    i += 1;
                }
            }
            if i < chars.len() {
                blank(&mut out, chars[i]);
                i += 1;
            }
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), else a lifetime or label ('a).
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for &skipped in &chars[i..=end] {
                        blank(&mut out, skipped);
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The top-level modules a source names through `crate::`: `crate::x::…` anywhere, and every
/// first segment of a group `crate::{x::…, y, z::{…}}`.
fn crate_modules(source: &str) -> BTreeSet<String> {
    let code = code_only(source);
    let mut modules = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate") {
        let before = code[..code.len() - rest.len() + at].chars().next_back();
        let after = &rest[at + "crate".len()..];
        rest = after;
        if is_ident_char(before.as_ref()) || before == Some('$') {
            continue;
        }
        let after = after.trim_start();
        let Some(path) = after.strip_prefix("::") else {
            continue;
        };
        let path = path.trim_start();
        if let Some(group) = path.strip_prefix('{') {
            modules.extend(group_heads(group));
        } else {
            let name: String = path
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                modules.insert(name);
            }
        }
    }
    modules
}

/// The first segment of each item of a `{…}` group (`text` starts just after the `{`), up to its
/// closing brace; nested groups belong to their item.
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_item_start = true;
    let mut chars = text.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item_start = true,
            c if c.is_whitespace() => {}
            c if at_item_start && depth == 0 && (c.is_alphabetic() || c == '_') => {
                let name: String = text[index..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                for _ in 1..name.chars().count() {
                    chars.next();
                }
                if name != "self" {
                    heads.push(name);
                }
                at_item_start = false;
            }
            _ => at_item_start = false,
        }
    }
    heads
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("a readable source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The library's top-level module a file belongs to (`src/core/x.rs` and `src/core.rs`: `core`),
/// or `None` for the crate roots and binaries, which are not modules of the library.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_owned())
}

/// Which top-level modules each one uses, with the files that make each dependency.
type ModuleGraph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn module_graph(src: &Path) -> ModuleGraph {
    let mut graph = ModuleGraph::new();
    for file in rust_files(src) {
        let Some(module) = top_module(src, &file) else {
            continue;
        };
        let source = fs::read_to_string(&file).expect("a readable source file");
        let uses = graph.entry(module.clone()).or_default();
        for used in crate_modules(&source) {
            if used != module {
                let shown = file.strip_prefix(src).unwrap_or(&file).display().to_string();
                uses.entry(used).or_default().insert(shown);
            }
        }
    }
    graph
}

/// A cycle of the graph, as the modules along it (the first repeated at the end), if any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path
                    .iter()
                    .position(|n| n == node)
                    .expect("an open node is on the path");
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

fn edges(graph: &ModuleGraph) -> BTreeMap<String, BTreeSet<String>> {
    graph
        .iter()
        .map(|(module, uses)| (module.clone(), uses.keys().cloned().collect()))
        .collect()
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_core_imports_no_shell_module() {
    let graph = module_graph(&src_dir());
    let core = graph.get("core").expect("src/core exists");
    let violations: Vec<String> = core
        .iter()
        .filter(|(used, _)| SHELL_MODULES.contains(&used.as_str()))
        .map(|(used, files)| format!("core imports the shell module `{used}` in {files:?}"))
        .collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_two_top_level_modules_depend_on_each_other() {
    let graph = module_graph(&src_dir());
    if let Some(cycle) = find_cycle(&edges(&graph)) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| format!("{} -> {} (in {:?})", pair[0], pair[1], graph[&pair[0]][&pair[1]]))
            .collect();
        panic!(
            "a cycle between top-level modules: {}\n{}",
            cycle.join(" -> "),
            steps.join("\n")
        );
    }
}

#[test]
fn the_scanner_finds_use_groups_and_inline_paths_but_not_comments_or_strings() {
    let source = r##"
        //! See [`crate::server`] and crate::controller in the docs.
        use std::collections::BTreeMap;
        use crate::{
            api::{Bundle, constants::reason},
            core::conditions::{self, status_of},
            sync::{SyncError, layout::{zip_key}},
        };
        pub(crate) use crate :: storage::parse_duration;
        /* crate::standalone in a block comment /* nested crate::cli */ still a comment */
        fn f<'a>(x: &'a str) -> char {
            let _ = "crate::devices in a string";
            let _ = r#"crate::devices in a raw string"#;
            let _ = crate::telemetry::error_chain;
            let _: Option<crate::protocol::Wire> = None;
            let not_a_path = my_crate::other::thing;
            '"'
        }
        macro_rules! m { () => { $crate::ignored::Path }; }
        fn g() { let _ = crate::crypto::key_id; }
    "##;
    let found: Vec<String> = crate_modules(source).into_iter().collect();
    assert_eq!(
        found,
        [
            "api",
            "core",
            "crypto",
            "protocol",
            "storage",
            "sync",
            "telemetry"
        ]
    );
}

#[test]
fn the_cycle_finder_reports_a_cycle_and_accepts_a_layered_graph() {
    let graph = |pairs: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    };
    let layered = graph(&[
        ("core", "api"),
        ("sync", "core"),
        ("sync", "api"),
        ("server", "sync"),
    ]);
    assert_eq!(find_cycle(&layered), None);
    let cyclic = graph(&[
        ("core", "api"),
        ("core", "sync"),
        ("sync", "storage"),
        ("storage", "core"),
    ]);
    assert_eq!(
        find_cycle(&cyclic).expect("a cycle"),
        ["core", "sync", "storage", "core"]
    );
}
