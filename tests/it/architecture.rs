//! The house's import directions, checked over `src/`'s `use` lines and
//! `crate::` paths: every unit (a folder under `src/`, or a top-level file)
//! may import only units below it in [`LAYERS`]. A total order means no
//! import circles between concerns; a violation names file:line.
//!
//! Run it alone with `cargo test --test it architecture::`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top. A unit imports only units listed before it.
const LAYERS: &[&str] = &[
    "sync",        // the poison-tolerant lock
    "netns",       // entering a network namespace
    "diagnostics", // errors with file:line
    "input",       // reading operator files safely
    "error",       // what the binary maps to exit codes
    "policy",      // pure data: the model, compilation, matching
    "observe",     // audit, alerts, delivery, metrics
    "fence",       // nftables sets
    "state",       // the policy in force and every change to it
    "serve",       // one question's path
    "config",      // the settings file
    "ops",         // startup, control socket, reload, signals
    "tools",       // suggest
    "kennel",      // `allowdns run`
    "cli",         // the command line
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/serve/tcp.rs` → `serve`; `src/cli.rs` → `cli`.
fn unit_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules one line refers to through `crate::`.
fn targets(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e}}`: the names at depth 0 of the group.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.push(first_ident(&item));
        } else {
            out.push(first_ident(rest));
        }
    }
    out.retain(|t| !t.is_empty());
    out
}

/// The file's lines with comments cut, numbered from 0; a `crate::{` group
/// that rustfmt wrapped over several lines is joined onto its first line.
fn statements(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut open = 0i32; // unclosed braces of a `crate::{` group being joined
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if open > 0 {
            let last = out.last_mut().unwrap();
            last.1.push(' ');
            last.1.push_str(code.trim());
        } else {
            out.push((n, code.to_string()));
        }
        let current = &out.last().unwrap().1;
        open = match current.rfind("crate::{") {
            Some(at) => {
                let group = &current[at..];
                group.matches('{').count() as i32 - group.matches('}').count() as i32
            }
            None => 0,
        };
    }
    out
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, usize> = LAYERS.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    let mut all = Vec::new();
    files(&src, &mut all);
    all.sort();
    let mut violations = Vec::new();
    let mut edges = 0;
    for file in &all {
        let from = unit_of(&src, file);
        if from == "main" || from == "lib" {
            continue; // the binary and the map sit above everything
        }
        let from_rank = *rank
            .get(from.as_str())
            .unwrap_or_else(|| panic!("{}: unit '{from}' is not in LAYERS", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in statements(&text) {
            for to in targets(&line) {
                if to == from || to == "self" {
                    continue;
                }
                edges += 1;
                let Some(&to_rank) = rank.get(to.as_str()) else {
                    violations.push(format!("{}:{}: unknown unit '{to}'", file.display(), n + 1));
                    continue;
                };
                if to_rank > from_rank {
                    violations.push(format!(
                        "{}:{}: {from} imports {to}, which sits above it: {}",
                        file.strip_prefix(&src).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        edges > 50,
        "the scan found only {edges} imports; is it reading src/?"
    );
    assert!(
        violations.is_empty(),
        "{} import(s) against the layers:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn the_scanner_reads_grouped_and_nested_imports() {
    assert_eq!(targets("use crate::policy::Rule;"), ["policy"]);
    assert_eq!(
        targets("use crate::{fence, serve::wire::{self, Dropped}, state};"),
        ["fence", "serve", "state"]
    );
    assert_eq!(
        targets("let x = crate::observe::metrics::METRICS; // crate::cli"),
        ["observe"]
    );
    assert!(targets("// crate::cli in a comment").is_empty());
    let wrapped =
        statements("use crate::{\n    fence::Firewall,\n    state::State,\n};\nfn x() {}\n");
    assert_eq!(wrapped.len(), 2, "{wrapped:?}");
    assert_eq!(targets(&wrapped[0].1), ["fence", "state"]);
}
