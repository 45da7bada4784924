//! Streamed answers read as they arrive: a chat completions answer streamed as Server-Sent Events
//! (`stream: true`), read as the text deltas it carries (the openai and hermes agents join them
//! into one answer), and the http agent's streamed answer (SSE or one JSON object per line), read
//! as the events it carries.
//!
//! Owns: SSE framing (lines, `event:` and `data:` fields, comments) and line-delimited framing
//! (NDJSON), the one place either is read; which chat completions events carry text (the unnamed
//! ones; Hermes's `hermes.tool.progress` and other named events are skipped), the end marker
//! `data: [DONE]`, and how much of a stream is held in memory.
//!
//! Must never: hold more than its bound (a line, or the joined text) in memory, take a stream that
//! stopped before `[DONE]` for a whole answer, or keep the connection once its reader is dropped
//! (dropping it is how the gateway tells the server to stop the run).

use std::collections::VecDeque;

use serde_json::Value;

/// How much text an answer may hold, and how long one SSE line may be. Generous: a Hermes answer
/// can carry an image as a data URL of up to 5 MB (about 6.7 MB of base64).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// What went wrong reading a stream, named for the failure message's log line.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The body could not be read (the connection broke, or the client's timeout struck).
    #[error("reading the stream: {0}")]
    Body(#[source] reqwest::Error),
    #[error("the stream ended before data: [DONE]")]
    Truncated,
    #[error("the stream carried an error: {0}")]
    Server(String),
    #[error("line {line} of the stream is broken: {why}")]
    Broken { line: usize, why: String },
    #[error("the streamed answer is over {0} bytes")]
    TooLarge(usize),
}

impl StreamError {
    /// A body error, without the URL (which may carry a key in its query).
    pub fn body(e: reqwest::Error) -> Self {
        StreamError::Body(e.without_url())
    }

    /// Whether the client's timeout ended the stream (the gateway gave up, the server did not fail).
    pub fn is_timeout(&self) -> bool {
        matches!(self, StreamError::Body(e) if e.is_timeout())
    }
}

/// How a stream's body is cut into events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Server-Sent Events (`text/event-stream`): `data:` lines, an event ended by a blank line.
    #[default]
    Sse,
    /// One event per line (`application/x-ndjson`); blank lines are skipped.
    Lines,
}

/// Framing over bytes as they arrive: complete lines become fields (SSE) or events (lines), a
/// blank line ends an SSE event. Pure, so chunk boundaries anywhere (mid-line, mid-character) read
/// the same.
#[derive(Debug, Default)]
struct Framing {
    format: Format,
    /// The current line's bytes so far (decoded once whole: a character may span two chunks).
    line: Vec<u8>,
    /// Lines read, for naming a broken one.
    lines: usize,
    /// The current event's `event:` name and `data:` lines (joined by `\n`, as SSE says).
    event: Option<String>,
    data: Option<String>,
    /// The line the current event's data began on.
    started: usize,
}

/// One complete event that carries data: an SSE event, or a line.
#[derive(Debug, PartialEq)]
pub struct Event {
    /// The SSE `event:` name; `None` for an unnamed event and for a line.
    pub name: Option<String>,
    pub data: String,
    /// The line its data began on, for errors.
    pub line: usize,
}

impl Framing {
    fn new(format: Format) -> Self {
        Framing {
            format,
            ..Framing::default()
        }
    }

    fn push(&mut self, bytes: &[u8], limit: usize) -> Result<Vec<Event>, StreamError> {
        let mut events = Vec::new();
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            if self.line.len() + piece.len() > limit {
                return Err(StreamError::TooLarge(limit));
            }
            self.line.extend_from_slice(piece);
            if self.line.last() != Some(&b'\n') {
                continue;
            }
            let line = self.take_line()?;
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            let event = match self.format {
                Format::Sse => self.field(line, limit)?,
                Format::Lines => self.whole_line(line),
            };
            events.extend(event);
        }
        Ok(events)
    }

    /// A line of a line-delimited stream: an event unless blank.
    fn whole_line(&mut self, line: &str) -> Option<Event> {
        (!line.trim().is_empty()).then(|| Event {
            name: None,
            data: line.to_owned(),
            line: self.lines,
        })
    }

    /// The body has ended: a line-delimited stream's last line may lack its newline. (An SSE
    /// event not ended by a blank line is dropped, as SSE says.)
    fn finish(&mut self) -> Result<Option<Event>, StreamError> {
        if self.format != Format::Lines || self.line.is_empty() {
            return Ok(None);
        }
        let line = self.take_line()?;
        Ok(self.whole_line(line.trim_end_matches('\r')))
    }

    /// The line gathered so far, counted and read as UTF-8.
    fn take_line(&mut self) -> Result<String, StreamError> {
        let raw = std::mem::take(&mut self.line);
        self.lines += 1;
        String::from_utf8(raw).map_err(|_| StreamError::Broken {
            line: self.lines,
            why: "not UTF-8".into(),
        })
    }

    /// One line: a field of the current event, a comment, or the blank line that ends the event.
    fn field(&mut self, line: &str, limit: usize) -> Result<Option<Event>, StreamError> {
        if line.is_empty() {
            let name = self.event.take();
            return Ok(self.data.take().map(|data| Event {
                name,
                data,
                line: self.started,
            }));
        }
        if line.starts_with(':') {
            return Ok(None); // a comment: keep-alives
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "data" => match &mut self.data {
                Some(data) if data.len() + value.len() + 1 > limit => {
                    return Err(StreamError::TooLarge(limit))
                }
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => {
                    self.data = Some(value.to_owned());
                    self.started = self.lines;
                }
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry, and fields SSE does not know
        }
        Ok(None)
    }
}

/// What one event means for the answer.
#[derive(Debug, PartialEq)]
enum Meaning {
    Text(String),
    Done,
    Nothing,
}

/// An event's meaning: a chunk's `choices[0].delta.content`, the end marker, or an error the
/// server reported inside the stream.
fn meaning(event: Event) -> Result<Meaning, StreamError> {
    match event.name.as_deref() {
        None | Some("message") => {}
        Some("error") => return Err(StreamError::Server(excerpt(&event.data))),
        Some(_) => return Ok(Meaning::Nothing), // hermes.tool.progress and the like
    }
    if event.data.trim() == "[DONE]" {
        return Ok(Meaning::Done);
    }
    let chunk: Value = serde_json::from_str(&event.data).map_err(|e| StreamError::Broken {
        line: event.line,
        why: format!("not a JSON chunk ({e})"),
    })?;
    if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
        let message = error["message"].as_str().map(excerpt);
        return Err(StreamError::Server(
            message.unwrap_or_else(|| excerpt(&error.to_string())),
        ));
    }
    // Choice 0 only (a request asks for one); a usage chunk has no choices.
    let choices = chunk["choices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let first = choices
        .iter()
        .find(|c| c["index"].as_u64().unwrap_or(0) == 0);
    // Hermes ends a run that failed midway with `finish_reason: "error"` (then `[DONE]`): what
    // came before it is not the answer.
    if first.is_some_and(|c| c["finish_reason"] == "error") {
        return Err(StreamError::Server(
            "the server ended the answer with finish_reason \"error\"".into(),
        ));
    }
    Ok(match first.and_then(|c| c["delta"]["content"].as_str()) {
        Some(text) if !text.is_empty() => Meaning::Text(text.to_owned()),
        _ => Meaning::Nothing,
    })
}

/// At most 200 characters of what a server said, for an error.
pub(crate) fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

/// A streamed body's events, in order, read as the body arrives. Dropping it drops the response,
/// which closes the connection: a server that watches it stops the run.
pub struct Frames {
    response: reqwest::Response,
    framing: Framing,
    ready: VecDeque<Event>,
    ended: bool,
    limit: usize,
}

impl Frames {
    /// Reads `response` as `format`; no line may be longer than `limit` bytes.
    pub fn new(response: reqwest::Response, format: Format, limit: usize) -> Self {
        Frames {
            response,
            framing: Framing::new(format),
            ready: VecDeque::new(),
            ended: false,
            limit,
        }
    }

    /// The next event; `None` once the body has ended (whether that is the whole answer is the
    /// reader's to say).
    pub async fn next(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            match self.response.chunk().await.map_err(StreamError::body)? {
                Some(bytes) => self.ready.extend(self.framing.push(&bytes, self.limit)?),
                None => {
                    self.ended = true;
                    self.ready.extend(self.framing.finish()?);
                }
            }
        }
    }
}

/// The text deltas of a streamed chat completions answer, in order, read as the body arrives.
pub struct Deltas {
    frames: Frames,
    done: bool,
}

impl Deltas {
    /// Reads `response` (a `text/event-stream` body); no line may be longer than `limit` bytes.
    pub fn new(response: reqwest::Response, limit: usize) -> Self {
        Deltas {
            frames: Frames::new(response, Format::Sse, limit),
            done: false,
        }
    }

    /// The next piece of text; `None` once `data: [DONE]` has come. A stream that closes before
    /// it is [`StreamError::Truncated`].
    pub async fn next(&mut self) -> Result<Option<String>, StreamError> {
        // What follows [DONE] is not read: the answer is whole.
        while !self.done {
            let Some(event) = self.frames.next().await? else {
                return Err(StreamError::Truncated);
            };
            match meaning(event)? {
                Meaning::Text(text) => return Ok(Some(text)),
                Meaning::Done => self.done = true,
                Meaning::Nothing => {}
            }
        }
        Ok(None)
    }
}

/// The whole answer: every delta joined, at most `limit` bytes, each shown on `partial` as it
/// comes.
pub async fn join(
    mut deltas: Deltas,
    limit: usize,
    partial: Option<&crate::agent::Partial>,
) -> Result<String, StreamError> {
    let mut answer = String::new();
    while let Some(text) = deltas.next().await? {
        if answer.len() + text.len() > limit {
            return Err(StreamError::TooLarge(limit));
        }
        answer.push_str(&text);
        if let Some(partial) = partial {
            partial.push(&text);
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(chunks: &[&[u8]]) -> Result<(Vec<Meaning>, bool), StreamError> {
        let mut framing = Framing::new(Format::Sse);
        let mut out = Vec::new();
        for chunk in chunks {
            for event in framing.push(chunk, 64)? {
                out.push(meaning(event)?);
            }
        }
        Ok((out, framing.line.is_empty()))
    }

    #[test]
    fn chunk_boundaries_anywhere_read_the_same() {
        let stream = "event: hermes.tool.progress\ndata: {\"tool\":\"x\"}\n\n: keep-alive\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"你好\"}}]}\r\n\r\ndata: [DONE]\n\n";
        let whole = read(&[stream.as_bytes()]).unwrap();
        assert_eq!(
            whole.0,
            vec![
                Meaning::Nothing,
                Meaning::Text("你好".into()),
                Meaning::Done
            ]
        );
        for cut in 1..stream.len() {
            let (a, b) = stream.as_bytes().split_at(cut);
            assert_eq!(read(&[a, b]).unwrap().0, whole.0, "cut at {cut}");
        }
    }

    #[test]
    fn a_run_the_server_ends_with_an_error_is_an_error_not_an_answer() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"half\"}}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"error\"}]}\n\ndata: [DONE]\n\n";
        let read = read(&[stream.as_bytes()]);
        assert!(matches!(read, Err(StreamError::Server(_))), "{read:?}");
    }

    #[test]
    fn lines_are_events_wherever_chunks_cut_them_and_the_last_needs_no_newline() {
        let stream = "{\"delta\":\"你\"}\r\n\n{\"delta\":\"好\"}\n{\"text\":\"x\"}";
        let read = |chunks: &[&[u8]]| {
            let mut framing = Framing::new(Format::Lines);
            let mut out = Vec::new();
            for chunk in chunks {
                out.extend(framing.push(chunk, 64).unwrap());
            }
            out.extend(framing.finish().unwrap());
            out.into_iter()
                .map(|e| (e.data, e.line))
                .collect::<Vec<_>>()
        };
        let whole = read(&[stream.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                ("{\"delta\":\"你\"}".to_owned(), 1),
                ("{\"delta\":\"好\"}".to_owned(), 3),
                ("{\"text\":\"x\"}".to_owned(), 4),
            ]
        );
        for cut in 1..stream.len() {
            let (a, b) = stream.as_bytes().split_at(cut);
            assert_eq!(read(&[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn a_line_over_the_bound_is_refused() {
        let long = format!("data: {}", "x".repeat(100));
        assert!(matches!(
            read(&[long.as_bytes()]),
            Err(StreamError::TooLarge(64))
        ));
    }
}
