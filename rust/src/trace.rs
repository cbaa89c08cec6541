//! The step breakdown of a profiler trace, streamed from `trace.json.gz`: a port of
//! `nanigpt/analysis/trace_analysis.py` (the reference; its docstring defines the categories, the
//! CPU self-time rule, the outlier rule and the wall-time partition), held equal to it by
//! `tests/test_trace_analysis_rust.py`.
//!
//! Serves the Rust track's question "does Rust matter for profiling infrastructure?": traces of
//! long profiling windows run to hundreds of MB. The JSON is read by serde_json from the gzip
//! stream (flate2) event by event, keeping only the seven fields of complete ("X") events, so
//! memory grows with the events kept, not with the file. Floating-point sums follow the
//! reference's order, so the results agree to the last bit in all but pathological cases.
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};

use fancy_regex::Regex;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

pub const CATEGORIES: [&str; 6] = [
    "matmul",
    "attention",
    "norm_elementwise",
    "communication",
    "memory_copy",
    "other",
];
const COMPUTE: [&str; 4] = ["matmul", "attention", "norm_elementwise", "other"];
const WALL_PRIORITY: [&str; 6] = [
    "matmul",
    "attention",
    "norm_elementwise",
    "other",
    "memory_copy",
    "communication",
];
const OUTLIER_FACTOR: f64 = 2.0;

/// One complete ("X") event: what the analysis reads.
#[derive(Debug, Clone)]
pub struct Event {
    pub cat: Option<String>,
    pub name: String,
    pub ts: f64,
    pub dur: f64,
    pub lane: String,
}

// --- streaming the JSON ------------------------------------------------------------------------

struct Item(Option<Event>);

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a trace event")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let (mut ph, mut cat, mut name) = (None::<Value>, None::<Value>, None::<Value>);
        let (mut ts, mut dur, mut pid, mut tid) =
            (None::<Value>, None, None::<Value>, None::<Value>);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "ph" => ph = Some(map.next_value()?),
                "cat" => cat = Some(map.next_value()?),
                "name" => name = Some(map.next_value()?),
                "ts" => ts = Some(map.next_value()?),
                "dur" => dur = Some(map.next_value::<Value>()?),
                "pid" => pid = Some(map.next_value()?),
                "tid" => tid = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let complete = matches!(&ph, Some(Value::String(p)) if p == "X");
        let (ts, dur) = match (ts.as_ref().and_then(number), dur.as_ref().and_then(number)) {
            (Some(t), Some(d)) if complete => (t, d),
            _ => return Ok(Item(None)),
        };
        let cat = match cat {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let name = name.as_ref().map(value_text).unwrap_or_default();
        let lane = format!(
            "{}/{}",
            pid.as_ref().map(value_text).unwrap_or("None".into()),
            tid.as_ref().map(value_text).unwrap_or("None".into())
        );
        Ok(Item(Some(Event {
            cat,
            name,
            ts,
            dur,
            lane,
        })))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Item(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Item, E> {
        Ok(Item(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item, E> {
        Ok(Item(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
        Ok(Item(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item, E> {
        Ok(Item(None))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item, E> {
        Ok(Item(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Item, E> {
        Ok(Item(None))
    }
}

impl<'de> de::Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

/// The events list, collected element by element.
struct Events<'a>(&'a mut Vec<Event>);

impl<'de> DeserializeSeed<'de> for Events<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Events<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of trace events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Item(e)) = seq.next_element()? {
            if let Some(e) = e {
                self.0.push(e);
            }
        }
        Ok(())
    }
}

/// The whole document: `{"traceEvents": [...], ...}` or a bare list.
struct Document<'a>(&'a mut Vec<Event>, &'a mut bool);

impl<'de> Visitor<'de> for Document<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with a 'traceEvents' list")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "traceEvents" {
                map.next_value_seed(Events(self.0))?;
                *self.1 = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        *self.1 = true;
        Events(self.0).visit_seq(seq)
    }
}

/// Complete events of a Chrome trace read from `reader` (already decompressed).
pub fn read_events<R: Read>(reader: R) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let mut found = false;
    let mut de = serde_json::Deserializer::from_reader(reader);
    de.deserialize_any(Document(&mut events, &mut found))
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    if !found {
        return Err("expected a JSON object with a 'traceEvents' list".into());
    }
    Ok(events)
}

/// Complete events of `path` (gzip when it ends in .gz); errors name the file.
pub fn read_path(path: &str) -> Result<Vec<Event>, String> {
    let file = File::open(path).map_err(|e| format!("trace not found: {path} ({e})"))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    let result = if path.ends_with(".gz") {
        read_events(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(reader),
        ))
    } else {
        read_events(reader)
    };
    result.map_err(|e| format!("{path}: not a readable Chrome trace ({e})"))
}

// --- categories ----------------------------------------------------------------------------------

/// `categorize` of the reference, with its patterns.
pub struct Categorizer {
    fused: Regex,
    layout_only: Regex,
    patterns: Vec<(&'static str, Regex)>,
    cache: HashMap<String, Option<&'static str>>,
}

impl Categorizer {
    pub fn new() -> Categorizer {
        let re = |s: &str| Regex::new(s).expect("pattern compiles");
        let patterns = vec![
            (
                "communication",
                re(
                    r"nccl|gloo|c10d|all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast|record_param_comms|sendrecv",
                ),
            ),
            (
                "attention",
                re(
                    r"flash|fmha|sdpa|scaled_?dot_?product|efficient_attention|cudnn_attention|attention|(^|[^a-z])mha|cudnn::fusion|dot_do_o|convert_dq",
                ),
            ),
            (
                "matmul",
                re(
                    r"gemm|cutlass|xmma|nvjet|cublas|wgmma|matmul|grouped_mm|(^|[^a-z])(mm|addmm|bmm|baddbmm|linear)([^a-z]|$)|(^|[^a-z])(mm|bmm|addmm)backward|triton_tem_fused_.*mm",
                ),
            ),
            ("memory_copy", re(r"memcpy|memset|copy|clone|contiguous")),
            (
                "norm_elementwise",
                re(
                    r"norm|softmax|elementwise|reduce|triton|silu|gelu|relu|sigmoid|tanh|sqrt|pow|exp|log|add|mul|sub|div|neg|sum|mean|max|min|clamp|lerp|foreach|adam|multi_tensor|cross_entropy|nll_loss|embedding|index|scatter|gather|topk|sort|cumsum|where|fill|zero|cat|stack|square|abs|(^|[^a-z])(eq|ne|lt|gt|le|ge)([^a-z]|$)|masked|bincount|nonzero|rotary|moments|gammabeta|arange|rand|dropout|rsub|reciprocal",
                ),
            ),
        ];
        Categorizer {
            fused: re(r"^triton_(poi|red|per)_fused_+(.*?)_*\d*$"),
            layout_only: re(r"^(to|copy|clone|view|unsafe|expand|permute|transpose|t|contiguous)$"),
            patterns,
            cache: HashMap::new(),
        }
    }

    fn uncached(&self, name: &str) -> Option<&'static str> {
        let lowered = name.to_lowercase();
        if let Ok(Some(c)) = self.fused.captures(&lowered) {
            let body = c.get(2).map(|m| m.as_str()).unwrap_or("");
            let ops: Vec<&str> = body
                .split('_')
                .filter(|op| !op.is_empty() && !op.chars().all(|ch| ch.is_numeric()))
                .collect();
            let layout = !ops.is_empty()
                && ops
                    .iter()
                    .all(|op| self.layout_only.is_match(op).unwrap_or(false));
            return Some(if layout {
                "memory_copy"
            } else {
                "norm_elementwise"
            });
        }
        self.patterns
            .iter()
            .find(|(_, p)| p.is_match(&lowered).unwrap_or(false))
            .map(|(c, _)| *c)
    }

    pub fn categorize(&mut self, name: &str) -> Option<&'static str> {
        if let Some(c) = self.cache.get(name) {
            return *c;
        }
        let c = self.uncached(name);
        self.cache.insert(name.to_string(), c);
        c
    }
}

impl Default for Categorizer {
    fn default() -> Self {
        Self::new()
    }
}

// --- interval arithmetic (microseconds) -------------------------------------------------------

type Span = (f64, f64);

pub fn union(mut v: Vec<Span>) -> Vec<Span> {
    v.retain(|i| i.1 > i.0);
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let mut merged: Vec<Span> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

pub fn length(v: &[Span]) -> f64 {
    v.iter().fold(0.0, |acc, (a, b)| acc + (b - a))
}

pub fn intersect(a: &[Span], b: &[Span]) -> Vec<Span> {
    let (mut out, mut i, mut j) = (Vec::new(), 0, 0);
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if e > s {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn complement(v: &[Span], start: f64, end: f64) -> Vec<Span> {
    let (mut out, mut cursor) = (Vec::new(), start);
    for &(a, b) in v {
        if a > cursor {
            out.push((cursor, a.min(end)));
        }
        cursor = cursor.max(b);
    }
    if cursor < end {
        out.push((cursor, end));
    }
    out.retain(|i| i.1 > i.0);
    out
}

// --- the analysis --------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Segment {
    start: f64,
    end: f64,
    category: &'static str,
    name: usize, // index into the names table
}

/// `ProfilerStep#N` spans of category `cat`, in first-seen order (a later duplicate overwrites).
fn profiler_steps(events: &[Event], cat: &str) -> Vec<(String, Span)> {
    let mut out: Vec<(String, Span)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for e in events {
        if e.cat.as_deref() == Some(cat) && e.name.starts_with("ProfilerStep#") {
            let span = (e.ts, e.ts + e.dur);
            match at.get(&e.name) {
                Some(&i) => out[i].1 = span,
                None => {
                    at.insert(e.name.clone(), out.len());
                    out.push((e.name.clone(), span));
                }
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn outlier_steps(steps: &[(String, Span)]) -> Vec<String> {
    if steps.len() < 3 {
        return vec![];
    }
    let m = median(steps.iter().map(|(_, (s, e))| e - s).collect());
    let mut out: Vec<String> = steps
        .iter()
        .filter(|(_, (s, e))| e - s > OUTLIER_FACTOR * m)
        .map(|(n, _)| n.clone())
        .collect();
    out.sort();
    out
}

struct Names {
    table: Vec<String>,
    index: HashMap<String, usize>,
}

impl Names {
    fn id(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.table.push(name.to_string());
        self.index.insert(name.to_string(), self.table.len() - 1);
        self.table.len() - 1
    }
}

fn gpu_segments(events: &[Event], cats: &mut Categorizer, names: &mut Names) -> Vec<Segment> {
    let mut out = Vec::new();
    for e in events {
        let category = match e.cat.as_deref() {
            Some("kernel") => cats.categorize(&e.name).unwrap_or("other"),
            Some("gpu_memcpy") | Some("gpu_memset") => "memory_copy",
            _ => continue,
        };
        out.push(Segment {
            start: e.ts,
            end: e.ts + e.dur,
            category,
            name: names.id(&e.name),
        });
    }
    out
}

fn cpu_segments(events: &[Event], cats: &mut Categorizer, names: &mut Names) -> Vec<Segment> {
    let mut lanes: Vec<Vec<&Event>> = Vec::new();
    let mut lane_at: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.cat.as_deref() == Some("cpu_op")) {
        let i = *lane_at.entry(e.lane.as_str()).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[i].push(e);
    }
    struct Open {
        start: f64,
        end: f64,
        category: Option<&'static str>,
        name: usize,
        children: Vec<Span>,
    }
    let mut out = Vec::new();
    let close = |o: Open, out: &mut Vec<Segment>| {
        for (a, b) in complement(&union(o.children), o.start, o.end) {
            out.push(Segment {
                start: a,
                end: b,
                category: o.category.unwrap_or("other"),
                name: o.name,
            });
        }
    };
    for mut ops in lanes {
        ops.sort_by(|a, b| {
            (a.ts, -a.dur)
                .partial_cmp(&(b.ts, -b.dur))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mut stack: Vec<Open> = Vec::new();
        for e in ops {
            let start = e.ts;
            let mut end = e.ts + e.dur;
            while stack.last().is_some_and(|top| start >= top.end) {
                close(stack.pop().unwrap(), &mut out);
            }
            let mut category = cats.categorize(&e.name);
            if let Some(top) = stack.last_mut() {
                if category.is_none() {
                    category = top.category;
                }
                end = end.min(top.end);
                top.children.push((start, end));
            }
            stack.push(Open {
                start,
                end,
                category,
                name: names.id(&e.name),
                children: vec![],
            });
        }
        while let Some(o) = stack.pop() {
            close(o, &mut out);
        }
    }
    out
}

fn wall_partition(segments: &[Segment], window: &[Span]) -> Vec<(&'static str, f64)> {
    let mut wall = Vec::new();
    let mut remaining = window.to_vec();
    let (lo, hi) = (window[0].0, window[window.len() - 1].1);
    for category in WALL_PRIORITY {
        let covered = union(
            segments
                .iter()
                .filter(|s| s.category == category)
                .map(|s| (s.start, s.end))
                .collect(),
        );
        let taken = intersect(&remaining, &covered);
        wall.push((category, length(&taken) / 1e6));
        remaining = intersect(&remaining, &complement(&taken, lo, hi));
    }
    wall.push(("idle", length(&remaining) / 1e6));
    wall
}

fn json_map(pairs: &[(&str, f64)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), float(*v)))
            .collect(),
    )
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// The reference's `analyze`, as the JSON of `TraceBreakdown`'s fields.
pub fn analyze(events: &[Event], drop_outliers: bool) -> Value {
    let mut cats = Categorizer::new();
    let mut names = Names {
        table: vec![],
        index: HashMap::new(),
    };
    let host_steps = profiler_steps(events, "user_annotation");
    let mut dropped = if drop_outliers {
        outlier_steps(&host_steps)
    } else {
        vec![]
    };
    let mut kept: Vec<&String> = host_steps
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !dropped.contains(n))
        .collect();
    let mut segments = gpu_segments(events, &mut cats, &mut names);
    let mode;
    let window: Vec<Span>;
    let min_max = |s: &[Segment]| {
        let lo = s.iter().map(|s| s.start).fold(f64::INFINITY, f64::min);
        let hi = s.iter().map(|s| s.end).fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    if !segments.is_empty() {
        mode = "gpu";
        let device_steps = profiler_steps(events, "gpu_user_annotation");
        let lookup = |n: &String| device_steps.iter().find(|(d, _)| d == n).map(|(_, s)| *s);
        if !dropped.is_empty() && kept.iter().all(|n| lookup(n).is_some()) {
            window = union(kept.iter().map(|n| lookup(n).unwrap()).collect());
        } else {
            dropped.clear();
            kept = host_steps.iter().map(|(n, _)| n).collect();
            window = vec![min_max(&segments)];
        }
    } else {
        mode = "cpu";
        segments = cpu_segments(events, &mut cats, &mut names);
        let steps_window: Vec<Span> = host_steps
            .iter()
            .filter(|(n, _)| kept.contains(&n))
            .map(|(_, s)| *s)
            .collect();
        let w = union(steps_window);
        window = if !w.is_empty() {
            w
        } else if !segments.is_empty() {
            union(vec![min_max(&segments)])
        } else {
            vec![]
        };
    }
    let zeros: Vec<(&str, f64)> = CATEGORIES.iter().map(|c| (*c, 0.0)).collect();
    if segments.is_empty() || window.is_empty() {
        let mut wall = zeros.clone();
        wall.push(("idle", 0.0));
        return serde_json::json!({
            "mode": "empty", "steps": kept.len(), "window_s": 0.0,
            "kernel_time_s": json_map(&zeros), "wall_time_s": json_map(&wall),
            "counts": {}, "top_names": {}, "comm_time_s": 0.0, "comm_overlap_s": 0.0,
            "comm_overlap_frac": null, "step_durations_s": {}, "dropped_steps": [],
        });
    }
    let mut clipped = Vec::new();
    for s in &segments {
        for (a, b) in intersect(&[(s.start, s.end)], &window) {
            clipped.push(Segment {
                start: a,
                end: b,
                ..s.clone()
            });
        }
    }
    let mut kernel: Vec<(&str, f64)> = zeros.clone();
    let mut counts: Vec<(&str, u64)> = CATEGORIES.iter().map(|c| (*c, 0)).collect();
    // per category (first-seen order), per name (first-seen order): seconds
    let mut by_name: Vec<(&str, Vec<(usize, f64)>, HashMap<usize, usize>)> = Vec::new();
    for s in &clipped {
        let d = (s.end - s.start) / 1e6;
        let k = CATEGORIES.iter().position(|c| *c == s.category).unwrap();
        kernel[k].1 += d;
        counts[k].1 += 1;
        let entry = match by_name.iter().position(|(c, _, _)| *c == s.category) {
            Some(i) => &mut by_name[i],
            None => {
                by_name.push((s.category, vec![], HashMap::new()));
                by_name.last_mut().unwrap()
            }
        };
        match entry.2.get(&s.name) {
            Some(&i) => entry.1[i].1 += d,
            None => {
                entry.2.insert(s.name, entry.1.len());
                entry.1.push((s.name, d));
            }
        }
    }
    let mut top = serde_json::Map::new();
    for (category, mut list, _) in by_name {
        list.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        let items: Vec<Value> = list
            .iter()
            .take(5)
            .map(|(n, t)| serde_json::json!([names.table[*n], float(*t)]))
            .collect();
        top.insert(category.to_string(), Value::Array(items));
    }
    let spans = |pred: &dyn Fn(&str) -> bool| {
        union(
            clipped
                .iter()
                .filter(|s| pred(s.category))
                .map(|s| (s.start, s.end))
                .collect(),
        )
    };
    let comm = spans(&|c| c == "communication");
    let compute = spans(&|c| COMPUTE.contains(&c));
    let comm_time = length(&comm) / 1e6;
    let overlap = length(&intersect(&comm, &compute)) / 1e6;
    let durations: serde_json::Map<String, Value> = host_steps
        .iter()
        .map(|(n, (s, e))| (n.clone(), float((e - s) / 1e6)))
        .collect();
    let counts: serde_json::Map<String, Value> = counts
        .iter()
        .map(|(c, n)| (c.to_string(), Value::from(*n)))
        .collect();
    serde_json::json!({
        "mode": mode,
        "steps": kept.len(),
        "window_s": length(&window) / 1e6,
        "kernel_time_s": json_map(&kernel),
        "wall_time_s": json_map(&wall_partition(&clipped, &window)),
        "counts": counts,
        "top_names": top,
        "comm_time_s": comm_time,
        "comm_overlap_s": overlap,
        "comm_overlap_frac": if comm_time > 0.0 { float(overlap / comm_time) } else { Value::Null },
        "step_durations_s": durations,
        "dropped_steps": dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = r#"{"traceEvents": [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "pid": 1, "tid": 1, "ts": 0, "dur": 100},
        {"ph": "X", "cat": "cpu_op", "name": "aten::linear", "pid": 1, "tid": 1, "ts": 10, "dur": 50, "args": {"a": [1, {"b": 2}]}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 20, "dur": 20},
        {"ph": "X", "cat": "cpu_op", "name": "aten::empty", "pid": 1, "tid": 1, "ts": 70, "dur": 10},
        {"ph": "s", "id": 3}, 7, "x"
    ], "other": {"k": [1, 2]}}"#;

    #[test]
    fn cpu_self_time_and_idle() {
        let events = read_events(TRACE.as_bytes()).unwrap();
        assert_eq!(events.len(), 4);
        let r = analyze(&events, true);
        assert_eq!(r["mode"], "cpu");
        let close = |v: &Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-15;
        assert!(close(&r["kernel_time_s"]["matmul"], 50e-6)); // linear self 30 + mm 20
        assert!(close(&r["kernel_time_s"]["other"], 10e-6)); // aten::empty at top level
        assert!(close(&r["wall_time_s"]["idle"], 40e-6));
    }

    #[test]
    fn categorize_like_the_reference() {
        let mut c = Categorizer::new();
        assert_eq!(c.categorize("ncclKernel_AllReduce"), Some("communication"));
        assert_eq!(c.categorize("fmha_cutlassF"), Some("attention"));
        assert_eq!(
            c.categorize("triton_poi_fused__to_copy_0"),
            Some("memory_copy")
        );
        assert_eq!(
            c.categorize("triton_red_fused_add_mean_1"),
            Some("norm_elementwise")
        );
        assert_eq!(c.categorize("aten::view"), None);
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(read_events(&b"{\"a\": 1}"[..]).is_err());
        assert!(read_events(&b"{\"traceEvents\": [1,"[..]).is_err());
        assert!(read_events(&b"[]"[..]).unwrap().is_empty());
    }
}
