//! Text that originates in a component, made safe to store, log, count and return.
//!
//! Why it exists: a component chooses the names it declares and uses, the messages it rejects a
//! batch with and the lines it logs, and any of them can be megabytes long or full of control
//! characters. Every such string goes through [`clip`] (or [`quoted`] for a name inside a message)
//! before the host keeps it anywhere: errors, `lastError`, dead letters, the audit trail, problem
//! details and log lines. The bounds are documented in host/docs/security.md.
//!
//! Architecture invariant: what leaves this module is at most its bound (plus [`MARKER_MAX_BYTES`])
//! and holds no control character: line breaks, NUL and escape sequences are written as `\u{..}`.

use std::fmt::Write as _;

/// Most bytes of a component-chosen name (table, column, projection, index, event type) quoted
/// inside a message.
pub const MAX_NAME_BYTES: usize = 128;
/// Most bytes of a component's own message (a rejection's text, one log or stdout line).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Most bytes of any error the host stores or returns about a component (`lastError`, a dead
/// letter's error, a problem's `detail`, an audit entry's detail).
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest truncation marker [`clip`] appends: `…[+18446744073709551615 bytes]`.
pub const MARKER_MAX_BYTES: usize = 32;

/// `text` with control characters escaped, cut at a character boundary to at most `max` bytes,
/// followed by `…[+N bytes]` when anything was cut (N counts the original bytes left out).
pub fn clip(text: &str, max: usize) -> String {
    clip_escaping(text, max, false)
}

/// A name inside a message: clipped to [`MAX_NAME_BYTES`] and quoted (`"name"`, with `"` and `\`
/// escaped).
pub fn quoted(name: &str) -> String {
    format!("\"{}\"", clip_escaping(name, MAX_NAME_BYTES, true))
}

fn clip_escaping(text: &str, max: usize, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len().min(max) + MARKER_MAX_BYTES);
    for (offset, c) in text.char_indices() {
        let before = out.len();
        if c.is_control() || is_invisible_override(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else if quotes && matches!(c, '"' | '\\') {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            let _ = write!(out, "…[+{} bytes]", text.len() - offset);
            return out;
        }
    }
    out
}

/// Characters that reorder or hide text in a terminal or a log viewer (bidirectional overrides
/// and isolates), escaped like control characters.
fn is_invisible_override(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept() {
        assert_eq!(clip("table seen", 64), "table seen");
        assert_eq!(quoted("seen"), "\"seen\"");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clip("a\nb\0c\u{1b}[31m", 64), "a\\u{a}b\\u{0}c\\u{1b}[31m");
        assert_eq!(clip("x\u{202e}y", 64), "x\\u{202e}y");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_a_marker() {
        let long = "é".repeat(1 << 20);
        let clipped = clip(&long, 11);
        assert_eq!(clipped, format!("ééééé…[+{} bytes]", (2 << 20) - 10));
        assert!(clipped.len() <= 11 + MARKER_MAX_BYTES);
        let names = quoted(&"n".repeat(16 << 20));
        assert!(
            names.len() <= MAX_NAME_BYTES + MARKER_MAX_BYTES + 4,
            "{}",
            names.len()
        );
        // Escapes count against the bound too.
        let nuls = clip(&"\0".repeat(10_000), 100);
        assert!(nuls.len() <= 100 + MARKER_MAX_BYTES, "{}", nuls.len());
    }
}
