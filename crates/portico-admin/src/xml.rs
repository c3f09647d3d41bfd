//! A small XML writer for AWS Query protocol responses: elements and escaped text, nothing
//! else (no attributes beyond the root's namespace, no mixed content).

use std::fmt::Write as _;

/// An XML document being written.
#[derive(Debug, Default)]
pub(crate) struct Xml {
    out: String,
}

impl Xml {
    /// A document whose root element `root` declares `namespace`.
    pub(crate) fn with_root(root: &str, namespace: &str) -> Self {
        let mut xml = Self {
            out: String::with_capacity(1024),
        };
        let _ = write!(xml.out, "<{root} xmlns=\"{namespace}\">");
        xml
    }

    /// Opens `<tag>`.
    pub(crate) fn open(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.out, "<{tag}>");
        self
    }

    /// Closes `</tag>`.
    pub(crate) fn close(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.out, "</{tag}>");
        self
    }

    /// `<tag>text</tag>`, with `text` escaped.
    pub(crate) fn leaf(&mut self, tag: &str, text: impl std::fmt::Display) -> &mut Self {
        self.open(tag);
        escape_into(&mut self.out, &text.to_string());
        self.close(tag)
    }

    /// The document, closing `root`.
    pub(crate) fn finish(mut self, root: &str) -> String {
        self.close(root);
        self.out
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_elements_nest() {
        let mut xml = Xml::with_root("R", "urn:x");
        xml.open("A").leaf("B", "<1 & 'two'>").close("A");
        assert_eq!(
            xml.finish("R"),
            "<R xmlns=\"urn:x\"><A><B>&lt;1 &amp; &apos;two&apos;&gt;</B></A></R>"
        );
    }
}
