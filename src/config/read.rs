//! Reading keys out of the merged sources: a reader that walks figment's merged value tree by the
//! key definitions (`keys.rs`) and collects every problem.
//!
//! Owns: text conversion (values stay text; YAML numbers become their digits), empty meaning
//! absent, lists as YAML lists or comma-separated text, unknown-key warnings with the nearest known
//! key, warnings about a value left as the examples' placeholder or given as a YAML number where
//! text belongs, and naming a value's environment variable in its error. Must never: put a value
//! into a message unless a rule chose to (a value may be a secret); describe its kind instead.

use std::collections::BTreeMap;
use std::fmt::Display;

use figment::value::{Dict, Value};
use figment::{Figment, Profile};

use super::keys::{env_var, Absent, Key};
use super::rules::Invalid;

/// The figment metadata name of the environment provider, by which values from there are found.
pub(crate) const ENV_SOURCE: &str = "WECOM_CALLBACK_* environment";

/// A mapping being read, and how its keys are named in messages (`apps[1].`; empty at the top).
#[derive(Clone)]
pub(crate) struct At<'v> {
    pub(crate) dict: &'v Dict,
    pub(crate) prefix: String,
}

impl<'v> At<'v> {
    fn field(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
    /// The value at a dotted name; absent when a section on the way is not a mapping (which
    /// [`Reader::unknown`] reports once).
    pub(crate) fn value(&self, name: &str) -> Option<&'v Value> {
        let mut parts = name.split('.');
        let mut value = self.dict.get(parts.next()?)?;
        for part in parts {
            value = value.as_dict()?.get(part)?;
        }
        Some(value)
    }
    pub(crate) fn given<T, O>(&self, key: &Key<T, O>) -> bool {
        self.value(key.name).is_some()
    }
}

/// What a value is, for errors: never the value itself, which may be a secret.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(..) | Value::Char(..) => "a text value",
        Value::Bool(..) => "true or false",
        Value::Num(..) => "a number",
        Value::Dict(..) => "a mapping",
        Value::Array(..) => "a list",
        Value::Empty(..) => "nothing",
    }
}

/// What the shipped examples (`config.yaml.example`, `deploy/env.example`) put where the user's own
/// value belongs (`replace-with-your-app-secret`, `ww-change-me`, the `change-me` password in a
/// store URL...): a value containing one of these, in any case, was never filled in.
const PLACEHOLDERS: &[&str] = &[
    "replace-with-",
    "replace-me",
    "change-me",
    "another-long-random-token",
];

/// Whether `text` still holds one of the examples' [`PLACEHOLDERS`].
fn is_placeholder(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    PLACEHOLDERS.iter().any(|p| text.contains(p))
}

/// A scalar as text (YAML may give a token or an agent id as a number), or its kind.
fn text_of(value: &Value) -> Result<String, &'static str> {
    let number = |n: &figment::value::Num| {
        let int = n.to_u128().map(|v| v.to_string());
        int.or_else(|| n.to_i128().map(|v| v.to_string()))
            .or_else(|| n.to_f64().map(|v| v.to_string()))
    };
    match value {
        Value::String(_, s) => Ok(s.clone()),
        Value::Char(_, c) => Ok(c.to_string()),
        Value::Bool(_, b) => Ok(b.to_string()),
        Value::Num(_, n) => number(n).ok_or("a number"),
        Value::Empty(..) => Ok(String::new()),
        other => Err(kind(other)),
    }
}

/// Reads keys and collects every problem, each naming its field.
pub(crate) struct Reader<'a> {
    figment: &'a Figment,
    /// The environment given to `load`: fallbacks, and the variables `api_key_env` names.
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) errors: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(figment: &'a Figment, env: &'a BTreeMap<String, String>) -> Self {
        let (errors, warnings) = (Vec::new(), Vec::new());
        Reader {
            figment,
            env,
            errors,
            warnings,
        }
    }

    /// `field: reason`, plus the variable when the value came from the environment: that is
    /// where the user has to look.
    fn line(&self, field: &str, reason: impl Display) -> String {
        let path = field.strip_suffix(']').and_then(|f| f.rsplit_once('['));
        let path = path.map_or(field, |(path, _)| path);
        match self.figment.find_metadata(path) {
            Some(md) if md.name == ENV_SOURCE => {
                let var = md.interpolate(&Profile::Global, &path.split('.').collect::<Vec<_>>());
                format!("{field}: {reason} (from {var})")
            }
            _ => format!("{field}: {reason}"),
        }
    }
    pub(crate) fn err(&mut self, field: &str, reason: impl Display) {
        let line = self.line(field, reason);
        self.errors.push(line);
    }
    /// Once per line: a value read twice (`OPENAI_API_KEY` for each openai agent) is warned about
    /// once.
    pub(crate) fn warn(&mut self, field: &str, reason: impl Display) {
        let line = self.line(field, reason);
        if !self.warnings.contains(&line) {
            self.warnings.push(line);
        }
    }

    /// Warns about every key of `at` that none of `known` names (suggesting the nearest: a
    /// misspelt key or variable is a common reason a setting seems ignored), and checks that a
    /// section named by dotted keys (`retry` of `retry.base_ms`) is a mapping, then its keys.
    pub(crate) fn unknown(&mut self, at: &At<'_>, known: &[&str]) {
        for (key, value) in at.dict {
            let field = at.field(key);
            let inner: Vec<&str> = (known.iter())
                .filter_map(|k| k.strip_prefix(key.as_str())?.strip_prefix('.'))
                .collect();
            match value {
                _ if known.contains(&key.as_str()) => {}
                Value::Dict(_, dict) if !inner.is_empty() => {
                    let prefix = format!("{field}.");
                    self.unknown(&At { dict, prefix }, &inner);
                }
                other if !inner.is_empty() => {
                    self.err(&field, Invalid::Shape("a mapping", kind(other)))
                }
                _ => self.unknown_key(at, key, known),
            }
        }
    }
    fn unknown_key(&mut self, at: &At<'_>, key: &str, known: &[&str]) {
        let field = at.field(key);
        let near = (known.iter())
            .map(|k| k.split('.').next().unwrap_or(k))
            .map(|k| (strsim::jaro_winkler(key, k), k))
            .filter(|(score, _)| *score > 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let from_env = (self.figment.find_metadata(&field)).is_some_and(|m| m.name == ENV_SOURCE);
        let reason = match near {
            Some((_, k)) if from_env => {
                let var = env_var(&at.field(k));
                format!("unknown key, ignored; did you mean {var}?")
            }
            Some((_, k)) => format!("unknown key, ignored; did you mean {}?", at.field(k)),
            None => "unknown key, ignored".to_owned(),
        };
        self.warn(&field, reason);
    }

    /// A scalar's text, trimmed; an error for a list or a mapping. Every value read goes through
    /// here, so this is where a value that cannot be what the user meant is warned about: one
    /// still holding an example's placeholder, and a YAML number for a key that takes text
    /// (`number` false): YAML reads `token: 0x1F` as 31 and `1.50` as 1.5, and the number cannot
    /// tell what was written, so any number there is worth quoting (`0123`, with its leading zero,
    /// stays text in this YAML). Environment values are always text.
    fn text(&mut self, field: &str, value: &Value, number: bool) -> Option<String> {
        let text = text_of(value).map_err(|kind| self.err(field, Invalid::NotText(kind)));
        let text = text.ok()?.trim().to_owned();
        if matches!(value, Value::Num(..)) && !number {
            self.warn(
                field,
                "is a YAML number where text belongs, which YAML may have changed (0x1F is read as 31, 1.50 as 1.5): put the value in quotes (\"0x1F\")",
            );
        }
        self.placeholder(field, &text);
        Some(text)
    }
    /// Warns when `text`, the value of `field`, still holds one of the examples' placeholders;
    /// for a value read elsewhere too (an agent's key from the variable `api_key_env` names).
    pub(crate) fn placeholder(&mut self, field: &str, text: &str) {
        if is_placeholder(text) {
            self.warn(
                field,
                "still holds the example's placeholder: put in your own value",
            );
        }
    }
    /// The key's text and the field that names it: as given, else from its fallback variable.
    fn given(
        &mut self,
        at: &At<'_>,
        name: &str,
        fallback: Option<&str>,
    ) -> (String, Option<Value>) {
        match (
            at.value(name),
            fallback.and_then(|var| Some((var, self.env.get(var)?))),
        ) {
            (Some(value), _) => (at.field(name), Some(value.clone())),
            (None, Some((var, text))) => (var.to_owned(), Some(Value::from(text.clone()))),
            (None, None) => (at.field(name), None),
        }
    }

    /// The key's value by its rule; when absent or empty, its default, or None (an error if it
    /// is required). None too when invalid: the error is recorded.
    pub(crate) fn get<T, O>(&mut self, at: &At<'_>, key: &Key<T, O>) -> Option<T> {
        let (field, value) = self.given(at, key.name, key.fallback);
        self.read(&field, value.as_ref(), key)
    }
    /// As [`Reader::get`], for a value found elsewhere (a list's item), named `field`.
    pub(crate) fn read<T, O>(
        &mut self,
        field: &str,
        v: Option<&Value>,
        key: &Key<T, O>,
    ) -> Option<T> {
        let text = match v {
            Some(value) => self.text(field, value, key.number)?,
            None => String::new(),
        };
        if !text.is_empty() {
            return (key.rule)(&text).map_err(|e| self.err(field, e)).ok();
        }
        match key.absent {
            Absent::Optional => None,
            Absent::Default(text) => (key.rule)(text).map_err(|e| self.err(field, e)).ok(),
            Absent::Required if v.is_some() => self.fail(field, Invalid::Empty),
            Absent::Required => self.fail(field, Invalid::Required),
        }
    }
    fn fail<T>(&mut self, field: &str, reason: Invalid) -> Option<T> {
        self.err(field, reason);
        None
    }

    /// A list key's items, each by the rule: a YAML list (items kept as given), or text cut by
    /// `split`. An empty list is absent: the default, or no items.
    pub(crate) fn list_by<T, O>(
        &mut self,
        at: &At<'_>,
        key: &Key<T, O>,
        split: fn(&str) -> Vec<String>,
    ) -> Vec<T> {
        let (field, value) = self.given(at, key.name, key.fallback);
        let items = match value {
            None => Vec::new(),
            Some(Value::Array(_, items)) => (items.iter().enumerate())
                .filter_map(|(i, item)| self.text(&format!("{field}[{i}]"), item, key.number))
                .collect(),
            Some(text) => self
                .text(&field, &text, key.number)
                .map(|t| split(&t))
                .unwrap_or_default(),
        };
        let items = match (items.is_empty(), key.absent) {
            (true, Absent::Default(text)) => split(text),
            _ => items,
        };
        (items.iter().enumerate())
            .filter_map(|(i, item)| {
                let item = (key.rule)(item);
                item.map_err(|e| self.err(&format!("{field}[{i}]"), e)).ok()
            })
            .collect()
    }
    /// A list, or comma-separated text (the environment's form); empty items dropped.
    pub(crate) fn list<T, O>(&mut self, at: &At<'_>, key: &Key<T, O>) -> Vec<T> {
        let split = |t: &str| {
            let items = t.split(',').map(|s| s.trim().to_owned());
            items.filter(|s| !s.is_empty()).collect()
        };
        self.list_by(at, key, split)
    }

    /// A section key's mapping; None when absent, or not a mapping (error recorded).
    pub(crate) fn section<'v, T, O>(
        &mut self,
        at: &At<'v>,
        key: &Key<T, O>,
        must: &'static str,
    ) -> Option<At<'v>> {
        match at.value(key.name)? {
            Value::Dict(_, dict) => Some(At {
                dict,
                prefix: format!("{}.", at.field(key.name)),
            }),
            other => self.fail(&at.field(key.name), Invalid::Shape(must, kind(other))),
        }
    }
    /// The entries of a list of mappings (`bots[1].`), each checked against `known`.
    pub(crate) fn entries<'v, T, O>(
        &mut self,
        at: &At<'v>,
        key: &Key<T, O>,
        known: &[&str],
    ) -> Vec<At<'v>> {
        let field = at.field(key.name);
        let items = match at.value(key.name) {
            None => return Vec::new(),
            Some(Value::Array(_, items)) => items,
            Some(other) => {
                return self
                    .fail(&field, Invalid::Shape("a list", kind(other)))
                    .unwrap_or_default()
            }
        };
        let mut entries = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let prefix = format!("{field}[{i}].");
            match item {
                Value::Dict(_, dict) => {
                    let entry = At { dict, prefix };
                    self.unknown(&entry, known);
                    entries.push(entry);
                }
                other => self.err(
                    &format!("{field}[{i}]"),
                    Invalid::Shape("a mapping", kind(other)),
                ),
            }
        }
        entries
    }
    /// A mapping of names to text values (headers, environment variables); empty values kept.
    pub(crate) fn pairs<T, O>(&mut self, at: &At<'_>, key: &Key<T, O>) -> Vec<(String, String)> {
        let Some(section) = self.section(at, key, "a mapping") else {
            return Vec::new();
        };
        (section.dict.iter())
            .filter_map(|(name, v)| {
                let text = self.text(&section.field(name), v, key.number)?;
                Some((name.clone(), text))
            })
            .collect()
    }
}
