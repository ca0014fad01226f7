//! How a user's values appear in the messages that refuse them: quoted, and cut short when
//! long, so that one huge value cannot flood a log line (or the memory that formats it).

/// The characters of a value a message shows before it cuts the rest.
pub const SHOWN_CHARS: usize = 100;

/// The longest a message gets once long values in it are cut; anything past this is cut too.
pub const MESSAGE_CHARS: usize = 1000;

/// `value` in double quotes, with quotes, backslashes and control characters escaped. A value
/// longer than [`SHOWN_CHARS`] shows its beginning, an ellipsis and its full length:
/// `"aaaa…" (1048576 characters)`.
pub fn quote(value: &str) -> String {
    let (shown, total) = head(value);
    let escaped: String = shown.chars().flat_map(char::escape_debug).collect();
    match total {
        None => format!("\"{escaped}\""),
        Some(total) => format!("\"{escaped}…\" ({total} characters)"),
    }
}

/// `text` as it is, or its first [`SHOWN_CHARS`] characters and an ellipsis: for names a
/// message mentions unquoted.
pub fn cut(text: &str) -> String {
    match head(text) {
        (shown, Some(_)) => format!("{shown}…"),
        (shown, None) => shown.to_owned(),
    }
}

/// Cuts every quoted span (between `"` or between backticks) longer than [`SHOWN_CHARS`] of a
/// message written by a library (YAML, serde), and the message itself past
/// [`MESSAGE_CHARS`]. Our own messages quote values with [`quote`] instead.
pub fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MESSAGE_CHARS * 4));
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let quote_char = rest[open..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=open]);
        let inside = &rest[open + 1..];
        let close = span_end(inside, quote_char);
        let span = &inside[..close];
        // One character more is let through: a value `quote` cut already ends in an ellipsis.
        let (shown, total) = match head_of(span, SHOWN_CHARS + 1) {
            (_, Some(total)) => (head(span).0, Some(total)),
            (whole, None) => (whole, None),
        };
        out.push_str(shown);
        if let Some(total) = total {
            out.push('…');
            out.push(quote_char);
            out.push_str(&format!(" ({total} characters)"));
        } else if close < inside.len() {
            out.push(quote_char);
        }
        rest = inside.get(close + 1..).unwrap_or("");
        if out.chars().count() > MESSAGE_CHARS {
            break;
        }
    }
    out.push_str(rest);
    let (shown, total) = head_of(&out, MESSAGE_CHARS);
    match total {
        None => out,
        Some(total) => format!("{shown}… ({total} characters in all)"),
    }
}

/// Where a quoted span that starts just after its opening quote ends: at its closing quote
/// (a `"` preceded by a backslash is escaped), or at the end of the text.
fn span_end(inside: &str, quote_char: char) -> usize {
    let mut escaped = false;
    for (i, c) in inside.char_indices() {
        if quote_char == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == quote_char && !escaped {
            return i;
        }
        escaped = false;
    }
    inside.len()
}

/// The first [`SHOWN_CHARS`] characters of `text`, and its length in characters when that
/// cuts something.
fn head(text: &str) -> (&str, Option<usize>) {
    head_of(text, SHOWN_CHARS)
}

fn head_of(text: &str, limit: usize) -> (&str, Option<usize>) {
    match text.char_indices().nth(limit) {
        None => (text, None),
        Some((cut, _)) => (&text[..cut], Some(text.chars().count())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_escaped() {
        assert_eq!(quote("kubebalancer.io/v2"), "\"kubebalancer.io/v2\"");
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote(&"é".repeat(100)), format!("\"{}\"", "é".repeat(100)));
    }

    #[test]
    fn long_values_show_their_beginning_and_length() {
        let long = "x".repeat(1 << 20);
        assert_eq!(
            quote(&long),
            format!("\"{}…\" (1048576 characters)", "x".repeat(100))
        );
        // Counted in characters, cut on a character boundary.
        let wide = "é".repeat(101);
        assert_eq!(
            quote(&wide),
            format!("\"{}…\" (101 characters)", "é".repeat(100))
        );
    }

    #[test]
    fn names_are_cut_without_quotes() {
        assert_eq!(cut("shop/web"), "shop/web");
        assert_eq!(cut(&"n".repeat(300)), format!("{}…", "n".repeat(100)));
    }

    #[test]
    fn library_messages_get_their_long_quoted_spans_cut() {
        let long = "A".repeat(5000);
        assert_eq!(
            shorten_quoted(&format!(
                "unknown variant `{long}`, expected one of `Enabled`, `Drain`"
            )),
            format!(
                "unknown variant `{}…` (5000 characters), expected one of `Enabled`, `Drain`",
                "A".repeat(100)
            )
        );
        assert_eq!(
            shorten_quoted(&format!(
                "invalid type: string \"a\\\"{long}\", expected u32"
            )),
            format!(
                "invalid type: string \"a\\\"{}…\" (5003 characters), expected u32",
                "A".repeat(97)
            )
        );
        // What `quote` wrote is left alone.
        let quoted = format!("found {}", quote(&long));
        assert_eq!(shorten_quoted(&quoted), quoted);
        let short = "invalid type: string \"5 seconds\", expected u32";
        assert_eq!(shorten_quoted(short), short);
        assert_eq!(shorten_quoted("no quotes at all"), "no quotes at all");
        // An unclosed quote runs to the end.
        assert_eq!(
            shorten_quoted(&format!("found `{long}")),
            format!("found `{}…` (5000 characters)", "A".repeat(100))
        );
    }

    #[test]
    fn a_message_long_without_quotes_is_cut_too() {
        let long = "word ".repeat(1000);
        let short = shorten_quoted(&long);
        assert!(short.ends_with("… (5000 characters in all)"), "{short}");
        assert_eq!(
            short.chars().count(),
            MESSAGE_CHARS + "… (5000 characters in all)".chars().count()
        );
    }
}
