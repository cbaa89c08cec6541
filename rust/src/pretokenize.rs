//! The GPT-2 pre-split: text -> chunks that BPE merges never cross.
//!
//! `Splitter::new(pattern)` compiles any pattern with fancy-regex (the GPT-2 pattern has a
//! lookahead, `\s+(?!\S)`, that the plain `regex` crate lacks). For the exact GPT-2 pattern it
//! uses a hand-written scanner instead, which `cargo test` holds equal to the regex.
use fancy_regex::Regex;
use std::sync::OnceLock;

/// GPT-2's pattern (openai/gpt-2, src/encoder.py); the same string as `nanigpt.data.bpe`.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

pub enum Splitter {
    Gpt2,
    Regex(Regex),
}

impl Splitter {
    pub fn new(pattern: &str) -> Result<Splitter, String> {
        if pattern == GPT2_PATTERN {
            classes(); // build the table once, outside any timed loop
            return Ok(Splitter::Gpt2);
        }
        Self::regex(pattern)
    }

    /// Always the regex engine (the reference the hand-written scanner is tested against).
    pub fn regex(pattern: &str) -> Result<Splitter, String> {
        Regex::new(pattern)
            .map(Splitter::Regex)
            .map_err(|e| format!("pattern {pattern:?} does not compile: {e}"))
    }

    /// Call `f` on each chunk, in order; the chunks concatenate back to `text`.
    pub fn for_each<'t>(&self, text: &'t str, mut f: impl FnMut(&'t str)) {
        match self {
            Splitter::Gpt2 => {
                let mut pos = 0;
                while pos < text.len() {
                    let end = gpt2_next(text, pos);
                    f(&text[pos..end]);
                    pos = end;
                }
            }
            Splitter::Regex(re) => {
                for m in re.find_iter(text) {
                    // fancy-regex only errs on backtrack-limit blowups, impossible for this pattern
                    // family; treat as a bug rather than silently dropping text.
                    let m = m.expect("pre-split regex failed (backtrack limit)");
                    f(m.as_str());
                }
            }
        }
    }

    pub fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut out = Vec::new();
        self.for_each(text, |c| out.push(c));
        out
    }
}

const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 4;

/// One byte per code point: bit LETTER for \p{L}, NUMBER for \p{N}, SPACE for \s (White_Space),
/// taken from regex-syntax's Unicode tables so they agree with the regex engine exactly.
fn classes() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![0u8; 0x110000];
        for (class, bit) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", SPACE)] {
            let hir = regex_syntax::parse(class).expect("unicode class");
            if let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(c)) =
                hir.kind()
            {
                for r in c.ranges() {
                    for cp in r.start() as u32..=r.end() as u32 {
                        table[cp as usize] |= bit;
                    }
                }
            } else {
                panic!("{class} did not parse to a Unicode class");
            }
        }
        table
    })
}

#[inline]
fn class_of(c: char) -> u8 {
    classes()[c as usize]
}

/// End (byte offset) of the GPT-2 chunk starting at `pos`; mirrors the alternatives in order.
fn gpt2_next(text: &str, pos: usize) -> usize {
    let bytes = text.as_bytes();
    let rest = &text[pos..];
    // 1. contractions
    if bytes[pos] == b'\'' {
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] {
            if rest[1..].starts_with(suffix) {
                return pos + 1 + suffix.len();
            }
        }
    }
    let mut chars = rest.char_indices().peekable();
    let (_, first) = *chars.peek().unwrap();
    // 2-4. optional ' ' then a run of letters / numbers / other (not space, letter, number)
    let body_start = if first == ' ' { 1 } else { 0 };
    if let Some(c) = rest[body_start..].chars().next() {
        let cls = class_of(c);
        let run = |want: &dyn Fn(u8) -> bool| -> usize {
            let mut end = body_start;
            for (i, ch) in rest[body_start..].char_indices() {
                if !want(class_of(ch)) {
                    return pos + body_start + i;
                }
                end = body_start + i + ch.len_utf8();
            }
            pos + end
        };
        if cls & LETTER != 0 {
            return run(&|k| k & LETTER != 0);
        }
        if cls & NUMBER != 0 {
            return run(&|k| k & NUMBER != 0);
        }
        if cls & (SPACE | LETTER | NUMBER) == 0 {
            return run(&|k| k & (SPACE | LETTER | NUMBER) == 0);
        }
    }
    // 5-6. whitespace: `\s+(?!\S)` takes the run but leaves its last char if a non-space follows;
    // `\s+` takes a single char when the run is one char long.
    let mut n_chars = 0;
    let mut last_start = pos;
    let mut end = text.len();
    let mut followed = false;
    for (i, ch) in rest.char_indices() {
        if class_of(ch) & SPACE == 0 {
            end = pos + i;
            followed = true;
            break;
        }
        n_chars += 1;
        last_start = pos + i;
    }
    if n_chars == 0 {
        // Cannot happen: a char is a letter, a number, a space or "other". Keep the scan moving.
        return pos + first.len_utf8();
    }
    if followed && n_chars > 1 {
        last_start
    } else {
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) {
        let fast = Splitter::new(GPT2_PATTERN).unwrap();
        let slow = Splitter::regex(GPT2_PATTERN).unwrap();
        assert_eq!(fast.split(text), slow.split(text), "text {text:?}");
    }

    #[test]
    fn hand_written_matches_regex() {
        for t in [
            "",
            "hello world",
            "  hello   world  ",
            "I'm 'sure' they'll've\n\n\nit's",
            "x = 3.14159;\tfoo(bar)\r\n",
            "naïve café 北京 emoji 🎉🎉 e\u{301} \u{a0}\u{a0}x \u{2028}",
            " 's 'S '' ''s 12ab ab12 ½ ٣",
            "   ",
            "a\n",
            "\n a",
            " !!",
            "  \u{85}x",
        ] {
            check(t);
        }
    }

    #[test]
    fn pseudo_random_strings_match() {
        let alphabet: Vec<char> =
            " \t\n\u{a0}\u{3000}'sdtrevmlSD09½٣aZéß北🎉\u{301}!?.,-_\u{85}\u{200b}\u{feff}"
                .chars()
                .collect();
        let mut state = 12345u64;
        for _ in 0..3000 {
            let len = (crate::loader::splitmix64(&mut state) % 20) as usize;
            let s: String = (0..len)
                .map(|_| {
                    alphabet
                        [(crate::loader::splitmix64(&mut state) % alphabet.len() as u64) as usize]
                })
                .collect();
            check(&s);
        }
    }
}
