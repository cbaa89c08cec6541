//! naniGPT's Rust track: the pieces of the data pipeline rewritten from their Python references.
//!
//! This file only converts types and releases the GIL; the logic lives in plain Rust modules
//! (`pretokenize`, `bpe`, `shard`, `loader`, `checkpoint`, `trace`) tested by `cargo test`.
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub mod bpe;
pub mod checkpoint;
pub mod loader;
pub mod pretokenize;
pub mod shard;
pub mod trace;

#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Run `f` on a pool of `num_threads` threads (all cores when None).
fn with_threads<T: Send>(num_threads: Option<usize>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    match num_threads {
        None => Ok(f()),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| PyRuntimeError::new_err(format!("cannot start {n} threads: {e}")))?;
            Ok(pool.install(f))
        }
    }
}

/// Learn BPE merges: `[(left_id, right_id), ...]` in rank order, identical to the Python reference.
#[pyfunction]
#[pyo3(signature = (texts, vocab_size, pattern=None, num_threads=None))]
fn train_bpe(
    py: Python<'_>,
    texts: Vec<String>,
    vocab_size: usize,
    pattern: Option<String>,
    num_threads: Option<usize>,
) -> PyResult<Vec<(u32, u32)>> {
    let pattern = pattern.unwrap_or_else(|| pretokenize::GPT2_PATTERN.to_string());
    let splitter = pretokenize::Splitter::new(&pattern).map_err(PyValueError::new_err)?;
    py.allow_threads(|| with_threads(num_threads, || bpe::train(&texts, vocab_size, &splitter)))?
        .map_err(PyValueError::new_err)
}

/// A trained byte-level BPE encoder (merges from tokenizer.json).
#[pyclass(frozen)]
struct Bpe {
    inner: bpe::Bpe,
}

#[pymethods]
impl Bpe {
    #[new]
    #[pyo3(signature = (merges, vocab_size, pattern=None))]
    fn new(merges: Vec<(u32, u32)>, vocab_size: u32, pattern: Option<String>) -> PyResult<Self> {
        let pattern = pattern.unwrap_or_else(|| pretokenize::GPT2_PATTERN.to_string());
        let inner = bpe::Bpe::new(&merges, vocab_size, &pattern).map_err(PyValueError::new_err)?;
        Ok(Bpe { inner })
    }

    #[getter]
    fn eot_id(&self) -> u32 {
        self.inner.eot_id()
    }

    /// Ids of one text (no EOT).
    fn encode(&self, py: Python<'_>, text: &str) -> Vec<u32> {
        py.allow_threads(|| self.inner.encode(text))
    }

    /// Ids of each text, parallel over texts with the GIL released.
    #[pyo3(signature = (texts, append_eot=false, num_threads=None))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        append_eot: bool,
        num_threads: Option<usize>,
    ) -> PyResult<Vec<Vec<u32>>> {
        py.allow_threads(|| {
            with_threads(num_threads, || self.inner.encode_batch(&texts, append_eot))
        })
    }

    /// Documents as one flat little-endian uint32 buffer with EOT after each, plus each document's
    /// token count (EOT included): what a shard needs, without a Python list per token.
    #[pyo3(signature = (texts, num_threads=None))]
    fn encode_documents<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        num_threads: Option<usize>,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<u64>)> {
        let (flat, lengths) = py.allow_threads(|| {
            with_threads(num_threads, || {
                let docs = self.inner.encode_batch(&texts, true);
                let lengths: Vec<u64> = docs.iter().map(|d| d.len() as u64).collect();
                let mut flat = Vec::with_capacity(lengths.iter().sum::<u64>() as usize * 4);
                for d in &docs {
                    for &id in d {
                        flat.extend_from_slice(&id.to_le_bytes());
                    }
                }
                (flat, lengths)
            })
        })?;
        Ok((PyBytes::new(py, &flat), lengths))
    }
}

/// A writable, C-contiguous int64 buffer of exactly `n` items, as a mutable slice.
// The slice borrows memory that Python owns (not `buf` itself); `check_disjoint` makes sure two
// such slices never alias.
#[allow(clippy::mut_from_ref)]
fn i64_slice<'a>(buf: &'a PyBuffer<i64>, n: usize, name: &str) -> PyResult<&'a mut [i64]> {
    if buf.readonly() || !buf.is_c_contiguous() || buf.item_count() != n {
        return Err(PyValueError::new_err(format!(
            "{name} must be a writable C-contiguous int64 buffer of {n} items, got {} items{}",
            buf.item_count(),
            if buf.readonly() { " (read-only)" } else { "" }
        )));
    }
    // SAFETY: checked writable, contiguous, of n i64 items; the PyBuffer keeps the memory alive
    // and the caller (our Python loader) does not touch the array while we fill it.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.buf_ptr() as *mut i64, n) })
}

/// Random windows of a token shard, filled into caller-owned int64 arrays (no copies).
#[pyclass]
struct BatchLoader {
    inner: loader::Loader,
}

/// The x, y (and optional labels) output buffers of one batch, checked and borrowed as slices.
type BatchSlices<'a> = (&'a mut [i64], &'a mut [i64], Option<&'a mut [i64]>);

fn batch_slices<'a>(
    x: &'a PyBuffer<i64>,
    y: &'a PyBuffer<i64>,
    labels: Option<&'a PyBuffer<i64>>,
    n: usize,
) -> PyResult<BatchSlices<'a>> {
    check_disjoint(&[Some(x), Some(y), labels])?;
    let ls = match labels {
        Some(l) => Some(i64_slice(l, n, "labels")?),
        None => None,
    };
    Ok((i64_slice(x, n, "x")?, i64_slice(y, n, "y")?, ls))
}

/// Refuse output buffers that share memory (two `&mut` to the same bytes would be undefined).
fn check_disjoint(bufs: &[Option<&PyBuffer<i64>>]) -> PyResult<()> {
    let spans: Vec<(usize, usize)> = bufs
        .iter()
        .flatten()
        .map(|b| {
            (
                b.buf_ptr() as usize,
                b.buf_ptr() as usize + b.item_count() * 8,
            )
        })
        .collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.0 < b.1 && b.0 < a.1 {
                return Err(PyValueError::new_err(
                    "x, y and labels must not share memory",
                ));
            }
        }
    }
    Ok(())
}

#[pymethods]
impl BatchLoader {
    #[new]
    fn new(path: &str, seq_len: usize, batch_size: usize, seed: u64) -> PyResult<Self> {
        let inner =
            loader::Loader::new(path, seq_len, batch_size, seed).map_err(PyValueError::new_err)?;
        Ok(BatchLoader { inner })
    }

    #[getter]
    fn num_tokens(&self) -> usize {
        self.inner.shard.num_tokens
    }

    #[pyo3(signature = (x, y, labels=None))]
    fn fill(
        &mut self,
        py: Python<'_>,
        x: PyBuffer<i64>,
        y: PyBuffer<i64>,
        labels: Option<PyBuffer<i64>>,
    ) -> PyResult<()> {
        let n = self.inner.seq_len * self.inner.batch_size;
        let (xs, ys, ls) = batch_slices(&x, &y, labels.as_ref(), n)?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.next_batch(xs, ys, ls));
        Ok(())
    }

    #[pyo3(signature = (index, n_batches, x, y, labels=None))]
    fn fill_eval(
        &self,
        py: Python<'_>,
        index: usize,
        n_batches: usize,
        x: PyBuffer<i64>,
        y: PyBuffer<i64>,
        labels: Option<PyBuffer<i64>>,
    ) -> PyResult<()> {
        let n = self.inner.seq_len * self.inner.batch_size;
        let (xs, ys, ls) = batch_slices(&x, &y, labels.as_ref(), n)?;
        let inner = &self.inner;
        py.allow_threads(|| inner.eval_batch(index, n_batches, xs, ys, ls));
        Ok(())
    }
}

/// The result of a background checkpoint write: what `wait` returns (bytes) or raises.
type WriteOutcome = (Result<u64, String>, f64);

/// A checkpoint being written on a background thread (`save_checkpoint`'s handle).
#[pyclass]
struct CheckpointWrite {
    path: String,
    thread: Option<std::thread::JoinHandle<(WriteOutcome, PyBuffer<u8>)>>,
    outcome: Option<WriteOutcome>,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[pymethods]
impl CheckpointWrite {
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// True once the file is durable (or the write failed); never blocks.
    fn done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Block (GIL released) until the file is durable; return its size in bytes, or raise OSError
    /// with a one-line message naming the file. Further calls return the same outcome.
    fn wait(&mut self, py: Python<'_>) -> PyResult<u64> {
        if let Some(thread) = self.thread.take() {
            let joined = py.allow_threads(|| thread.join());
            let (outcome, buffer) = joined.map_err(|_| {
                PyRuntimeError::new_err(format!("checkpoint {}: writer thread panicked", self.path))
            })?;
            drop(buffer); // released with the GIL held
            self.outcome = Some(outcome);
        }
        match &self.outcome {
            Some((Ok(n), _)) => Ok(*n),
            Some((Err(e), _)) => Err(PyOSError::new_err(e.clone())),
            None => Err(PyRuntimeError::new_err("checkpoint write has no outcome")),
        }
    }

    /// Seconds from the call of `save_checkpoint` to the file being durable (after `wait`).
    #[getter]
    fn durable_s(&self) -> Option<f64> {
        self.outcome.as_ref().map(|o| o.1)
    }
}

/// Start writing a checkpoint: `entries` are (name, dtype, shape, begin, end) over the contiguous
/// byte buffer `data` (which the caller must not modify until `wait` returns), `metadata` a
/// string map for `__metadata__`. Checks the layout now (ValueError), then writes on a thread.
#[pyfunction]
fn save_checkpoint(
    path: String,
    entries: Vec<(String, String, Vec<u64>, u64, u64)>,
    metadata: Vec<(String, String)>,
    data: PyBuffer<u8>,
) -> PyResult<CheckpointWrite> {
    let start = std::time::Instant::now();
    if !data.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "checkpoint data must be a C-contiguous byte buffer",
        ));
    }
    let entries: Vec<checkpoint::Entry> = entries
        .into_iter()
        .map(|(name, dtype, shape, begin, end)| checkpoint::Entry {
            name,
            dtype,
            shape,
            begin,
            end,
        })
        .collect();
    let header = checkpoint::build_header(&entries, &metadata, data.len_bytes() as u64)
        .map_err(|e| PyValueError::new_err(format!("checkpoint {path}: {e}")))?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let target = std::path::PathBuf::from(&path);
    let thread = std::thread::spawn(move || {
        // SAFETY: the PyBuffer keeps the exporter's memory alive and fixed until it is dropped
        // (in `wait`, or here if the handle is gone); the caller promised not to write to it.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
        let result = checkpoint::write(&target, &header, bytes);
        let outcome = (result, start.elapsed().as_secs_f64());
        flag.store(true, std::sync::atomic::Ordering::Release);
        (outcome, data)
    });
    Ok(CheckpointWrite {
        path,
        thread: Some(thread),
        outcome: None,
        done,
    })
}

/// Copy each C-contiguous byte buffer of `sources` into `dst` at its offset, GIL released: the
/// snapshot of a checkpoint (plain memcpy; torch's copy_ runs an OpenMP region per tensor, which on
/// a loaded 2-core machine costs more than the copy). Refuses spans outside `dst` or overlapping.
#[pyfunction]
fn copy_into(
    py: Python<'_>,
    dst: PyBuffer<u8>,
    sources: Vec<(PyBuffer<u8>, usize)>,
) -> PyResult<()> {
    if dst.readonly() || !dst.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "copy_into: dst must be a writable C-contiguous buffer",
        ));
    }
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(sources.len());
    for (src, at) in &sources {
        if !src.is_c_contiguous() || at + src.len_bytes() > dst.len_bytes() {
            return Err(PyValueError::new_err(format!(
                "copy_into: a source of {} bytes at {at} does not fit {} bytes (or is strided)",
                src.len_bytes(),
                dst.len_bytes()
            )));
        }
        spans.push((*at, at + src.len_bytes()));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(PyValueError::new_err("copy_into: sources overlap in dst"));
    }
    let base = dst.buf_ptr() as usize;
    let jobs: Vec<(usize, usize, usize)> = sources
        .iter()
        .map(|(s, at)| (s.buf_ptr() as usize, *at, s.len_bytes()))
        .collect();
    py.allow_threads(|| {
        for (src, at, n) in jobs {
            // SAFETY: spans checked inside dst and disjoint; the PyBuffers keep memory alive.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, (base + at) as *mut u8, n) };
        }
    });
    Ok(())
}

/// Verify a checkpoint file's bytes (a bytes-like object or mmap): layout and xxh3-128 hash.
/// Returns (header JSON, offset of the data section); ValueError naming `name` if it is damaged.
#[pyfunction]
fn verify_checkpoint(py: Python<'_>, data: PyBuffer<u8>, name: &str) -> PyResult<(String, usize)> {
    if !data.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "checkpoint bytes must be a C-contiguous buffer",
        ));
    }
    // SAFETY: the buffer stays alive for this call; we only read it.
    let bytes =
        unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
    py.allow_threads(|| checkpoint::verify(bytes, name))
        .map_err(PyValueError::new_err)
}

/// The step breakdown of a Chrome trace file (`trace.json.gz`), streamed and analysed in Rust
/// with the GIL released: the JSON of `nanigpt.analysis.trace_analysis.TraceBreakdown`'s fields.
/// ValueError naming the file when it is missing or not a readable trace.
#[pyfunction]
#[pyo3(signature = (path, drop_outliers=true))]
fn trace_breakdown(py: Python<'_>, path: &str, drop_outliers: bool) -> PyResult<String> {
    py.allow_threads(|| {
        let events = trace::read_path(path)?;
        Ok::<String, String>(trace::analyze(&events, drop_outliers).to_string())
    })
    .map_err(PyValueError::new_err)
}

#[pymodule]
fn nanigpt_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(train_bpe, m)?)?;
    m.add("GPT2_PATTERN", pretokenize::GPT2_PATTERN)?;
    m.add_class::<Bpe>()?;
    m.add_class::<BatchLoader>()?;
    m.add_class::<CheckpointWrite>()?;
    m.add_function(wrap_pyfunction!(save_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(verify_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(copy_into, m)?)?;
    m.add_function(wrap_pyfunction!(trace_breakdown, m)?)?;
    Ok(())
}
