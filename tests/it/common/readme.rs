//! The README's marked examples (`<!-- readme-test: KIND -->`) and how
//! their shown output is compared with what allowdns prints.

use super::repo;

/// A README block marked `<!-- readme-test: KIND -->` on the line before it.
pub struct ReadmeBlock {
    pub kind: String,
    pub lines: Vec<String>,
}

/// Every marked block of the README, in order.
pub fn readme_blocks() -> Vec<ReadmeBlock> {
    let text = std::fs::read_to_string(repo("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .trim()
            .strip_prefix("<!-- readme-test:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "a code block follows the marker: {line}"
        );
        let body: Vec<String> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .map(str::to_string)
            .collect();
        blocks.push(ReadmeBlock {
            kind: kind.trim().to_string(),
            lines: body,
        });
    }
    blocks
}

/// The `$ ` commands of a console block, each with the output lines shown after it.
pub fn console_commands(block: &ReadmeBlock) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in &block.lines {
        match line.strip_prefix("$ ") {
            Some(cmd) => out.push((cmd.to_string(), Vec::new())),
            None if line.trim().is_empty() => {}
            None => out
                .last_mut()
                .expect("output follows a command")
                .1
                .push(line.clone()),
        }
    }
    out
}

/// What varies between runs (digits: times, ports, ids; the width of
/// whitespace) made equal.
pub fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut last = None;
    for c in line.trim().chars() {
        let c = if c.is_ascii_digit() {
            '0'
        } else if c.is_whitespace() {
            ' '
        } else {
            c
        };
        if (c == '0' || c == ' ') && last == Some(c) {
            continue;
        }
        out.push(c);
        last = Some(c);
    }
    out
}

/// The shown lines that `actual` does not have (compared normalized).
pub fn missing_lines(shown: &[String], actual: &str) -> Vec<String> {
    let have: std::collections::HashSet<String> = actual.lines().map(normalize).collect();
    shown
        .iter()
        .filter(|l| !l.trim().is_empty() && !have.contains(&normalize(l)))
        .cloned()
        .collect()
}
