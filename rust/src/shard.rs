//! Token shards: the binary format of `nanigpt/data/shards.py`, read-only side (memory-mapped).
//!
//! Header (64 bytes, little-endian): magic b"NANITOK\0", version u32 = 1, token dtype code u32,
//! label dtype code u32, vocab_size u32, token count u64, byte count u64, 24 reserved zero bytes.
//! Tokens start at byte 64; labels start at 64 + tokens' size rounded up to 8. The file size must
//! equal labels' offset + labels' size exactly.
use memmap2::Mmap;
use std::fs::File;

pub const MAGIC: &[u8; 8] = b"NANITOK\0";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dtype {
    U8,
    U16,
    U32,
    I16,
    I32,
}

impl Dtype {
    pub fn from_code(code: u32) -> Option<Dtype> {
        Some(match code {
            1 => Dtype::U8,
            2 => Dtype::U16,
            3 => Dtype::U32,
            4 => Dtype::I16,
            5 => Dtype::I32,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::U32 | Dtype::I32 => 4,
        }
    }
}

pub struct Shard {
    pub mmap: Mmap,
    pub token_dtype: Dtype,
    pub label_dtype: Dtype,
    pub vocab_size: u32,
    pub num_tokens: usize,
    pub byte_count: u64,
    pub labels_offset: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Shard {
    pub fn open(path: &str) -> Result<Shard, String> {
        let err = |msg: String| format!("token shard {path}: {msg}");
        let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        // SAFETY: shards are written once (atomic rename) and never modified in place.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
        let b = &mmap[..];
        if b.len() < HEADER_SIZE {
            return Err(err(format!(
                "truncated: {} bytes, header needs {HEADER_SIZE}",
                b.len()
            )));
        }
        if &b[0..8] != MAGIC {
            return Err(err(format!(
                "not a naniGPT token shard (magic {:?})",
                &b[0..8]
            )));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(err(format!("format version {version}, expected {VERSION}")));
        }
        let token_dtype = match Dtype::from_code(u32_at(b, 12)) {
            Some(d @ (Dtype::U16 | Dtype::U32)) => d,
            _ => return Err(err(format!("bad token dtype code {}", u32_at(b, 12)))),
        };
        let label_dtype = Dtype::from_code(u32_at(b, 16))
            .ok_or_else(|| err(format!("bad label dtype code {}", u32_at(b, 16))))?;
        let vocab_size = u32_at(b, 20);
        let num_tokens = u64_at(b, 24) as usize;
        let byte_count = u64_at(b, 32);
        let labels_offset = HEADER_SIZE + (num_tokens * token_dtype.size()).div_ceil(8) * 8;
        let expected = labels_offset + num_tokens * label_dtype.size();
        if b.len() != expected {
            return Err(err(format!(
                "size {} bytes, header says {num_tokens} tokens => {expected} bytes (truncated or corrupt)",
                b.len()
            )));
        }
        Ok(Shard {
            mmap,
            token_dtype,
            label_dtype,
            vocab_size,
            num_tokens,
            byte_count,
            labels_offset,
        })
    }

    #[inline]
    pub fn token(&self, i: usize) -> i64 {
        let b = &self.mmap[HEADER_SIZE..];
        match self.token_dtype {
            Dtype::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as i64,
            _ => u32_at(b, 4 * i) as i64,
        }
    }

    /// Copy tokens [start, start + out.len()) into `out` as i64.
    pub fn tokens_into(&self, start: usize, out: &mut [i64]) {
        let b = &self.mmap[HEADER_SIZE..];
        match self.token_dtype {
            Dtype::U16 => {
                let src = &b[2 * start..2 * (start + out.len())];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]) as i64;
                }
            }
            _ => {
                let src = &b[4 * start..4 * (start + out.len())];
                for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64;
                }
            }
        }
    }

    /// Copy labels [start, start + out.len()) into `out` as i64.
    pub fn labels_into(&self, start: usize, out: &mut [i64]) {
        let b = &self.mmap[self.labels_offset..];
        let size = self.label_dtype.size();
        let src = &b[size * start..size * (start + out.len())];
        for (o, c) in out.iter_mut().zip(src.chunks_exact(size)) {
            *o = match self.label_dtype {
                Dtype::U8 => c[0] as i64,
                Dtype::U16 => u16::from_le_bytes([c[0], c[1]]) as i64,
                Dtype::I16 => i16::from_le_bytes([c[0], c[1]]) as i64,
                Dtype::U32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
                Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            };
        }
    }
}
