//! Splitting text to WeCom's byte limits: the one place that knows the 2048-byte text limit.

/// message/send `text.content` is at most 2048 bytes; WeCom silently truncates longer text.
pub const TEXT_MAX_BYTES: usize = 2048;

/// Split `text` into ordered pieces of at most `max_bytes` bytes each, never inside a UTF-8 character.
/// A piece ends after a line break when one falls in the second half of the window, so paragraphs stay
/// whole; otherwise it is cut at the last character that fits. Concatenating the pieces gives `text`.
pub fn split_utf8(text: &str, max_bytes: usize) -> Vec<&str> {
    let max_bytes = max_bytes.max(4); // room for any one character
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max_bytes {
        let mut cut = max_bytes;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(nl) = rest[..cut].rfind('\n') {
            if nl + 1 > cut / 2 {
                cut = nl + 1;
            }
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_one_piece_and_empty_is_none() {
        assert_eq!(split_utf8("hello", 2048), vec!["hello"]);
        assert!(split_utf8("", 2048).is_empty());
    }

    #[test]
    fn prefers_line_breaks() {
        let text = format!("{}\n{}", "a".repeat(1500), "b".repeat(1000));
        let pieces = split_utf8(&text, 2048);
        assert_eq!(
            pieces,
            vec![format!("{}\n", "a".repeat(1500)), "b".repeat(1000)]
        );
    }

    #[test]
    fn never_splits_a_character() {
        let text = "你".repeat(1000); // 3000 bytes
        let pieces = split_utf8(&text, 2048);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].len(), 2046);
        assert_eq!(pieces.concat(), text);
    }

    proptest! {
        #[test]
        fn pieces_fit_and_rejoin(text in "\\PC{0,3000}", max in 4usize..300) {
            let pieces = split_utf8(&text, max);
            prop_assert_eq!(pieces.concat(), text.clone());
            for p in pieces {
                prop_assert!(!p.is_empty() && p.len() <= max);
            }
        }
    }
}
