//! `.env` files, as Hermes and most twelve-factor tools write them: `KEY=VALUE` lines read into the
//! process environment before the configuration, never overriding a variable already set, so the
//! environment still wins over `.env`, and `.env` over `config.yaml`.
//!
//! Owns: the file syntax (comments, `export`, single and double quotes, `\n` escapes in double
//! quotes, ` #` comments after unquoted values). Must never: print a value (they are secrets).

use std::path::Path;

/// A line the parser cannot read, by number; the value is never shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}, line {line}: {reason}")]
pub struct DotenvError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// The variables a `.env` text sets, in order.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut vars = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            return Err((n + 1, "expected KEY=VALUE".into()));
        };
        let key = key.trim();
        let valid = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((n + 1, format!("{key:?} is not a variable name")));
        }
        vars.push((
            key.to_owned(),
            value_of(value.trim()).map_err(|e| (n + 1, e))?,
        ));
    }
    Ok(vars)
}

fn value_of(value: &str) -> Result<String, String> {
    let unterminated = |q| format!("the value's {q} quote is not closed on this line");
    if let Some(rest) = value.strip_prefix('\'') {
        let end = rest.find('\'').ok_or_else(|| unterminated("'"))?;
        return Ok(rest[..end].to_owned());
    }
    if let Some(rest) = value.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        return Err(unterminated("\""));
    }
    // Unquoted: a `#` at the start or after a space starts a comment.
    if value.starts_with('#') {
        return Ok(String::new());
    }
    let value = value.find(" #").map_or(value, |i| &value[..i]);
    Ok(value.trim_end().to_owned())
}

/// The variables the file at `path` sets.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, DotenvError> {
    let fail = |line, reason| DotenvError {
        file: path.display().to_string(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(0, e.to_string()))?;
    parse(&text).map_err(|(line, reason)| fail(line, reason))
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

    #[test]
    fn values_quotes_comments_and_export() {
        let text = "# Hermes\nexport WECOM_CALLBACK_TOKEN=0123\nA = plain value # note\nB='single # kept'\nC=\"line\\nnext \\\"q\\\"\"\nD=\nE=a=b\nF= # empty\n\n";
        let vars = parse(text).unwrap();
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WECOM_CALLBACK_TOKEN"), Some("0123"), "text, zero kept");
        assert_eq!(get("A"), Some("plain value"));
        assert_eq!(get("B"), Some("single # kept"));
        assert_eq!(get("C"), Some("line\nnext \"q\""));
        assert_eq!(get("D"), Some(""));
        assert_eq!(get("E"), Some("a=b"));
        assert_eq!(get("F"), Some(""), "a comment, not a value");
    }

    #[test]
    fn a_bad_line_is_named_by_number_without_its_value() {
        assert_eq!(parse("A=1\nno equals sign here").unwrap_err().0, 2);
        let (line, reason) = parse("OK=1\n\nB=\"secret-never-shown").unwrap_err();
        assert_eq!(line, 3);
        assert!(!reason.contains("secret"), "{reason}");
        assert!(parse("1X=2").is_err());
    }
}
