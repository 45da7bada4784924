//! Minimal, safe reading of WeCom's flat callback XML into field maps.
//!
//! Owns: turning `<xml><Field>value</Field>...</xml>` into (name, text) pairs. Nested elements are
//! flattened with dotted names (`ScanCodeInfo.ScanType`), CDATA and plain text are treated alike.
//!
//! Must never: resolve a DTD or a custom entity (XXE hygiene): a document with a DOCTYPE is rejected,
//! and only the five predefined XML entities and character references are decoded.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Documents deeper than this are not WeCom callbacks; refuse them rather than recurse.
const MAX_DEPTH: usize = 8;

/// Why a document is not a WeCom XML message (what was wrong, and where when known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct XmlError(String);

impl From<String> for XmlError {
    fn from(reason: String) -> Self {
        XmlError(reason)
    }
}

impl From<&str> for XmlError {
    fn from(reason: &str) -> Self {
        XmlError(reason.to_owned())
    }
}

/// Parse a WeCom XML document whose root is `<xml>` into its fields, in document order.
pub fn parse_fields(input: &str) -> Result<Vec<(String, String)>, XmlError> {
    let mut reader = Reader::from_str(input);
    let mut fields: Vec<(String, String)> = Vec::new();
    // The dotted path of the open elements below the root ("C.D"), with the length it had before
    // each was opened, and the text collected for the innermost element. One buffer, not a list
    // of names joined per field: this runs twice for every callback.
    let mut path = String::new();
    let mut opened: Vec<usize> = Vec::new();
    let mut text = String::new();
    let mut seen_root = false;
    let mut root_closed = false;
    let name_of = |raw: &[u8]| {
        // The input is a &str, so every slice of it is UTF-8.
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| "element name is not UTF-8".to_owned())
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Start(start) => {
                if root_closed {
                    return Err("content after the root element".into());
                }
                if !seen_root {
                    let name = name_of(start.name().as_ref())?;
                    if name != "xml" {
                        return Err(format!("root element must be <xml>, found <{name}>").into());
                    }
                    seen_root = true;
                    continue;
                }
                if opened.len() >= MAX_DEPTH {
                    return Err("elements nested too deeply".into());
                }
                opened.push(path.len());
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&name_of(start.name().as_ref())?);
                text.clear();
            }
            Event::Empty(empty) => {
                let name = name_of(empty.name().as_ref())?;
                if !seen_root {
                    return Err(format!("root element must be <xml>, found <{name}/>").into());
                }
                if !root_closed {
                    let full = match path.is_empty() {
                        true => name,
                        false => format!("{path}.{name}"),
                    };
                    fields.push((full, String::new()));
                }
            }
            Event::Text(t) => {
                if !opened.is_empty() {
                    let s = t.unescape().map_err(|e| format!("bad text: {e}"))?;
                    text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if !opened.is_empty() {
                    let bytes = c.into_inner();
                    let s = std::str::from_utf8(&bytes).map_err(|_| "CDATA is not UTF-8")?;
                    text.push_str(s);
                }
            }
            Event::End(_) => {
                let Some(parent) = opened.pop() else {
                    root_closed = true;
                    continue;
                };
                // Only leaves carry values; a parent's whitespace between children is dropped.
                let is_parent = fields.last().is_some_and(|(n, _)| {
                    n.len() > path.len() && n.starts_with(&path) && n.as_bytes()[path.len()] == b'.'
                });
                if !is_parent {
                    fields.push((path.clone(), std::mem::take(&mut text)));
                }
                text.clear();
                path.truncate(parent);
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
        }
    }
    if !seen_root {
        return Err("no <xml> root element".into());
    }
    if !root_closed || !opened.is_empty() {
        return Err("document ends before </xml>".into());
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_fields() {
        let f = parse_fields(
            "<xml>\n<A><![CDATA[x y]]></A>\n<B>1 &amp; 2</B><C><D>d</D><E/></C></xml>",
        )
        .unwrap();
        assert_eq!(
            f,
            vec![
                ("A".into(), "x y".into()),
                ("B".into(), "1 & 2".into()),
                ("C.D".into(), "d".into()),
                ("C.E".into(), "".into()),
            ]
        );
    }

    #[test]
    fn rejects_doctype_and_custom_entities() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]><xml><A>&x;</A></xml>"#;
        assert!(parse_fields(xxe)
            .unwrap_err()
            .to_string()
            .contains("DOCTYPE"));
        assert!(parse_fields("<xml><A>&x;</A></xml>").is_err());
    }

    #[test]
    fn rejects_wrong_root_truncation_and_depth() {
        assert!(parse_fields("<root><A>1</A></root>").is_err());
        assert!(parse_fields("<xml><A>1</A>").is_err());
        assert!(parse_fields("").is_err());
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(20), "</a>".repeat(20));
        assert!(parse_fields(&deep).is_err());
    }
}
