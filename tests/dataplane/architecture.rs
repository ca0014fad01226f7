//! The rules of docs/architecture.md ("Who may import whom"), checked on the source tree: a
//! change that breaks one fails here, naming the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every Rust file under `src/`, as a path relative to the repository, with its text.
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeMap::new();
    let mut folders = vec![root.join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("a source folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).expect("under the root");
                let text = std::fs::read_to_string(&path).expect("readable");
                files.insert(relative.to_string_lossy().replace('\\', "/"), text);
            }
        }
    }
    files
}

/// The lines of `text` outside its `#[cfg(test)]` module (tests may reach further).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end].lines().enumerate().map(|(i, l)| (i + 1, l))
}

fn offenders(
    files: &BTreeMap<String, String>,
    scope: impl Fn(&str) -> bool,
    needle: &str,
) -> Vec<String> {
    files
        .iter()
        .filter(|(path, _)| scope(path))
        .flat_map(|(path, text)| {
            code_lines(text)
                .filter(|(_, line)| line.contains(needle) && !line.trim_start().starts_with("//"))
                .map(move |(n, line)| format!("{path}:{n}: {}", line.trim()))
        })
        .collect()
}

#[test]
fn nothing_outside_the_proxy_imports_it_but_the_wiring() {
    let files = sources();
    let found = offenders(
        &files,
        |p| !p.starts_with("src/proxy/") && p != "src/cli.rs",
        "crate::proxy",
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_proxy_does_not_start_health_checks_or_reach_the_sources() {
    let files = sources();
    for needle in [
        "crate::health",
        "crate::controller",
        "crate::standalone",
        "crate::admin",
    ] {
        let found = offenders(&files, |p| p.starts_with("src/proxy/"), needle);
        assert!(found.is_empty(), "{needle}: {found:#?}");
    }
}

#[test]
fn the_core_does_no_io_and_knows_no_front_door() {
    let files = sources();
    let core = |p: &str| {
        ["src/api/", "src/discovery/", "src/balancer/", "src/plane/"]
            .iter()
            .any(|c| p.starts_with(c))
            || p == "src/status.rs"
    };
    for needle in [
        "tokio::net",
        "std::net::TcpStream",
        "std::fs",
        "kube::Client",
        "crate::proxy",
        "crate::controller",
        "crate::standalone",
        "crate::health",
        "crate::admin",
    ] {
        let found = offenders(&files, core, needle);
        assert!(found.is_empty(), "{needle}: {found:#?}");
    }
}

#[test]
fn gateway_translation_does_no_io() {
    let files = sources();
    let pure = |p: &str| p == "src/gateway/translate.rs" || p == "src/gateway/api.rs";
    for needle in [
        "tokio::",
        "std::net::TcpStream",
        "std::fs",
        "kube::Client",
        "kube::Api",
        "crate::proxy",
        "crate::controller",
        "Timestamp::now",
    ] {
        let found = offenders(&files, pure, needle);
        assert!(found.is_empty(), "{needle}: {found:#?}");
    }
}

#[test]
fn the_http1_wire_code_imports_nothing_above_it() {
    let files = sources();
    let found: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.starts_with("src/proxy/http1/"))
        .flat_map(|(path, text)| {
            code_lines(text)
                .filter(|(_, l)| {
                    (l.contains("crate::") && !l.contains("crate::proxy::http1"))
                        || l.contains("super::super")
                })
                .filter(|(_, l)| l.trim_start().starts_with("use "))
                .map(move |(n, l)| format!("{path}:{n}: {}", l.trim()))
        })
        .collect();
    assert!(found.is_empty(), "{found:#?}");
}

/// The file a `use` path inside `src/proxy/` names, if it is one of ours.
fn target(from: &str, path: &str, files: &BTreeSet<String>) -> Option<String> {
    let from = PathBuf::from(from);
    let dir = if from.file_name().is_some_and(|n| n == "mod.rs") {
        from.parent()?.to_path_buf()
    } else {
        from.with_extension("")
    };
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: PathBuf;
    match parts.first().copied() {
        Some("crate") => {
            base = PathBuf::from("src");
            parts.remove(0);
        }
        Some("super") => {
            base = dir.parent()?.to_path_buf();
            parts.remove(0);
            while parts.first() == Some(&"super") {
                base = base.parent()?.to_path_buf();
                parts.remove(0);
            }
        }
        Some("self") => {
            base = dir.clone();
            parts.remove(0);
        }
        _ => return None,
    }
    // The longest prefix of the path that is a file of ours.
    let mut best = None;
    for part in parts {
        let part = part.trim_matches(|c: char| c == '{' || c == '}' || c == ';' || c == ' ');
        if part.is_empty() || part.contains(',') {
            break;
        }
        base = base.join(part);
        for candidate in [base.with_extension("rs"), base.join("mod.rs")] {
            let name = candidate.to_string_lossy().replace('\\', "/");
            if files.contains(&name) {
                best = Some(name);
            }
        }
    }
    best
}

/// The paths of ours a line names: in a `use`, or written out in the code
/// (`super::http1::LeanHead`), so that an import cannot hide from the check below.
fn paths_in(line: &str) -> Vec<&str> {
    let line = line.trim_start();
    let line = line.strip_prefix("pub ").unwrap_or(line);
    if let Some(rest) = line.strip_prefix("use ") {
        return vec![rest];
    }
    let mut found = Vec::new();
    for (at, _) in line.match_indices("::") {
        let start = line[..at]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |i| i + 1);
        let path = &line[start..];
        let end = path
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(path.len());
        let path = &path[..end];
        if ["crate::", "super::", "self::"]
            .iter()
            .any(|p| path.starts_with(p))
            && found.last() != Some(&path)
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn no_two_files_of_the_proxy_import_each_other() {
    let files = sources();
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, text) in files.iter().filter(|(p, _)| p.starts_with("src/proxy/")) {
        for (_, line) in code_lines(text) {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in paths_in(line) {
                if let Some(to) = target(path, used, &names)
                    && &to != path
                    && to.starts_with("src/proxy/")
                {
                    edges.insert((path.clone(), to));
                }
            }
        }
    }
    assert!(
        edges.len() > 40,
        "the import graph was read: {} edges",
        edges.len()
    );
    let pairs: Vec<_> = edges
        .iter()
        .filter(|(a, b)| edges.contains(&(b.clone(), a.clone())))
        .collect();
    assert!(pairs.is_empty(), "files that import each other: {pairs:#?}");
}

/// Longest file of `src/proxy/` (lines before its `#[cfg(test)]` module) and longest function
/// (from its `fn` line to its closing brace): a file or a function past these is split by
/// responsibility, into named steps, before it grows further (issue 16).
const MAX_FILE_LINES: usize = 400;
const MAX_FN_LINES: usize = 60;

/// Functions of `src/proxy/` still longer than [`MAX_FN_LINES`], with the length each may not
/// exceed: not yet split into named steps. They may shrink (then lower the figure, or remove the
/// line), never grow; a new function may not join them.
const NOT_YET_SPLIT: &[(&str, &str, usize)] = &[];

/// The name of the function a line declares, if it declares one with a body's brace to come
/// (not a trait's signature, not a `fn` pointer type).
fn declared_fn(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for word in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
        "extern \"C\" ",
    ] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&rest[..end])
}

/// Every function of a file's code (before its tests) with its first line and its length in
/// lines, `fn` line to closing brace, as `cargo fmt` lays it out (the brace at the `fn`'s
/// indentation).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code_lines(text).map(|(_, l)| l).collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = declared_fn(line) else {
            continue;
        };
        let indent = &line[..line.len() - line.trim_start().len()];
        // The signature ends where its body opens, or with `;` for one without a body.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        let opened = lines[open].trim_end();
        if opened.ends_with(';') {
            continue;
        }
        if opened.ends_with('}') && opened.contains('{') {
            found.push((name.to_owned(), i + 1, open - i + 1));
            continue;
        }
        let closing = format!("{indent}}}");
        if let Some(end) = (open..lines.len()).find(|&j| lines[j].trim_end() == closing) {
            found.push((name.to_owned(), i + 1, end - i + 1));
        }
    }
    found
}

#[test]
fn proxy_files_and_functions_stay_short() {
    let files = sources();
    let mut faults = Vec::new();
    let mut functions_seen = 0;
    for (path, text) in files.iter().filter(|(p, _)| p.starts_with("src/proxy/")) {
        let lines = code_lines(text).count();
        if lines > MAX_FILE_LINES {
            faults.push(format!(
                "{path}: {lines} lines before its tests (at most {MAX_FILE_LINES}): split it by responsibility"
            ));
        }
        for (name, line, length) in functions(text) {
            functions_seen += 1;
            let allowed = NOT_YET_SPLIT
                .iter()
                .find(|(p, n, _)| p == path && *n == name)
                .map_or(MAX_FN_LINES, |&(_, _, most)| most);
            if length > allowed {
                faults.push(format!(
                    "{path}:{line}: fn {name} is {length} lines (at most {allowed}): split it into named steps"
                ));
            }
        }
    }
    assert!(
        functions_seen > 300,
        "the functions were read: {functions_seen}"
    );
    assert!(faults.is_empty(), "{faults:#?}");
}

#[test]
fn the_function_measure_counts_from_fn_to_closing_brace() {
    let text = "fn one() -> u8 { 1 }\n\npub async fn two(\n    a: u8,\n) -> u8\nwhere\n    u8: Copy,\n{\n    let b = a;\n    b\n}\n\ntrait T {\n    fn sig(&self);\n    fn body(&self) {\n        let f: fn(u8) = |_| {};\n    }\n}\n";
    let found = functions(text);
    assert_eq!(
        found,
        vec![
            ("one".to_owned(), 1, 1),
            ("two".to_owned(), 3, 9),
            ("body".to_owned(), 15, 3),
        ]
    );
}
