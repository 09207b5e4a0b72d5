//! Where text may be cut without changing its GPT-2 encoding: the rule ([`is_cut_point`]) and the
//! cutter built on it ([`split_for_encoding`]). [`source`](super::source) cuts documents into
//! pieces with it and [`prepare`](super::prepare) encodes the pieces in parallel; both rely on the
//! parts' encodings, concatenated, being the encoding of the whole.
//!
//! GPT-2 BPE first splits text with the regex
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+$ | \s+(?!\S) | \s
//! ```
//!
//! and byte-pair merges never cross a piece, so two encodings agree when their pieces agree. We cut
//! at byte `p` only when `text[p]` is `'\n'` or `' '` and the character before `p` is not
//! whitespace. Then:
//!
//! - In the whole text a piece ends at `p`: the piece holding `text[p-1]` contains a non-space
//!   character, and every such alternative contains whitespace only as a single leading space, so it
//!   cannot reach past `text[p-1]` into the whitespace at `p`.
//! - The left chunk segments exactly like the whole text: it ends in a non-space, so its whitespace
//!   runs are followed by the same non-space character either way (`\s+$` and `(?!\S)` see the same
//!   thing), and non-space pieces stop at `p` in both cases.
//! - The right chunk starts a piece at its first byte, exactly as the whole text does at `p`; the
//!   regex has no look-behind, `^` or `\b`, so matching from `p` onward is the same.
//!
//! (Cutting after a newline is *not* safe in general: in `"a\n\nb"` the whole text gives the pieces
//! `"\n"`, `"\n"` while a chunk ending in `"\n\n"` gives one piece `"\n\n"` via `\s+$`.) Cuts just
//! before the newline that ends a line are preferred, so chunks follow lines when the text has them.

/// How far past the target a chunk may grow while looking for a line boundary (at most a quarter
/// of the target).
const LINE_SEARCH_BYTES: usize = 64 << 10;

/// Whether cutting `text` at byte `p` leaves the BPE encoding unchanged (see the module docs).
pub fn is_cut_point(text: &str, p: usize) -> bool {
    let bytes = text.as_bytes();
    p > 0
        && p < bytes.len()
        && (bytes[p] == b'\n' || bytes[p] == b' ')
        && text[..p].chars().next_back().is_some_and(|c| !c.is_whitespace())
}

/// Cuts `text` into chunks of roughly `target_bytes` (at least one cut point past the target) that
/// encode, one by one and concatenated, exactly like the whole text. Prefers cutting before the
/// newline that ends a line; falls back to cutting before a space. A text with no cut point stays
/// in one piece. `target_bytes` of 1 cuts at every possible point.
pub fn split_for_encoding(text: &str, target_bytes: usize) -> Vec<&str> {
    let target = target_bytes.max(1);
    let bytes = text.as_bytes();
    let mut chunks = Vec::with_capacity(text.len() / target + 1);
    let mut start = 0;
    while text.len() - start > target {
        let from = start + target;
        let line_end = (from + LINE_SEARCH_BYTES.min(target / 4)).min(text.len());
        let newline_cut = (from..line_end).find(|&p| bytes[p] == b'\n' && is_cut_point(text, p));
        let cut = newline_cut.or_else(|| (from..text.len()).find(|&p| is_cut_point(text, p)));
        let Some(cut) = cut else { break };
        chunks.push(&text[start..cut]);
        start = cut;
    }
    chunks.push(&text[start..]);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_text_and_respect_the_rule() {
        let text = "ab cd\n\nef  gh\n ij\tkl \nmn";
        let chunks = split_for_encoding(text, 1);
        assert_eq!(chunks.concat(), text);
        assert_eq!(chunks, ["ab", " cd", "\n\nef", "  gh", "\n ij\tkl", " \nmn"]);
        assert_eq!(split_for_encoding("", 4), [""]);
        assert_eq!(split_for_encoding("abc", 100), ["abc"]);
    }

    #[test]
    fn prefers_line_ends() {
        let text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh\niiii jjjj";
        assert_eq!(split_for_encoding(text, 32), ["aaaa bbbb cccc dddd eeee ffff gggg hhhh", "\niiii jjjj"]);
        // Too far away: fall back to the next space.
        assert_eq!(split_for_encoding(text, 20), ["aaaa bbbb cccc dddd eeee", " ffff gggg hhhh\niiii", " jjjj"]);
    }
}
