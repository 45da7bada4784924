//! `.env` files, as Hermes and most twelve-factor tools write them: `KEY=VALUE` lines read into the
//! process environment before the configuration, never overriding a variable already set, so the
//! environment still wins over `.env`, and `.env` over `config.yaml`.
//!
//! The syntax is `dotenvy`'s (comments, `export`, single quotes taken literally, double quotes with
//! `\n` `\\` `\"` `\'` `\$` escapes, values spanning lines inside quotes, ` #` comments after a
//! value, `$VAR` and `${VAR}` expanded outside single quotes). Owns: reading the file, naming the
//! first line it cannot read by number, and leaving variables already set alone. Must never: print
//! a value (they are secrets): dotenvy's own error holds the line's text, so it is never shown.

use std::cell::Cell;
use std::io::Read;
use std::path::Path;

/// The first line of a `.env` text that cannot be read, by number from 1; its text is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "line {0}: expected KEY=VALUE, with a value holding spaces quoted, its quotes closed and no \
     escapes but \\n \\\\ \\\" \\' \\$"
)]
pub struct BadLine(pub usize);

/// A `.env` file that cannot be read; never shows a value.
#[derive(Debug, thiserror::Error)]
pub enum DotenvError {
    #[error("{file}: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}, {line}")]
    Line { file: String, line: BadLine },
}

/// The variables a `.env` text sets, in order, or the first line that cannot be read.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, BadLine> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let read = Cell::new(0);
    let mut vars = Vec::new();
    let lines = OneLineAtATime {
        text: text.as_bytes(),
        read: &read,
    };
    for entry in dotenvy::from_read_iter(lines) {
        match entry {
            Ok(var) => vars.push(var),
            Err(e) => {
                // dotenvy has read up to the end of the entry it fails on; the entry's text (never
                // shown) tells how many lines back it starts.
                let done = &text.as_bytes()[..read.get()];
                let last = done.iter().filter(|&&b| b == b'\n').count()
                    + usize::from(!done.ends_with(b"\n"));
                let spans = match &e {
                    dotenvy::Error::LineParse(entry, _) => {
                        let entry = entry.strip_suffix('\n').unwrap_or(entry);
                        entry.matches('\n').count()
                    }
                    _ => 0,
                };
                return Err(BadLine(last.saturating_sub(spans).max(1)));
            }
        }
    }
    Ok(vars)
}

/// Gives dotenvy (which reads through a `BufReader`) one line per read, so that `read` is always the
/// end of the entries it has parsed and never further.
struct OneLineAtATime<'a> {
    text: &'a [u8],
    read: &'a Cell<usize>,
}

impl Read for OneLineAtATime<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.text[self.read.get()..];
        let line = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let n = line.min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read.set(self.read.get() + n);
        Ok(n)
    }
}

/// The variables the file at `path` sets.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, DotenvError> {
    let file = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| DotenvError::Read {
        file: file(),
        error,
    })?;
    parse(&text).map_err(|line| DotenvError::Line { file: file(), line })
}

/// Read `path` into the process environment, leaving variables already set alone. Returns the
/// names it set. Call before any thread starts (the environment is process-wide).
pub fn load(path: &Path) -> Result<Vec<String>, DotenvError> {
    let vars = read(path)?;
    let mut set = Vec::new();
    for (key, value) in vars {
        if std::env::var_os(&key).is_none() {
            std::env::set_var(&key, value);
            set.push(key);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
        vars.iter().find(|(n, _)| n == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn values_quotes_comments_and_export() {
        let text = "\u{feff}# Hermes\nexport WECOM_CALLBACK_TOKEN=0123\nA = \"plain value\" # note\nB='single # kept'\nC=\"line\\nnext \\\"q\\\"\"\nD=\nE=a=b\nF= # empty\nG=\"two\nlines\"\n\n";
        let vars = parse(text).unwrap();
        let get = |k| get(&vars, k);
        assert_eq!(get("WECOM_CALLBACK_TOKEN"), Some("0123"), "text, zero kept");
        assert_eq!(get("A"), Some("plain value"));
        assert_eq!(get("B"), Some("single # kept"));
        assert_eq!(get("C"), Some("line\nnext \"q\""));
        assert_eq!(get("D"), Some(""));
        assert_eq!(get("E"), Some("a=b"));
        assert_eq!(get("F"), Some(""), "a comment, not a value");
        assert_eq!(
            get("G"),
            Some("two\nlines"),
            "a quoted value may span lines"
        );
    }

    #[test]
    fn dollar_variables_are_expanded_except_in_single_quotes() {
        let text = "DOTENV_UNIT_BASE=https://x\nDOTENVUNITBASE=y\nU=${DOTENV_UNIT_BASE}/a\nV=\"$DOTENVUNITBASE/b\"\nW='${DOTENV_UNIT_BASE}'\nX=\"pa\\$\\$word\"\nY=${DOTENV_UNIT_NEVER_SET}\nZ=$DOTENV_UNIT_BASE\n";
        let vars = parse(text).unwrap();
        let get = |k| get(&vars, k);
        assert_eq!(get("U"), Some("https://x/a"));
        assert_eq!(get("V"), Some("y/b"));
        assert_eq!(
            get("W"),
            Some("${DOTENV_UNIT_BASE}"),
            "single quotes: literal"
        );
        assert_eq!(get("X"), Some("pa$$word"), "escaped");
        assert_eq!(get("Y"), Some(""), "set nowhere");
        // Unbraced, the name ends before `_`: `$DOTENV` (unset) then `_UNIT_BASE`.
        assert_eq!(get("Z"), Some("_UNIT_BASE"));
        // A `$` before no name is dropped; unbraced just before a closing `"`, it is an error.
        assert_eq!(parse("P=pa$\n"), Ok(vec![("P".into(), "pa".into())]));
        assert_eq!(parse("P=\"$DOTENVUNITBASE\"\n"), Err(BadLine(1)));
    }

    #[test]
    fn a_bad_line_is_named_by_number_without_its_value() {
        assert_eq!(parse("A=1\nno equals sign here").unwrap_err(), BadLine(2));
        let err = parse("OK=1\n\nB=\"secret-never-shown").unwrap_err();
        assert_eq!(err, BadLine(3));
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(parse("1X=2").is_err());
        // Unquoted spaces, an unknown escape; the line a quote left open starts on.
        assert_eq!(parse("A=\"x\ny\"\nB=two words\n"), Err(BadLine(3)));
        assert_eq!(parse("A=\"a\\tb\"\n"), Err(BadLine(1)));
        assert_eq!(parse("# c\nA=1\nB='open\nC=2\n\n"), Err(BadLine(3)));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "OK=1\nTOKEN=\"secret-never-shown\" x\n").unwrap();
        let err = read(&path).unwrap_err();
        assert!(
            err.to_string().ends_with(".env, line 2: expected KEY=VALUE, with a value holding spaces quoted, its quotes closed and no escapes but \\n \\\\ \\\" \\' \\$"),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains("secret"), "{err:?}");
    }
}
