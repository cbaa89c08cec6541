//! Checkpoint files in the safetensors layout, with an integrity hash, written durably.
//!
//! Serves the question "what does a checkpoint cost the training loop?" (the Rust track, issue 20):
//! the trainer hands over one contiguous snapshot of its tensors and keeps training while a thread
//! writes, hashes, fsyncs and renames the file. The Python reference is `nanigpt/checkpoint.py`
//! (torch.save + sha256); the Python side of this format is `nanigpt/checkpoint_rust.py`.
//!
//! Layout (https://github.com/huggingface/safetensors, "Format"): 8 bytes little-endian header
//! length N, N bytes of JSON header, then the tensor bytes. The header maps each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the data section,
//! contiguous, no holes) and `__metadata__` to a string->string map. Ours always starts with
//! `{"__metadata__":{"nanigpt_xxh3_128":"<32 hex digits>"` so the hash sits at a fixed offset; it
//! is XXH3-128 (https://github.com/Cyan4973/xxHash) of the whole file with those 32 digits read as
//! zeros: every byte (length, header, data) is covered. The header is padded with spaces to a
//! multiple of 8 bytes, so data sections of tensors sorted by element size are naturally aligned.
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use xxhash_rust::xxh3::Xxh3;

pub const CHECKSUM_KEY: &str = "nanigpt_xxh3_128";
const HEADER_PREFIX: &str = "{\"__metadata__\":{\"nanigpt_xxh3_128\":\"";
const HASH_HEX: usize = 32;
/// Bytes of the file before the hash digits: the length prefix and the header's opening.
pub const HASH_OFFSET: usize = 8 + HEADER_PREFIX.len();
const CHUNK: usize = 8 << 20;

/// One tensor of the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

/// Bytes per element of a safetensors dtype name, None if unknown.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

/// The header bytes (length prefix included) with the hash digits zeroed.
///
/// Checks that the entries tile `data_len` bytes contiguously from 0 and that each span holds
/// exactly its shape's elements.
pub fn build_header(
    entries: &[Entry],
    metadata: &[(String, String)],
    data_len: u64,
) -> Result<Vec<u8>, String> {
    let mut json = String::from(HEADER_PREFIX);
    json.push_str(&"0".repeat(HASH_HEX));
    json.push('"');
    for (k, v) in metadata {
        if k == CHECKSUM_KEY || k.is_empty() {
            return Err(format!("metadata key {k:?} is reserved"));
        }
        json.push_str(&format!(",{}:{}", json_string(k), json_string(v)));
    }
    json.push('}');
    let mut at = 0u64;
    for e in entries {
        let size = dtype_size(&e.dtype)
            .ok_or_else(|| format!("tensor {:?}: unknown dtype {:?}", e.name, e.dtype))?;
        let numel: u64 = e.shape.iter().product();
        if e.begin != at || e.end < e.begin || e.end - e.begin != numel * size {
            return Err(format!(
                "tensor {:?}: data_offsets [{}, {}] do not follow {} or do not hold shape {:?} of {}",
                e.name, e.begin, e.end, at, e.shape, e.dtype
            ));
        }
        if e.name == "__metadata__" {
            return Err("a tensor may not be named __metadata__".into());
        }
        at = e.end;
        let shape: Vec<String> = e.shape.iter().map(|d| d.to_string()).collect();
        json.push_str(&format!(
            ",{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            json_string(&e.name),
            e.dtype,
            shape.join(","),
            e.begin,
            e.end
        ));
    }
    if at != data_len {
        return Err(format!(
            "the entries cover {at} bytes, the buffer holds {data_len}"
        ));
    }
    json.push('}');
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    Ok(out)
}

fn hex128(h: u128) -> String {
    format!("{h:032x}")
}

/// A temporary name beside `path`, unique to this process and moment.
fn temp_path(path: &Path) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{nanos}.tmp", std::process::id()))
}

fn write_temp(tmp: &Path, header: &[u8], data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(tmp)?;
    let mut hasher = Xxh3::new();
    hasher.update(header);
    f.write_all(header)?;
    for chunk in data.chunks(CHUNK) {
        hasher.update(chunk);
        f.write_all(chunk)?;
    }
    f.write_all_at(hex128(hasher.digest128()).as_bytes(), HASH_OFFSET as u64)?;
    f.sync_all()
}

/// Write `header` (from `build_header`) and `data` to `path`: temp file in the same folder, hash,
/// fsync, atomic rename, fsync of the folder. On failure the temp file is removed and `path` is
/// untouched; the error is one line naming the file and what to do.
pub fn write(path: &Path, header: &[u8], data: &[u8]) -> Result<u64, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = temp_path(path);
    let result = write_temp(&tmp, header, data)
        .and_then(|_| fs::rename(&tmp, path))
        .and_then(|_| File::open(&dir)?.sync_all());
    match result {
        Ok(()) => Ok((header.len() + data.len()) as u64),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(format!(
                "checkpoint {}: writing failed ({e}); free space on {} or fix its permissions, \
                 or set training.checkpoint_every: 0; the previous checkpoint is untouched",
                path.display(),
                dir.display()
            ))
        }
    }
}

/// Check a whole checkpoint file's bytes: the layout and the hash. Returns the header JSON and the
/// offset of the data section. Errors name `name` (the file) and what is wrong.
pub fn verify(bytes: &[u8], name: &str) -> Result<(String, usize), String> {
    let fix = "delete it to start the run from step 0";
    if bytes.len() < HASH_OFFSET + HASH_HEX {
        return Err(format!(
            "checkpoint {name}: truncated or not a checkpoint ({} bytes); {fix}",
            bytes.len()
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    if &bytes[8..HASH_OFFSET] != HEADER_PREFIX.as_bytes() {
        return Err(format!(
            "checkpoint {name}: not a naniGPT safetensors checkpoint (no {CHECKSUM_KEY} at the \
             start of its header); {fix}"
        ));
    }
    if n > bytes.len() - 8 {
        return Err(format!(
            "checkpoint {name}: truncated: the header says {n} bytes, the file holds {}; {fix}",
            bytes.len() - 8
        ));
    }
    let stored = std::str::from_utf8(&bytes[HASH_OFFSET..HASH_OFFSET + HASH_HEX])
        .map_err(|_| format!("checkpoint {name}: corrupt hash field; {fix}"))?
        .to_string();
    let mut hasher = Xxh3::new();
    hasher.update(&bytes[..HASH_OFFSET]);
    hasher.update(&[b'0'; HASH_HEX]);
    hasher.update(&bytes[HASH_OFFSET + HASH_HEX..]);
    let actual = hex128(hasher.digest128());
    let header = std::str::from_utf8(&bytes[8..8 + n])
        .map_err(|_| format!("checkpoint {name}: corrupt header (not UTF-8); {fix}"))?;
    let data_len = data_extent(header)
        .map_err(|e| format!("checkpoint {name}: corrupt header ({e}); {fix}"))?;
    if (8 + n) as u64 + data_len != bytes.len() as u64 {
        return Err(format!(
            "checkpoint {name}: truncated or padded: the header lists {data_len} bytes of tensors, \
             the file holds {}; {fix}",
            bytes.len() - 8 - n
        ));
    }
    if actual != stored {
        return Err(format!(
            "checkpoint {name}: corrupt: xxh3-128 of the file is {actual}, its header says \
             {stored}; {fix}"
        ));
    }
    Ok((header.to_string(), 8 + n))
}

/// The end of the last tensor's data, from the header JSON.
fn data_extent(header: &str) -> Result<u64, String> {
    let value: serde_json::Value = serde_json::from_str(header).map_err(|e| e.to_string())?;
    let map = value.as_object().ok_or("the header is not a JSON object")?;
    let mut end = 0u64;
    for (k, v) in map {
        if k == "__metadata__" {
            continue;
        }
        let offsets = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .ok_or_else(|| format!("tensor {k:?} has no data_offsets"))?;
        let e = offsets[1]
            .as_u64()
            .ok_or_else(|| format!("tensor {k:?}: bad offsets"))?;
        end = end.max(e);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> (Vec<Entry>, Vec<u8>) {
        let data: Vec<u8> = (0..40u8).collect();
        let e = vec![
            Entry {
                name: "a".into(),
                dtype: "F32".into(),
                shape: vec![2, 4],
                begin: 0,
                end: 32,
            },
            Entry {
                name: "b".into(),
                dtype: "BF16".into(),
                shape: vec![3],
                begin: 32,
                end: 38,
            },
            Entry {
                name: "c\"q".into(),
                dtype: "BOOL".into(),
                shape: vec![2],
                begin: 38,
                end: 40,
            },
        ];
        (e, data)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nanigpt-ckpt-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join("c.safetensors")
    }

    #[test]
    fn round_trip_and_hash() {
        let (e, data) = entries();
        let meta = vec![("k".to_string(), "v \"x\"".to_string())];
        let header = build_header(&e, &meta, data.len() as u64).unwrap();
        assert_eq!(header.len() % 8, 0);
        let path = scratch("rt");
        write(&path, &header, &data).unwrap();
        let bytes = fs::read(&path).unwrap();
        let (json, start) = verify(&bytes, "c").unwrap();
        assert_eq!(&bytes[start..], &data[..]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["__metadata__"]["k"], "v \"x\"");
        assert_eq!(v["c\"q"]["data_offsets"][1], 40);
        // a flipped bit anywhere is refused
        for i in [0usize, 20, HASH_OFFSET + 3, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(verify(&bad, "c").is_err(), "flip at {i} accepted");
        }
        // truncation is refused
        let err = verify(&bytes[..bytes.len() - 3], "c").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn bad_layouts_are_refused() {
        let (mut e, data) = entries();
        assert!(build_header(&e, &[], 39).is_err());
        e[1].begin = 33;
        assert!(build_header(&e, &[], 40).is_err());
        let (mut e, _) = entries();
        e[0].dtype = "F33".into();
        assert!(build_header(&e, &[], data.len() as u64).is_err());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let (e, data) = entries();
        let header = build_header(&e, &[], data.len() as u64).unwrap();
        let missing = std::env::temp_dir().join("nanigpt-no-such-dir/x/c.safetensors");
        let err = write(&missing, &header, &data).unwrap_err();
        assert!(
            err.contains("c.safetensors") && err.contains("writing failed"),
            "{err}"
        );
    }
}
