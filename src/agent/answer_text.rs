//! A model's answer text as the messages a member gets: the markdown images in it that the gateway
//! can send become image items in their place, and the text around them stays text, in order.
//! Hermes's API server answers an image a tool made as `![image](data:image/png;base64,...)`;
//! sent as text, that is pages of base64.
//!
//! Owns: which markdown images become items. A `data:image/...;base64,` URL whose base64 is valid
//! becomes an image (a file when its bytes are not JPG or PNG, the only images WeCom takes); a
//! path (or `file://` URL) inside `media.agent_dirs` becomes an image by `path` (a file when its
//! name is not `.png`, `.jpg` or `.jpeg`). Everything else stays text as the model wrote it: an
//! http(s) link (WeCom shows links), a data URL of another type or with bad base64, a path
//! elsewhere. Text parts are trimmed, and a part left empty (between two images) is dropped.
//!
//! Must never: read a file, or hold a file to WeCom's limits (outbound loads and checks every item
//! when it sends it, as for any agent's items), or lose text that is not an image it sends.

use std::path::PathBuf;

use base64::Engine as _;

use crate::conversation::names_a_file_within;
use crate::wecom::media::MediaType;
use crate::wecom::payload::Media;
use crate::wecom::AppMessage;

/// The messages for an answer text: text, and images where the text had ones the gateway can send.
/// Linear in the text's length, whatever the model wrote (an answer may be megabytes long).
pub fn messages(text: &str, agent_dirs: &[PathBuf]) -> Vec<AppMessage> {
    fn push_text(out: &mut Vec<AppMessage>, part: &str) {
        let part = part.trim();
        if !part.is_empty() {
            out.push(AppMessage::text(part));
        }
    }
    let mut out = Vec::new();
    let mut scan = Scan::default();
    let (mut done, mut from) = (0, 0);
    while let Some(image) = scan.next_image(text, from) {
        let item = (image.url).and_then(|url| data_url(url).or_else(|| file(url, agent_dirs)));
        match item {
            Some(item) => {
                push_text(&mut out, &text[done..image.start]);
                out.push(item);
                (done, from) = (image.end, image.end);
            }
            // A URL read whole that is not an image: what it holds stays text with it.
            None if image.url.is_some() => from = image.end,
            // Not even the start of one: read on from just inside it, so an unclosed `![a](`
            // does not hide an image after it.
            None => from = image.start + 2,
        }
    }
    push_text(&mut out, &text[done..]);
    out
}

/// The answer as the model's history keeps it: its text, with `[image]` where an image was sent,
/// so that a 5 MB data URL does not fill the history it is bounded by.
pub fn history_text(messages: &[AppMessage]) -> String {
    let parts: Vec<&str> = messages
        .iter()
        .map(|m| match m {
            AppMessage::Text { content } => content.as_str(),
            AppMessage::Image(_) => "[image]",
            _ => "[file]",
        })
        .collect();
    parts.join("\n\n")
}

/// A markdown image `![alt](url "title")` in `text`: where it is, and its URL when the URL is one
/// the gateway may send (a data URL, a `file://` URL or an absolute path); other URLs are not read
/// further.
struct Found<'a> {
    start: usize,
    end: usize,
    url: Option<&'a str>,
}

/// Where the next `]`-or-newline and the next `)` are, remembered across calls: `from` only grows,
/// so each is searched for once, not once per `![` before it.
#[derive(Default)]
struct Scan {
    alt_end: Option<usize>,
    close: Option<usize>,
}

impl Scan {
    /// The next markdown image at or after `from`. Its alt text is on one line; its URL runs to
    /// the first `)` (so a path with a `)` in it is not an image, and stays text).
    fn next_image<'t>(&mut self, text: &'t str, from: usize) -> Option<Found<'t>> {
        let mut at = from;
        loop {
            let start = at + text.get(at..)?.find("![")?;
            let alt_from = start + 2;
            // No `]` or newline after this: no image can start anywhere later either.
            let open = next_at(&mut self.alt_end, text, alt_from, |t| t.find([']', '\n']))?;
            if !text[open..].starts_with("](") {
                at = alt_from;
                continue;
            }
            let url_from = open + 2;
            // No `)` after this: no image can close anywhere later either.
            let close = next_at(&mut self.close, text, url_from, |t| t.find(')'))?;
            let inner = text[url_from..close].trim();
            let url = match inner.strip_prefix('<') {
                Some(rest) => rest.split_once('>').map_or(rest, |(url, _)| url),
                None if !sendable(inner) => "",
                // A title (`"..."` or `'...'`) may follow the URL after a space; other white
                // space is kept (a data URL's base64 may be wrapped).
                None => title_start(inner).map_or(inner, |at| inner[..at].trim_end()),
            };
            return Some(Found {
                start,
                end: close + 1,
                url: sendable(url).then_some(url),
            });
        }
    }
}

/// The first match of `find` at or after `from`: the remembered one while it is still ahead.
fn next_at(
    cached: &mut Option<usize>,
    text: &str,
    from: usize,
    find: impl Fn(&str) -> Option<usize>,
) -> Option<usize> {
    if let Some(at) = cached.filter(|at| *at >= from) {
        return Some(at);
    }
    let at = from + find(text.get(from..)?)?;
    *cached = Some(at);
    Some(at)
}

/// Whether a URL is of a kind the gateway may send (only then is it read whole).
fn sendable(url: &str) -> bool {
    let starts = |p: &str| {
        url.get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    starts("data:") || starts("file://") || url.starts_with('/')
}

/// Where a markdown title starts in `inner` (white space, then a quote), if it has one.
fn title_start(inner: &str) -> Option<usize> {
    let bytes = inner.as_bytes();
    (1..bytes.len())
        .find(|&i| matches!(bytes[i], b'"' | b'\'') && bytes[i - 1].is_ascii_whitespace())
}

/// An image from a `data:image/...;base64,` URL, or `None` (it stays text).
fn data_url(url: &str) -> Option<AppMessage> {
    let scheme = url.get(..5)?;
    if !scheme.eq_ignore_ascii_case("data:") {
        return None;
    }
    let (meta, data) = url[5..].split_once(',')?;
    let mut params = meta.split(';').map(str::trim);
    let mime = params.next()?.to_ascii_lowercase();
    let subtype = mime.strip_prefix("image/")?;
    if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
        return None;
    }
    // Wrapped base64 is fine, as it is for an item's `base64`.
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&data)
        .ok()?;
    let media = |file_name: String| Media {
        base64: Some(data.clone()),
        file_name: Some(file_name),
        ..Media::default()
    };
    Some(match MediaType::Image.content_type(&bytes) {
        Some("image/jpeg") => AppMessage::Image(media("image.jpg".into())),
        Some(_) => AppMessage::Image(media("image.png".into())),
        // WeCom shows only JPG and PNG as images: anything else (GIF, WebP, SVG) still reaches
        // the member, as a file.
        None => {
            let ext: String = (subtype.chars())
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            let ext = if ext.is_empty() { "img".into() } else { ext };
            AppMessage::File(media(format!("image.{ext}")))
        }
    })
}

/// An image by path, from a path or `file://` URL inside `media.agent_dirs`, or `None`.
fn file(url: &str, agent_dirs: &[PathBuf]) -> Option<AppMessage> {
    let path = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("file://") => {
            url::Url::parse(url).ok()?.to_file_path().ok()?
        }
        _ => PathBuf::from(url),
    };
    if !names_a_file_within(&path, agent_dirs) {
        return None;
    }
    let image = (path.extension().and_then(|e| e.to_str()))
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()));
    let media = Media {
        path: Some(path.to_str()?.to_owned()),
        ..Media::default()
    };
    Some(match image {
        true => AppMessage::Image(media),
        false => AppMessage::File(media),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n0123456789";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn text(s: &str) -> AppMessage {
        AppMessage::text(s)
    }

    fn image_b64(data: &str, name: &str) -> AppMessage {
        AppMessage::Image(Media {
            base64: Some(data.into()),
            file_name: Some(name.into()),
            ..Media::default()
        })
    }

    fn by_path(path: &str) -> AppMessage {
        AppMessage::Image(Media {
            path: Some(path.into()),
            ..Media::default()
        })
    }

    #[test]
    fn a_data_url_image_is_an_image_in_its_place() {
        let png = b64(PNG);
        let answer = format!("Here it is:\n![image](data:image/png;base64,{png})\nDone.");
        assert_eq!(
            messages(&answer, &[]),
            vec![
                text("Here it is:"),
                image_b64(&png, "image.png"),
                text("Done.")
            ]
        );
    }

    #[test]
    fn plain_text_is_one_text_and_empty_text_is_nothing() {
        assert_eq!(messages("  just text\n", &[]), vec![text("just text")]);
        assert_eq!(messages("", &[]), Vec::<AppMessage>::new());
    }

    #[test]
    fn the_empty_text_between_two_images_is_dropped() {
        let png = b64(PNG);
        let jpg = b64(b"\xff\xd8\xff\xe0-jpeg-bytes");
        let answer = format!(
            "![a](data:image/png;base64,{png})\n\n![b](DATA:image/jpeg;base64,{jpg} \"title\")"
        );
        assert_eq!(
            messages(&answer, &[]),
            vec![image_b64(&png, "image.png"), image_b64(&jpg, "image.jpg")]
        );
    }

    #[test]
    fn wrapped_base64_is_joined() {
        let png = b64(PNG);
        let (a, b) = png.split_at(10);
        let answer = format!("![x](data:image/png;base64,{a}\n{b})");
        assert_eq!(messages(&answer, &[]), vec![image_b64(&png, "image.png")]);
    }

    #[test]
    fn links_other_data_and_bad_base64_stay_text() {
        for answer in [
            "see ![chart](https://example.com/chart.png) here",
            "![x](data:text/plain;base64,aGVsbG8=)",
            "![x](data:image/png;base64,not base64!)",
            "![x](data:image/png,rawdata)",
            "![x](/etc/passwd.png) is outside",
            "![x](relative/pic.png)",
            "an ![unclosed image](data:image/png;base64,AAAA",
            "![not an image] (data:image/png;base64,AAAA)",
        ] {
            assert_eq!(messages(answer, &[]), vec![text(answer)], "{answer}");
        }
        let png = b64(PNG);
        let answer = format!("![a](oops ![b](data:image/png;base64,{png}) end");
        assert_eq!(
            messages(&answer, &[]),
            vec![text("![a](oops"), image_b64(&png, "image.png"), text("end")],
            "an unclosed image hides none after it"
        );
    }

    #[test]
    fn an_image_of_another_format_is_sent_as_a_file() {
        let gif = b64(b"GIF89a-some-gif");
        let answer = format!("![g](data:image/gif;base64,{gif})");
        let want = AppMessage::File(Media {
            base64: Some(gif),
            file_name: Some("image.gif".into()),
            ..Media::default()
        });
        assert_eq!(messages(&answer, &[]), vec![want]);
    }

    #[test]
    fn a_path_inside_agent_dirs_is_an_image_by_path() {
        let dirs = [PathBuf::from("/srv/out")];
        let answer = "a ![p](/srv/out/chart.png) b ![q](file:///srv/out/sub/pic.JPG) c \
                      ![r](/srv/out/../secret.png) ![s](</srv/out/my chart.png>)";
        assert_eq!(
            messages(answer, &dirs),
            vec![
                text("a"),
                by_path("/srv/out/chart.png"),
                text("b"),
                by_path("/srv/out/sub/pic.JPG"),
                text("c ![r](/srv/out/../secret.png)"),
                by_path("/srv/out/my chart.png"),
            ]
        );
        let doc = "![d](/srv/out/report.pdf)";
        let want = AppMessage::File(Media {
            path: Some("/srv/out/report.pdf".into()),
            ..Media::default()
        });
        assert_eq!(messages(doc, &dirs), vec![want]);
    }

    #[test]
    fn history_keeps_the_text_and_marks_the_images() {
        let png = b64(PNG);
        let answer = format!("before ![i](data:image/png;base64,{png}) after");
        assert_eq!(
            history_text(&messages(&answer, &[])),
            "before\n\n[image]\n\nafter"
        );
    }

    #[test]
    fn a_megabyte_of_unclosed_or_nested_images_is_read_in_one_pass() {
        // Each would take minutes if every `![` searched to the end of the text again.
        for text in [
            format!("{})", "![a](".repeat(200_000)),
            "![".repeat(500_000),
            format!("{}]", "![".repeat(500_000)),
            format!("{})", "![a](data:".repeat(100_000)),
        ] {
            assert_eq!(messages(&text, &[]), vec![AppMessage::text(text.trim())]);
        }
    }
}
