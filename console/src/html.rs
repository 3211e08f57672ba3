//! The one way text reaches a page: [`Html`], a writer whose only way to
//! add markup is a `&'static str` (so a literal in this crate's source) and
//! whose only way to add anything else is through [`escape`]. A device id,
//! a close reason, a lineage `ref` — everything a device or an operator
//! chose — can therefore only appear escaped.

use std::fmt::Write as _;

/// Escapes `text` for HTML element content and quoted attribute values:
/// `& < > " '` become character references; every other character is kept.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes `text` for one URL path segment or query value:
/// everything but unreserved characters (RFC 3986) is encoded, so a `/`,
/// `?`, `#` or `..` in a value cannot change which page a link names.
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An HTML document being written.
#[derive(Debug, Default)]
pub struct Html {
    out: String,
}

impl Html {
    /// An empty document.
    pub fn new() -> Html {
        Html::default()
    }

    /// Markup from this crate's source.
    pub fn raw(&mut self, markup: &'static str) -> &mut Html {
        self.out.push_str(markup);
        self
    }

    /// Text, escaped.
    pub fn text(&mut self, text: &str) -> &mut Html {
        self.out.push_str(&escape(text));
        self
    }

    /// A number or other `Display` value, escaped.
    pub fn show(&mut self, value: impl std::fmt::Display) -> &mut Html {
        self.text(&value.to_string())
    }

    /// A link: `href` is built from literal parts and URL-encoded values by
    /// the caller with [`url_part`], and escaped here as an attribute.
    pub fn link(&mut self, href: &str, text: &str) -> &mut Html {
        self.raw("<a href=\"")
            .text(href)
            .raw("\">")
            .text(text)
            .raw("</a>")
    }

    /// The document.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_every_markup_character() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("plain-id_01"), "plain-id_01");
        assert_eq!(escape("é ü 漢"), "é ü 漢");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn escaped_text_never_contains_a_markup_character() {
        // Every printable ASCII character and a few others, in every
        // position: the output has no raw < > " ' and every & starts an
        // entity this function writes.
        let all: String = (0x20u8..0x7f)
            .map(char::from)
            .chain(['\u{0}', '\n', 'ß'])
            .collect();
        for (i, _) in all.char_indices() {
            let out = escape(&all[i..]);
            assert!(!out.contains(['<', '>', '"', '\'']), "{out}");
            for (at, _) in out.match_indices('&') {
                let rest = &out[at..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                        .iter()
                        .any(|e| rest.starts_with(e)),
                    "{rest}"
                );
            }
        }
    }

    #[test]
    fn url_parts_cannot_leave_their_segment() {
        assert_eq!(
            url_part("../../etc/passwd"),
            "..%2F..%2Fetc%2Fpasswd".replace('.', "%2E")
        );
        assert_eq!(url_part("a b?c#d&e=f"), "a%20b%3Fc%23d%26e%3Df");
        assert_eq!(url_part("dev-01_x~"), "dev-01_x~");
    }

    #[test]
    fn the_writer_escapes_text_and_links() {
        let mut h = Html::new();
        h.raw("<p>").text("<b>").raw("</p>").link("/x?q=\"", "<i>");
        assert_eq!(
            h.finish(),
            "<p>&lt;b&gt;</p><a href=\"/x?q=&quot;\">&lt;i&gt;</a>"
        );
    }
}
