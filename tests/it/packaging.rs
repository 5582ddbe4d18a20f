//! What ships beside the binary: man pages and shell completions generated
//! from the clap model (checked in, so a package build needs no generator),
//! and the Debian package built from them.
//!
//! Regenerate the checked-in pages and completions after a CLI change with:
//! `ALLOWDNS_REGENERATE=1 cargo test --test it packaging::generated`

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const REGENERATE: &str = "ALLOWDNS_REGENERATE=1 cargo test --test it packaging::generated";

/// Completion files as packaged: (shell, file under deploy/completions/).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "allowdns.bash"),
    ("zsh", "_allowdns"),
    ("fish", "allowdns.fish"),
];

fn regenerating() -> bool {
    std::env::var("ALLOWDNS_REGENERATE").is_ok_and(|v| v == "1")
}

/// Every generated file, by name, beside what is checked in under `dir`:
/// overwritten when regenerating, otherwise compared, with the command that
/// fixes a difference in the failure.
fn compare_or_write(dir: &Path, generated: &[(String, Vec<u8>)]) {
    if regenerating() {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        for (name, bytes) in generated {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        eprintln!("regenerated {}", dir.display());
        return;
    }
    let mut stale = Vec::new();
    for (name, bytes) in generated {
        match std::fs::read(dir.join(name)) {
            Ok(on_disk) if &on_disk == bytes => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(e) => stale.push(format!("{name} missing ({e})")),
        }
    }
    let wanted: Vec<&String> = generated.iter().map(|(n, _)| n).collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !wanted.contains(&&name) {
            stale.push(format!("{name} is no longer generated"));
        }
    }
    assert!(
        stale.is_empty(),
        "{} is stale: {}\nregenerate with: {REGENERATE}",
        dir.display(),
        stale.join("; ")
    );
}

fn man_pages() -> Vec<(String, Vec<u8>)> {
    use clap::CommandFactory;
    let out = TempDir::new("man");
    clap_mangen::generate_to(allowdns::cli::Cli::command(), &out.0).unwrap();
    let mut pages: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out.0)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    pages.sort();
    pages
}

fn completions(shell: &str) -> Vec<u8> {
    let out = Command::new(bin())
        .args(["completions", shell])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "allowdns completions {shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn generated_man_pages_match_the_cli() {
    let pages = man_pages();
    let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
    // One page for the command and one per visible subcommand; the internal
    // stage of `run` has none.
    for page in ["allowdns.1", "allowdns-check.1", "allowdns-run.1"] {
        assert!(names.contains(&page), "no {page} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("kennel")),
        "hidden stage got a page: {names:?}"
    );
    compare_or_write(&repo("man"), &pages);
}

#[test]
fn generated_completions_match_the_cli() {
    let generated: Vec<(String, Vec<u8>)> = COMPLETIONS
        .iter()
        .map(|(shell, file)| (file.to_string(), completions(shell)))
        .collect();
    compare_or_write(&repo("deploy/completions"), &generated);
}

#[test]
fn completions_for_an_unknown_shell_are_refused() {
    let out = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_has(&stderr, "tcsh");
    assert_has(&stderr, "bash");
}

/// bash, given the shipped file, completes subcommands and their flags.
#[test]
fn bash_completes_subcommands_and_flags() {
    let file = repo("deploy/completions/allowdns.bash");
    let complete = |words: &str, cword: usize| -> String {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _allowdns allowdns \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &script])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Positive control: an empty word offers everything, so the filter below means something.
    let all = complete("allowdns ''", 1);
    assert!(all.lines().count() > 5, "{all}");
    let sub = complete("allowdns ch", 1);
    assert_eq!(sub.lines().collect::<Vec<_>>(), ["check"], "{sub}");
    let flags = complete("allowdns grant --ag", 2);
    assert!(flags.lines().any(|l| l == "--agent"), "{flags}");
    assert!(!all.contains("__kennel"), "hidden stage offered: {all}");
}

/// groff reads every page without a warning, and `man -l` renders the
/// top page with its subcommands.
#[test]
fn man_pages_render_without_warnings() {
    if Command::new("groff").arg("-v").output().is_err() {
        require_or_skip("groff (from man-db) is not installed");
        return;
    }
    let dir = repo("man");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "no pages in {}", dir.display());
    for page in &pages {
        let out = Command::new("groff")
            .args(["-man", "-Tascii", "-ww", "-z"])
            .arg(page)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}: {stderr}",
            page.display()
        );
    }
    let out = Command::new("groff")
        .args(["-man", "-Tascii"])
        .arg(dir.join("allowdns.1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_has(&text, "allowdns-check(1)");
    assert_has(&text, "allowdns-run(1)");
}
