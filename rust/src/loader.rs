//! Batch loader over a memory-mapped shard: the same windows as `nanigpt/data/loader.py`.
//!
//! Sampling (both languages): a splitmix64 generator seeded with `seed`; row r of a batch starts at
//! `next() % (num_tokens - seq_len)`; x = tokens[s .. s + seq_len], y = tokens[s + 1 .. s + seq_len + 1],
//! labels = the labels of y's tokens. Eval window i of n_windows starts at
//! `i * (num_tokens - seq_len - 1) / (n_windows - 1)` (integer division; 0 when n_windows == 1).
use crate::shard::Shard;

/// splitmix64 (Steele, Lea, Flood 2014; constants from Vigna's reference code).
#[inline]
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct Loader {
    pub shard: Shard,
    pub seq_len: usize,
    pub batch_size: usize,
    pub state: u64,
}

impl Loader {
    pub fn new(path: &str, seq_len: usize, batch_size: usize, seed: u64) -> Result<Loader, String> {
        let shard = Shard::open(path)?;
        if seq_len == 0 || batch_size == 0 {
            return Err(format!(
                "seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}"
            ));
        }
        if shard.num_tokens < seq_len + 1 {
            return Err(format!(
                "token shard {path} has {} tokens, a window needs seq_len + 1 = {}",
                shard.num_tokens,
                seq_len + 1
            ));
        }
        Ok(Loader {
            shard,
            seq_len,
            batch_size,
            state: seed,
        })
    }

    fn fill_rows(
        &self,
        starts: &[usize],
        x: &mut [i64],
        y: &mut [i64],
        labels: Option<&mut [i64]>,
    ) {
        let t = self.seq_len;
        for (r, &s) in starts.iter().enumerate() {
            self.shard.tokens_into(s, &mut x[r * t..(r + 1) * t]);
            // y is x shifted by one: copy the overlap, read one more token
            y[r * t..(r + 1) * t - 1].copy_from_slice(&x[r * t + 1..(r + 1) * t]);
            y[(r + 1) * t - 1] = self.shard.token(s + t);
        }
        if let Some(l) = labels {
            for (r, &s) in starts.iter().enumerate() {
                self.shard.labels_into(s + 1, &mut l[r * t..(r + 1) * t]);
            }
        }
    }

    /// Next training batch into row-major (batch_size, seq_len) buffers.
    pub fn next_batch(&mut self, x: &mut [i64], y: &mut [i64], labels: Option<&mut [i64]>) {
        let n_starts = (self.shard.num_tokens - self.seq_len) as u64;
        let starts: Vec<usize> = (0..self.batch_size)
            .map(|_| (splitmix64(&mut self.state) % n_starts) as usize)
            .collect();
        self.fill_rows(&starts, x, y, labels);
    }

    /// Eval batch `index` of `n_batches` evenly spaced, seed-independent batches.
    pub fn eval_batch(
        &self,
        index: usize,
        n_batches: usize,
        x: &mut [i64],
        y: &mut [i64],
        labels: Option<&mut [i64]>,
    ) {
        let n_windows = (n_batches * self.batch_size) as u128;
        let span = (self.shard.num_tokens - self.seq_len - 1) as u128;
        let starts: Vec<usize> = (0..self.batch_size)
            .map(|r| {
                let i = (index * self.batch_size + r) as u128;
                if n_windows <= 1 {
                    0
                } else {
                    (i * span / (n_windows - 1)) as usize
                }
            })
            .collect();
        self.fill_rows(&starts, x, y, labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // First outputs for seed 0 of Vigna's splitmix64.c.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220A8397B1DCDAF);
        assert_eq!(splitmix64(&mut s), 0x6E789E6AA1B965F4);
    }
}
