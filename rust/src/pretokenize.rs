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

/// Class and UTF-8 length of the char at byte `i` (ASCII without decoding).
#[inline]
fn class_at(text: &str, table: &[u8], i: usize) -> (u8, usize) {
    let b = text.as_bytes()[i];
    if b < 0x80 {
        (table[b as usize], 1)
    } else {
        let c = text[i..].chars().next().unwrap();
        (table[c as usize], c.len_utf8())
    }
}

/// End (byte offset) of the GPT-2 chunk starting at `pos`; mirrors the alternatives in order.
fn gpt2_next(text: &str, pos: usize) -> usize {
    let table = classes();
    let bytes = text.as_bytes();
    let len = bytes.len();
    // 1. contractions: 's 't 're 've 'm 'll 'd
    if bytes[pos] == b'\'' && pos + 1 < len {
        match bytes[pos + 1] {
            b's' | b't' | b'm' | b'd' => return pos + 2,
            b'r' | b'v' if pos + 2 < len && bytes[pos + 2] == b'e' => return pos + 3,
            b'l' if pos + 2 < len && bytes[pos + 2] == b'l' => return pos + 3,
            _ => {}
        }
    }
    // 2-4. optional ' ' then a run of letters / numbers / other (not space, letter, number)
    let body = if bytes[pos] == b' ' { pos + 1 } else { pos };
    if body < len {
        let (cls, n) = class_at(text, table, body);
        let want = if cls & LETTER != 0 {
            LETTER
        } else if cls & NUMBER != 0 {
            NUMBER
        } else if cls & SPACE == 0 {
            0 // "other": stop at the first letter, number or space
        } else {
            u8::MAX // whitespace: fall through
        };
        if want != u8::MAX {
            let mut end = body + n;
            while end < len {
                let (k, n) = class_at(text, table, end);
                let keep = if want == 0 {
                    k & (SPACE | LETTER | NUMBER) == 0
                } else {
                    k & want != 0
                };
                if !keep {
                    break;
                }
                end += n;
            }
            return end;
        }
    }
    // 5-6. whitespace: `\s+(?!\S)` takes the run but leaves its last char if a non-space follows;
    // `\s+` takes a single char when the run is one char long.
    let mut end = pos;
    let mut last_start = pos;
    let mut n_chars = 0;
    while end < len {
        let (k, n) = class_at(text, table, end);
        if k & SPACE == 0 {
            break;
        }
        last_start = end;
        end += n;
        n_chars += 1;
    }
    if n_chars == 0 {
        // Cannot happen (a char is a letter, number, space or other); keep the scan moving.
        return pos + text[pos..].chars().next().unwrap().len_utf8();
    }
    if end < len && n_chars > 1 {
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
