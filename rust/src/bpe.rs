//! Byte-level BPE: trainer with incremental pair counts and a priority queue, and a rank encoder.
//!
//! Same merges and ids as the Python reference `nanigpt/data/bpe.py`, always:
//! - merge k gets id 256 + k; the most frequent pair wins, ties go to the smallest
//!   (left_id, right_id);
//! - a merge replaces occurrences left to right, non-overlapping ("aaa" with (a, a) -> [aa, a]);
//! - encoding repeatedly merges the adjacent pair of lowest rank, all occurrences at once.
//!
//! Training never recounts: after each merge only the words containing the pair are rewritten, and
//! the count changes of their pairs are applied and pushed to a max-heap whose stale entries are
//! skipped when popped (each count change pushes a fresh entry, so the live value is always there).
use crate::pretokenize::Splitter;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub type Pair = (u32, u32);

/// Replace every `pair` in `word` by `new_id`, left to right, non-overlapping.
pub fn merge_pair(word: &[u32], pair: Pair, new_id: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if i + 1 < word.len() && word[i] == pair.0 && word[i + 1] == pair.1 {
            out.push(new_id);
            i += 2;
        } else {
            out.push(word[i]);
            i += 1;
        }
    }
    out
}

/// Distinct chunks of the corpus with their frequency, counted in parallel over documents.
pub fn count_chunks<S: AsRef<str> + Sync>(texts: &[S], splitter: &Splitter) -> Vec<(Vec<u8>, u64)> {
    let counts: FxHashMap<&str, u64> = texts
        .par_iter()
        .fold(FxHashMap::default, |mut acc, text| {
            splitter.for_each(text.as_ref(), |chunk| *acc.entry(chunk).or_insert(0) += 1);
            acc
        })
        .reduce(FxHashMap::default, |a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (k, v) in small {
                *big.entry(k).or_insert(0) += v;
            }
            big
        });
    let mut chunks: Vec<(Vec<u8>, u64)> = counts
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect();
    chunks.sort_unstable(); // determinism of the word order (the result does not depend on it)
    chunks
}

/// Learn up to `vocab_size - 257` merges from `texts` (fewer if the corpus runs out of pairs).
pub fn train<S: AsRef<str> + Sync>(
    texts: &[S],
    vocab_size: usize,
    splitter: &Splitter,
) -> Result<Vec<Pair>, String> {
    if vocab_size < 257 {
        return Err(format!(
            "vocab_size must be >= 257 (256 bytes + <|endoftext|>), got {vocab_size}"
        ));
    }
    let chunks = count_chunks(texts, splitter);
    Ok(train_from_counts(&chunks, vocab_size - 257))
}

pub fn train_from_counts(chunks: &[(Vec<u8>, u64)], num_merges: usize) -> Vec<Pair> {
    let mut words: Vec<Vec<u32>> = chunks
        .iter()
        .map(|(c, _)| c.iter().map(|&b| b as u32).collect())
        .collect();
    let freqs: Vec<i64> = chunks.iter().map(|&(_, f)| f as i64).collect();

    // Initial pair counts and the index pair -> words containing it, in parallel.
    let (mut counts, mut where_): (FxHashMap<Pair, i64>, FxHashMap<Pair, FxHashSet<u32>>) = words
        .par_iter()
        .enumerate()
        .fold(
            || (FxHashMap::default(), FxHashMap::default()),
            |(mut c, mut w): (FxHashMap<Pair, i64>, FxHashMap<Pair, FxHashSet<u32>>), (i, word)| {
                for p in word.windows(2) {
                    let pair = (p[0], p[1]);
                    *c.entry(pair).or_insert(0) += freqs[i];
                    w.entry(pair).or_default().insert(i as u32);
                }
                (c, w)
            },
        )
        .reduce(
            || (FxHashMap::default(), FxHashMap::default()),
            |(mut c1, mut w1), (c2, w2)| {
                for (k, v) in c2 {
                    *c1.entry(k).or_insert(0) += v;
                }
                for (k, v) in w2 {
                    w1.entry(k).or_default().extend(v);
                }
                (c1, w1)
            },
        );

    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> =
        counts.iter().map(|(&p, &c)| (c, Reverse(p))).collect();
    let mut merges = Vec::with_capacity(num_merges);
    let mut delta: FxHashMap<Pair, i64> = FxHashMap::default();

    while merges.len() < num_merges {
        let Some((count, Reverse(pair))) = heap.pop() else {
            break;
        };
        if count <= 0 || counts.get(&pair) != Some(&count) {
            continue; // stale entry
        }
        let new_id = 256 + merges.len() as u32;
        merges.push(pair);
        delta.clear();
        let mut touched: Vec<u32> = where_
            .remove(&pair)
            .unwrap_or_default()
            .into_iter()
            .collect();
        touched.sort_unstable();
        for &wi in &touched {
            let word = &words[wi as usize];
            if !word.windows(2).any(|p| p[0] == pair.0 && p[1] == pair.1) {
                continue; // the index may hold words that lost the pair earlier
            }
            let f = freqs[wi as usize];
            for p in word.windows(2) {
                *delta.entry((p[0], p[1])).or_insert(0) -= f;
            }
            let merged = merge_pair(word, pair, new_id);
            for p in merged.windows(2) {
                let q = (p[0], p[1]);
                *delta.entry(q).or_insert(0) += f;
                if q.0 == new_id || q.1 == new_id {
                    where_.entry(q).or_default().insert(wi);
                }
            }
            words[wi as usize] = merged;
        }
        for (&q, &d) in delta.iter() {
            if d == 0 {
                continue;
            }
            let c = counts.entry(q).or_insert(0);
            *c += d;
            if *c > 0 {
                heap.push((*c, Reverse(q)));
            }
        }
    }
    merges
}

/// A trained tokenizer: merge ranks plus the pre-splitter.
pub struct Bpe {
    pub ranks: FxHashMap<Pair, u32>,
    pub vocab_size: u32,
    pub splitter: Splitter,
}

impl Bpe {
    pub fn new(merges: &[Pair], vocab_size: u32, pattern: &str) -> Result<Bpe, String> {
        if (vocab_size as usize) < 257 + merges.len() {
            return Err(format!(
                "vocab_size {vocab_size} is too small for {} merges + 256 bytes + <|endoftext|>",
                merges.len()
            ));
        }
        let mut ranks = FxHashMap::default();
        for (rank, &(l, r)) in merges.iter().enumerate() {
            let limit = 256 + rank as u32;
            if l >= limit || r >= limit {
                return Err(format!("merge {rank} is ({l}, {r}): ids must be < {limit}"));
            }
            ranks.insert((l, r), rank as u32);
        }
        Ok(Bpe {
            ranks,
            vocab_size,
            splitter: Splitter::new(pattern)?,
        })
    }

    pub fn eot_id(&self) -> u32 {
        self.vocab_size - 1
    }

    /// Ids of one chunk: lowest-rank adjacent pair first, all its occurrences, until none is left.
    pub fn encode_chunk(&self, chunk: &[u8], out: &mut Vec<u32>) {
        if chunk.len() == 1 {
            out.push(chunk[0] as u32);
            return;
        }
        let mut ids: Vec<u32> = chunk.iter().map(|&b| b as u32).collect();
        while ids.len() > 1 {
            let mut best: Option<(u32, Pair)> = None;
            for p in ids.windows(2) {
                if let Some(&r) = self.ranks.get(&(p[0], p[1])) {
                    if !matches!(best, Some((br, _)) if br <= r) {
                        best = Some((r, (p[0], p[1])));
                    }
                }
            }
            let Some((rank, pair)) = best else { break };
            // in-place left-to-right merge
            let new_id = 256 + rank;
            let (mut read, mut write) = (0, 0);
            while read < ids.len() {
                if read + 1 < ids.len() && ids[read] == pair.0 && ids[read + 1] == pair.1 {
                    ids[write] = new_id;
                    read += 2;
                } else {
                    ids[write] = ids[read];
                    read += 1;
                }
                write += 1;
            }
            ids.truncate(write);
        }
        out.extend_from_slice(&ids);
    }

    /// Ids of `text` (no EOT); a cache maps repeated chunks to their ids.
    pub fn encode_into(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        cache: &mut FxHashMap<String, Vec<u32>>,
    ) {
        self.splitter.for_each(text, |chunk| {
            if chunk.len() == 1 {
                out.push(chunk.as_bytes()[0] as u32);
            } else if let Some(ids) = cache.get(chunk) {
                out.extend_from_slice(ids);
            } else {
                let start = out.len();
                self.encode_chunk(chunk.as_bytes(), out);
                if cache.len() < 1 << 16 {
                    cache.insert(chunk.to_owned(), out[start..].to_vec());
                }
            }
        });
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_into(text, &mut out, &mut FxHashMap::default());
        out
    }

    /// Each text's ids, in parallel over documents (one chunk cache per worker).
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        append_eot: bool,
    ) -> Vec<Vec<u32>> {
        texts
            .par_iter()
            .map_init(FxHashMap::default, |cache, t| {
                let mut out = Vec::with_capacity(t.as_ref().len() / 3 + 1);
                self.encode_into(t.as_ref(), &mut out, cache);
                if append_eot {
                    out.push(self.eot_id());
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pretokenize::GPT2_PATTERN;

    /// Full recount per merge: the Python reference's algorithm.
    fn naive(chunks: &[(Vec<u8>, u64)], num_merges: usize) -> Vec<Pair> {
        let mut words: Vec<Vec<u32>> = chunks
            .iter()
            .map(|(c, _)| c.iter().map(|&b| b as u32).collect())
            .collect();
        let mut merges = vec![];
        for k in 0..num_merges {
            let mut counts: FxHashMap<Pair, u64> = FxHashMap::default();
            for (w, (_, f)) in words.iter().zip(chunks) {
                for p in w.windows(2) {
                    *counts.entry((p[0], p[1])).or_insert(0) += f;
                }
            }
            let Some((&best, _)) = counts.iter().min_by_key(|(&p, &c)| (Reverse(c), p)) else {
                break;
            };
            words = words
                .iter()
                .map(|w| merge_pair(w, best, 256 + k as u32))
                .collect();
            merges.push(best);
        }
        merges
    }

    #[test]
    fn merge_is_left_to_right() {
        assert_eq!(merge_pair(&[1, 1, 1], (1, 1), 9), vec![9, 1]);
        assert_eq!(merge_pair(&[1, 1, 1, 1], (1, 1), 9), vec![9, 9]);
    }

    #[test]
    fn incremental_equals_naive() {
        let text = "aaaa abab aaab the cat sat on the mat, the the thethe aaaaaaa 1111 11 !!!! ";
        let splitter = Splitter::new(GPT2_PATTERN).unwrap();
        let chunks = count_chunks(&[text.repeat(3), "zzz aaa".to_string()], &splitter);
        assert_eq!(train_from_counts(&chunks, 60), naive(&chunks, 60));
    }

    #[test]
    fn encode_reproduces_training_segmentation() {
        let texts = ["hello hello world, hello there wonderful world"];
        let splitter = Splitter::new(GPT2_PATTERN).unwrap();
        let merges = train(&texts, 300, &splitter).unwrap();
        let bpe = Bpe::new(&merges, 300, GPT2_PATTERN).unwrap();
        let ids = bpe.encode(texts[0]);
        assert!(ids.len() < texts[0].len() / 3);
    }
}
