//! Reading operator input files (config, policies, zones, root hints) so
//! that no file can wedge or flood the process.
//!
//! A FIFO in the policy directory would block the reload thread forever on
//! `open`, and a `*.yaml` symlink to `/dev/zero` would grow the process by
//! hundreds of MB per second. So: only regular files are read; they are opened
//! `O_NONBLOCK` (a FIFO swapped in after the `stat` cannot block the open)
//! and checked again with `fstat` on the open descriptor; at most
//! [`MAX_INPUT_BYTES`] are read. A UTF-8 byte order mark is dropped, and
//! YAML flow nesting deeper than [`MAX_NESTING`] is refused before the YAML
//! parser sees it (100k levels took the parser 31 s to reject).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest input file read: far above any real policy (20,000 rules are ~1 MB).
pub const MAX_INPUT_BYTES: u64 = 16 << 20;
/// Deepest YAML flow nesting (`[[…` / `{{…`) accepted; real files use 2 or 3.
pub const MAX_NESTING: usize = 64;

/// Why an input file was not read. The message names what is wrong, not
/// the file: callers add it (they know whether it is a policy, a zone...).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// What the path turned out to be instead of a regular file.
    #[error("{0}, not a regular file; only regular files are read")]
    NotRegular(&'static str),
    /// The size seen (at least), over [`MAX_INPUT_BYTES`].
    #[error("{0} bytes or more, larger than the {MAX_INPUT_BYTES}-byte limit")]
    TooBig(u64),
    /// Where the first invalid byte is.
    #[error("not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: usize },
}

/// Reads a regular file as UTF-8 text, without its byte order mark.
/// The error names what is wrong (not the file: callers add it).
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    // Refuse what is not a regular file before opening it: opening some
    // devices has side effects, and a FIFO would block a plain open.
    let meta = std::fs::metadata(path)?;
    regular(&meta)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)?;
    // The path may have been swapped between the stat and the open.
    let meta = file.metadata()?;
    regular(&meta)?;
    read_capped(file, meta.len())
}

fn regular(meta: &std::fs::Metadata) -> Result<(), ReadError> {
    let kind = meta.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    };
    Err(ReadError::NotRegular(what))
}

fn read_capped(file: File, len: u64) -> Result<String, ReadError> {
    if len > MAX_INPUT_BYTES {
        return Err(ReadError::TooBig(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow while it is read: never read past the limit.
    file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(ReadError::TooBig(bytes.len() as u64));
    }
    let mut text = String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// Checks YAML flow nesting depth; on excess, the 1-based line where it is
/// exceeded. Block nesting needs no check: it costs indentation, so the size
/// limit bounds it, and the typed deserializers reject it at the first level.
///
/// Brackets are counted where YAML reads them as flow collections: at the
/// start of a value in block context, and anywhere in flow context outside
/// quoted scalars and comments. Brackets inside plain scalars (`a[1]`),
/// quoted scalars and comments are not counted; block scalars (`|`, `>`)
/// are skipped.
pub fn check_nesting(text: &str) -> Result<(), (usize, String)> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut i = 0;
    // Block context: true while only indentation or indicators were seen on
    // this line since the last value start (so a bracket opens a collection).
    let mut at_value_start = true;
    let mut line_indent = 0usize;
    let mut indent_open = true;
    // Skipping a block scalar: lines indented deeper than this are content.
    let mut block_scalar: Option<usize> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(parent) = block_scalar {
            // At a line start: measure indentation, skip content lines.
            let start = i;
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            let blank = i >= bytes.len() || bytes[i] == b'\n' || bytes[i] == b'\r';
            if blank || i - start > parent {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                if i < bytes.len() {
                    i += 1;
                    line += 1;
                }
                continue;
            }
            block_scalar = None;
            i = start;
            continue;
        }
        match b {
            b'\n' => {
                line += 1;
                line_indent = 0;
                indent_open = true;
                if depth == 0 {
                    at_value_start = true;
                }
                i += 1;
            }
            b' ' | b'\t' | b'\r' => {
                if indent_open && b == b' ' {
                    line_indent += 1;
                }
                i += 1;
            }
            b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\n') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\''
                if at_value_start
                    || (depth > 0
                        && matches!(
                            bytes[i - 1],
                            b'[' | b'{' | b',' | b':' | b' ' | b'\t' | b'\n'
                        )) =>
            {
                indent_open = false;
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' if b == b'"' => i += 1,
                        b'\n' => line += 1,
                        c if c == b => {
                            // '' is an escaped quote inside single quotes.
                            if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                                i += 1;
                            } else {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                at_value_start = false;
            }
            b'[' | b'{' if depth > 0 || at_value_start => {
                indent_open = false;
                depth += 1;
                if depth > MAX_NESTING {
                    return Err((
                        line,
                        format!("nested deeper than {MAX_NESTING} levels; refused unparsed"),
                    ));
                }
                at_value_start = false;
                i += 1;
            }
            b']' | b'}' if depth > 0 => {
                depth -= 1;
                i += 1;
            }
            b'|' | b'>' if depth == 0 && at_value_start => {
                block_scalar = Some(line_indent);
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                if i < bytes.len() {
                    i += 1;
                    line += 1;
                }
                line_indent = 0;
                indent_open = true;
                at_value_start = true;
            }
            // Indicators after which a value starts: `- `, `? `, `: `.
            b'-' | b'?' | b':'
                if depth == 0
                    && matches!(bytes.get(i + 1), None | Some(b' ' | b'\t' | b'\n' | b'\r')) =>
            {
                indent_open = false;
                at_value_start = true;
                i += 1;
            }
            _ => {
                indent_open = false;
                if depth == 0 {
                    at_value_start = false;
                }
                i += 1;
            }
        }
    }
    Ok(())
}

/// Reads a YAML input file and checks its nesting; errors go to `diags`
/// with the file (and line), prefixed by `what` (e.g. "cannot read policy").
pub fn read_yaml(
    path: &Path,
    what: &str,
    diags: &mut crate::diagnostics::Diagnostics,
) -> Option<String> {
    let text = match read_text(path) {
        Ok(text) => text,
        Err(e) => {
            diags.error(path, None, None, format!("{what}: {e}"));
            return None;
        }
    };
    if let Err((line, e)) = check_nesting(&text) {
        diags.error(path, Some(line), None, e);
        return None;
    }
    Some(text)
}

/// An address as operators write one: `IP:PORT`, `[IPv6]:PORT`, or a bare
/// IP (on `default_port`); blanks around it are ignored.
pub fn socket_addr(raw: &str, default_port: u16) -> Option<std::net::SocketAddr> {
    let raw = raw.trim();
    raw.parse().ok().or_else(|| {
        let ip: std::net::IpAddr = raw.parse().ok()?;
        Some(std::net::SocketAddr::new(ip, default_port))
    })
}

/// One of `names` (spelled exactly, from a plain scalar), as the value at
/// the same index: a setting that is really a choice. Not serde's derived
/// enum: that reads a YAML tag as the variant, so a policy's `mode: !learn`
/// would turn the fence off without "learn" ever being written as a value.
pub fn choice<'de, D: serde::Deserializer<'de>, T: Copy + 'static>(
    deserializer: D,
    names: &'static [&'static str],
    values: &'static [T],
) -> Result<T, D::Error> {
    struct Choice<T: 'static>(&'static [&'static str], &'static [T]);
    impl<T: Copy> serde::de::Visitor<'_> for Choice<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "one of {}", self.0.join(", "))
        }
        fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<T, E> {
            match self.0.iter().position(|name| *name == raw) {
                Some(at) => Ok(self.1[at]),
                None => Err(E::unknown_variant(raw, self.0)),
            }
        }
    }
    deserializer.deserialize_str(Choice(names, values))
}

/// `Deserialize` for a unit enum through [`choice`], from its names:
/// `deserialize_choice!(Mode { "enforce" => Enforce, "learn" => Learn });`
macro_rules! deserialize_choice {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::input::choice(deserializer, &[$($name),+], &[$($ty::$variant),+])
            }
        }
    };
}
pub(crate) use deserialize_choice;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_measured_where_yaml_sees_collections() {
        let deep = format!("a: {}{}\n", "[".repeat(65), "]".repeat(65));
        assert_eq!(check_nesting(&deep).unwrap_err().0, 1);
        let ok = format!("a: {}{}\n", "[".repeat(64), "]".repeat(64));
        assert!(check_nesting(&ok).is_ok());
        let deep_map = format!("x: 1\nb:\n  - {}\n", "{a: ".repeat(100));
        assert_eq!(check_nesting(&deep_map).unwrap_err().0, 3);
        // Brackets in plain or quoted scalars, comments and block scalars do not count.
        let many = "[".repeat(200);
        for text in [
            format!("a: x{many}\n"),
            format!("a: \"{many}\"\n"),
            format!("a: '{many}'\n"),
            format!("a: b # {many}\n"),
            format!("a: |\n  {many}\n  {many}\nb: [1, [2]]\n"),
            format!("- >-\n    {many}\n- c\n"),
            format!("a: [\"{many}\", '{many}']\n"),
        ] {
            assert!(check_nesting(&text).is_ok(), "{text}");
        }
        // A block scalar ends where the indentation does.
        let after = format!("a: |\n  x\nb: {many}\n");
        assert_eq!(check_nesting(&after).unwrap_err().0, 3);
    }

    #[test]
    fn long_words_are_clipped() {
        let label = "x".repeat(10_000_000);
        let msg = crate::diagnostics::clip_long_words(format!(
            "label too long in '{label}.com' (max 63)"
        ));
        assert!(msg.len() < 400, "{}", msg.len());
        assert!(msg.starts_with("label too long in 'xxx"));
        assert!(msg.ends_with("… (10000006 bytes) (max 63)"), "{msg}");
        let short = "error: a b c".to_string();
        assert_eq!(crate::diagnostics::clip_long_words(short.clone()), short);
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("allowdns-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("p.yaml");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_text(&fifo).unwrap_err().to_string();
        assert_eq!(e, "a FIFO, not a regular file; only regular files are read");
        assert!(
            read_text(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string()
                .contains("character device")
        );
        let big = ReadError::TooBig(MAX_INPUT_BYTES + 1).to_string();
        assert!(
            big.starts_with(&format!("{} bytes", MAX_INPUT_BYTES + 1)),
            "{big}"
        );
        let bom = dir.join("bom.yaml");
        std::fs::write(&bom, "\u{feff}agent_name: a\n").unwrap();
        assert_eq!(read_text(&bom).unwrap(), "agent_name: a\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
