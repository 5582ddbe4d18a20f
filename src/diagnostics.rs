//! Errors and warnings about input files, collected rather than thrown, so
//! one run of `allowdns check` reports every problem with file, line and field.

use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The input is rejected; the resolver does not start (or keeps the old set).
    Error,
    /// The input loads, but probably does not mean what its author thinks.
    Warning,
}

/// One problem in one input file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when it can be located.
    pub line: Option<usize>,
    /// The field path, e.g. `expected_outbound[2].destination`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{kind}: {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything found while loading a set of files.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error(
        &mut self,
        file: &Path,
        line: Option<usize>,
        field: Option<String>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, file, line, field, message.into());
    }

    pub fn warning(
        &mut self,
        file: &Path,
        line: Option<usize>,
        field: Option<String>,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, file, line, field, message.into());
    }

    fn push(
        &mut self,
        severity: Severity,
        file: &Path,
        line: Option<usize>,
        field: Option<String>,
        message: String,
    ) {
        self.items.push(Diagnostic {
            severity,
            file: file.to_path_buf(),
            line,
            field,
            // Offending input is quoted in messages: keep a huge one from flooding.
            message: clip_long_words(message),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }
}

/// Reports a YAML syntax or shape error with the parser's own location.
pub fn yaml_error(diags: &mut Diagnostics, file: &Path, source: &str, error: &serde_yaml::Error) {
    let line = error.location().map(|l| l.line());
    // serde_yaml appends " at line N column M"; the location is already in the prefix.
    let text = error.to_string();
    let mut text = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let misindented = ["did not find expected", "mapping values are not allowed"];
    if misindented.iter().any(|m| text.contains(m))
        && let Some(hint) = line.and_then(|l| indentation_hint(source, l))
    {
        text = format!("{text}: {hint}");
    }
    diags.error(file, line, None, text);
}

/// What the list above line `at` (1-based) expects there: YAML's own
/// message names a token, not the place in the file.
fn indentation_hint(source: &str, at: usize) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let here = lines.get(at.checked_sub(1)?)?;
    let column = here.len() - here.trim_start().len();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let (entry_at, entry) = lines[..at - 1]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| l.trim_start().starts_with("- "))?;
    let dash = indent(entry);
    let field = dash + 2;
    let list = lines[..entry_at]
        .iter()
        .enumerate()
        .rev()
        .find(|(_, l)| {
            let code = l.split(" #").next().unwrap_or(l).trim_end();
            indent(l) < dash && code.ends_with(':') && !l.trim_start().starts_with('#')
        })
        .map(|(i, l)| {
            let key = l.trim().trim_start_matches("- ").trim_end_matches(':');
            format!(" of `{key}` (line {})", i + 1)
        })
        .unwrap_or_default();
    Some(format!(
        "in the list{list}, an entry starts with `- ` at column {} and its fields \
         line up at column {}; line {at} starts at column {}",
        dash + 1,
        field + 1,
        column + 1
    ))
}

/// Finds the line of the `nth` (0-based) standalone occurrence of `needle`.
///
/// serde_yaml keeps no spans, so semantic errors are located by their value;
/// a neighbour character that could be part of a name disqualifies a hit, so
/// `example.com` is not found inside `*.example.com`.
pub fn locate(source: &str, needle: &str, nth: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || "-_.*?".contains(c);
    let mut seen = 0;
    for (index, line) in source.lines().enumerate() {
        let code = line.split(" #").next().unwrap_or(line);
        let mut start = 0;
        while let Some(pos) = code[start..].find(needle) {
            let at = start + pos;
            let before = code[..at].chars().next_back();
            let after = code[at + needle.len()..].chars().next();
            if !before.is_some_and(is_name_char) && !after.is_some_and(is_name_char) {
                if seen == nth {
                    return Some(index + 1);
                }
                seen += 1;
                break;
            }
            start = at + needle.len();
        }
    }
    None
}

/// Offending input quoted in an error message is cut to this many bytes.
pub const MAX_QUOTED_BYTES: usize = 256;

/// Cuts every run of non-blank text longer than [`MAX_QUOTED_BYTES`] to that
/// length plus `… (N bytes)`, so a 10 MB label cannot make a 20 MB error line.
pub fn clip_long_words(message: String) -> String {
    if message.len() <= 4 * MAX_QUOTED_BYTES {
        let longest = message.split(char::is_whitespace).map(str::len).max();
        if longest.unwrap_or(0) <= MAX_QUOTED_BYTES {
            return message;
        }
    }
    let mut out = String::with_capacity(4 * MAX_QUOTED_BYTES);
    let mut rest = message.as_str();
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..word_end];
        if word.len() > MAX_QUOTED_BYTES {
            let mut cut = MAX_QUOTED_BYTES;
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&word[..cut]);
            out.push_str(&format!("… ({} bytes)", word.len()));
        } else {
            out.push_str(word);
        }
        rest = &rest[word_end..];
        let blank_end = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..blank_end]);
        rest = &rest[blank_end..];
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_misindented_list_entry_says_where_entries_and_fields_go() {
        let text = "agent_name: a\nexpected_outbound:\n  - destination: a.example\n    port: 443\n   - destination: b.example\n";
        // Positive control: the same list, indented right, parses.
        let right = text.replace("   - destination: b", "  - destination: b");
        assert!(serde_yaml::from_str::<serde_yaml::Value>(&right).is_ok());
        let error = serde_yaml::from_str::<serde_yaml::Value>(text).unwrap_err();
        let mut diags = Diagnostics::default();
        yaml_error(&mut diags, Path::new("p.yaml"), text, &error);
        let message = diags.items[0].to_string();
        assert_eq!(
            message,
            "error: p.yaml:5: did not find expected '-' indicator: in the list of \
             `expected_outbound` (line 2), an entry starts with `- ` at column 3 and its \
             fields line up at column 5; line 5 starts at column 4"
        );
    }

    use super::{Diagnostics, locate, yaml_error};
    use std::path::Path;

    #[test]
    fn locate_skips_substrings_inside_patterns() {
        let src = "a:\n  - \"*.example.com\"\n  - \"example.com\"\n  - example.com # again\n";
        assert_eq!(locate(src, "example.com", 0), Some(3));
        assert_eq!(locate(src, "example.com", 1), Some(4));
        assert_eq!(locate(src, "*.example.com", 0), Some(2));
        assert_eq!(locate(src, "missing", 0), None);
    }
}
