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

/// Parse a WeCom XML document whose root is `<xml>` into its fields, in document order.
pub fn parse_fields(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut reader = Reader::from_str(input);
    let mut fields: Vec<(String, String)> = Vec::new();
    // Element path below the root, and the text collected for the innermost element.
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut seen_root = false;
    let mut root_closed = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Start(start) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                if root_closed {
                    return Err("content after the root element".into());
                }
                if !seen_root {
                    if name != "xml" {
                        return Err(format!("root element must be <xml>, found <{name}>"));
                    }
                    seen_root = true;
                    continue;
                }
                if path.len() >= MAX_DEPTH {
                    return Err("elements nested too deeply".into());
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(empty) => {
                let name = String::from_utf8_lossy(empty.name().as_ref()).into_owned();
                if !seen_root {
                    return Err(format!("root element must be <xml>, found <{name}/>"));
                }
                if !root_closed {
                    let mut full = path.join(".");
                    if !full.is_empty() {
                        full.push('.');
                    }
                    full.push_str(&name);
                    fields.push((full, String::new()));
                }
            }
            Event::Text(t) => {
                if !path.is_empty() {
                    let s = t.unescape().map_err(|e| format!("bad text: {e}"))?;
                    text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if !path.is_empty() {
                    let bytes = c.into_inner();
                    let s = std::str::from_utf8(&bytes).map_err(|_| "CDATA is not UTF-8")?;
                    text.push_str(s);
                }
            }
            Event::End(_) => {
                if path.is_empty() {
                    root_closed = true;
                    continue;
                }
                let name = path.join(".");
                path.pop();
                // Only leaves carry values; a parent's whitespace between children is dropped.
                if !fields
                    .last()
                    .is_some_and(|(n, _)| n.starts_with(&format!("{name}.")))
                {
                    fields.push((name, std::mem::take(&mut text)));
                }
                text.clear();
            }
            Event::Eof => break,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
        }
    }
    if !seen_root {
        return Err("no <xml> root element".into());
    }
    if !root_closed || !path.is_empty() {
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
        assert!(parse_fields(xxe).unwrap_err().contains("DOCTYPE"));
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
