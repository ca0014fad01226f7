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

#[test]
fn no_two_files_of_the_proxy_import_each_other() {
    let files = sources();
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, text) in files.iter().filter(|(p, _)| p.starts_with("src/proxy/")) {
        for (_, line) in code_lines(text) {
            let Some(rest) = line.trim_start().strip_prefix("use ") else {
                continue;
            };
            let rest = rest.strip_prefix("pub ").unwrap_or(rest);
            if let Some(to) = target(path, rest, &names)
                && &to != path
                && to.starts_with("src/proxy/")
            {
                edges.insert((path.clone(), to));
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
