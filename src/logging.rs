//! Log output: human-readable text (the default) or one JSON object per line (`log_format: json`,
//! `tracing-subscriber`'s JSON formatter), with the same fields either way.
//!
//! Owns: the choice of format and the JSON line's layout: `timestamp` (Unix seconds, as text with
//! milliseconds), `level`, the event's fields (`message` among them) at the top level, `target`,
//! and `spans` (root first, each span's fields and `name`) when the event is inside a span. So an
//! event's field must not be named `timestamp`, `level`, `target` or `spans`, nor a span's `name`:
//! the JSON object would hold that key twice.
//!
//! Text lines are written as `tracing-subscriber`'s default does (`message` bare, other fields as
//! `name=value` with Debug), except that every control character in a message or a field (a
//! newline, a carriage return, ESC, C1 codes) and the Unicode line and bidi controls are written
//! escaped (`\n`, `\u{1b}`). This is the one place that keeps client text (a UserID, a `touser`, a
//! robot's name, serde's error naming an unknown field) from starting a forged log line or
//! steering a terminal, whatever the call site passed and however it formatted it.
//!
//! Must never: log anything the rest of the code did not pass as a field or message (secrets are
//! kept out at the call sites; this only formats), or let a logged value start a new line (text:
//! escaped here; JSON: strings are escaped by the JSON encoder).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::Subscriber;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A log format that is neither `text` nor `json` (the text is a setting, not a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFormatError {
    #[error("must be text or json, got {0:?}")]
    Unknown(String),
}

impl LogFormat {
    pub fn parse(text: &str) -> Result<Self, LogFormatError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LogFormatError::Unknown(other.to_owned())),
        }
    }

    /// `WECOM_CALLBACK_LOG_FORMAT`, else `LOG_FORMAT`, else text.
    pub fn from_env() -> Result<Self, LogFormatError> {
        let var =
            std::env::var("WECOM_CALLBACK_LOG_FORMAT").or_else(|_| std::env::var("LOG_FORMAT"));
        var.map_or(Ok(LogFormat::Text), |v| LogFormat::parse(&v))
    }
}

/// Log to stderr at `RUST_LOG` (else at `default`, such as `info`) in `format`.
pub fn init(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match format {
        LogFormat::Text => text(filter, std::io::stderr, is_terminal()).init(),
        LogFormat::Json => json(filter, std::io::stderr).init(),
    }
}

fn is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// The text subscriber: one line per event, fields escaped ([`TextFields`]), colours on a terminal.
fn text<W>(filter: EnvFilter, writer: W, ansi: bool) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .fmt_fields(TextFields)
        .finish()
}

/// How the text format writes an event's or a span's fields: `message` bare, every other field as
/// `name=value` (Debug, so text is quoted), and in both every character that could end the line or
/// steer a terminal escaped.
struct TextFields;

impl<'w> MakeVisitor<Writer<'w>> for TextFields {
    type Visitor = TextVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> TextVisitor<'w> {
        TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        }
    }
}

struct TextVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.record_debug(field, &format_args!("{value}")),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its sources, `outer: inner`.
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(e) = source {
            text = format!("{text}: {e}");
            source = e.source();
        }
        self.record_debug(field, &format_args!("{text}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // `log.*` fields carry a `log` record's metadata, which the line already shows.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let value = Escaped(format!("{value:?}"));
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match name {
            "message" => write!(self.writer, "{sep}{value}"),
            _ => write!(self.writer, "{sep}{name}={value}"),
        };
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Text with control characters (C0, DEL, C1), the Unicode line and paragraph separators and the
/// bidi controls written as Rust escapes: `\n`, `\r`, `\u{1b}`, `\u{2028}`.
struct Escaped(String);

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            let unsafe_char = c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            match unsafe_char {
                true => write!(f, "{}", c.escape_default())?,
                false => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The JSON subscriber: one object per event, written to `writer`.
fn json<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_timer(UnixSeconds)
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .finish()
}

/// The time as Unix seconds with milliseconds, e.g. `1763856000.123`.
struct UnixSeconds;

impl FormatTime for UnixSeconds {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        write!(w, "{}.{:03}", now.as_secs(), now.subsec_millis())
    }
}

/// A log writer for unit tests: what was written, as text lines.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Capture {
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

#[cfg(test)]
impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = json(EnvFilter::new("trace"), move || writer.clone());
        tracing::subscriber::with_default(subscriber, log);
        (out.lines().iter())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_time_level_target_fields_and_spans() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let lines = lines(|| {
            let span = tracing::info_span!("http", method = "POST", path = ?"/wecom/callback");
            span.in_scope(|| {
                tracing::warn!(workers = 64, ratio = 0.5, ok = true, user = ?"corp:mallory\nINFO forged\u{1b}[2K",
                    "listening on {}", "127.0.0.1:8645");
            });
            tracing::info!("outside any span");
        });
        assert_eq!(lines.len(), 2, "one object per event: {lines:?}");
        let line = &lines[0];
        let ts: f64 = line["timestamp"].as_str().unwrap().parse().unwrap();
        assert!((ts - before.as_secs_f64()).abs() < 60.0, "{line}");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["message"], "listening on 127.0.0.1:8645");
        assert_eq!(line["workers"], 64);
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["user"], "\"corp:mallory\\nINFO forged\\u{1b}[2K\"");
        assert_eq!(
            line["spans"],
            serde_json::json!([{"name": "http", "method": "POST", "path": "\"/wecom/callback\""}])
        );
        assert!(line.get("span").is_none(), "the list only: {line}");
        assert!(lines[1].get("spans").is_none(), "{}", lines[1]);
    }

    #[test]
    fn text_lines_escape_whatever_a_call_site_passed() {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = text(EnvFilter::new("trace"), move || writer.clone(), false);
        let evil = "x\nINFO forged\u{1b}[2K\r\u{2028}";
        let error = std::io::Error::other(evil);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("http", path = %evil);
            span.in_scope(|| {
                tracing::warn!(shown = %evil, debug = ?evil, n = 3, error = &error as &dyn std::error::Error, "rejected: {evil}");
            });
        });
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
        assert!(
            !text
                .trim_end_matches('\n')
                .contains(['\n', '\r', '\u{1b}', '\u{2028}']),
            "{text:?}"
        );
        let escaped = r"x\nINFO forged\u{1b}[2K\r\u{2028}";
        for part in [
            format!("http{{path={escaped}}}"),
            format!("rejected: {escaped} shown={escaped} debug=\"{escaped}\" n=3 error={escaped}"),
        ] {
            assert!(text.contains(&part), "{part} in {text}");
        }
    }

    #[test]
    fn a_format_is_text_or_json() {
        assert_eq!(LogFormat::parse(" JSON "), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        assert_eq!(
            LogFormat::parse("yaml").unwrap_err().to_string(),
            "must be text or json, got \"yaml\""
        );
    }
}
