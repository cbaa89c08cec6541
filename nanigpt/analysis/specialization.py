"""Expert specialization against the known sources: do experts learn the mixture's structure?

Serves core question 3 (when and why do MoEs win). The synthetic mixture labels every token with
the source that wrote it, so routing can be scored against the truth: per MoE layer, the
expert-by-source count matrix, the mutual information I(expert; source) in nats and normalised by
H(source) (0 = routing says nothing about the source, 1 = the expert determines the source), the
per-expert load and its coefficient of variation, the fraction of dropped assignments and the
router's entropy. Measured on the final model and on every training snapshot, so one sees
specialization emerge; a model trained on single-source data (the control) gives the baseline.

Definitions:
- Counts: `C[e, s]` = tokens of source s whose router chose expert e. "top1" counts each token's
  first choice once; "all" counts each of its k choices (a token then weighs k assignments). The
  choice is the router's (before capacity), so the matrix shows what the router wants, and
  `dropped_frac` says how much of it capacity refused.
- I(E; S) = sum_es p(e, s) ln(p(e, s) / (p(e) p(s))) with p = C / sum C, in nats (Cover & Thomas
  2006, eq. 2.28); normalised by H(S) = -sum_s p(s) ln p(s), so a deterministic bijection of K
  equally likely sources onto K experts scores ln K / ln K = 1 and a router independent of the
  source scores 0. With one source H(S) = 0 and the ratio is undefined: null, with the reason.
- Load: fraction of assignments routed to each expert (pre-capacity, the `f_i` of Switch eq. 4);
  coefficient of variation = std / mean over experts (population std; 0 = perfectly balanced,
  as used for load balance by Shazeer et al. 2017).
- Router entropy: mean over tokens of the entropy of the router's softmax, nats (max ln E).

The analysed tokens are `max_tokens` (rounded down to whole windows) from evenly spaced windows of
the run's `seq_len` over the shard, run in forward calls of the run's `batch_size`, so capacity
(shared by the tokens of one forward call) drops as it did in training. A token's label is the
label of the input token the router sees. The CLI and its files: `docs/interfaces.md`, "Analysis
outputs".
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nanigpt.data.loader import eval_starts
from nanigpt.data.shards import Shard, ShardError, read_shard
from nanigpt.io import atomic_path, read_json, write_json_atomic
from nanigpt.model.config import GPTConfig
from nanigpt.model.gpt import GPT

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

SNAPSHOT_PATTERN = re.compile(r"^step_(\d+)\.pt$")
DEFAULT_MAX_TOKENS = 65536


class SpecializationError(ValueError):
    """Input the analysis cannot score: no source labels, a dense model, a missing file."""


# --- pure measures on (assignment, label) arrays ----------------------------------------------


def count_matrix(
    experts: Any, sources: Any, num_experts: int, num_sources: int | None = None
) -> np.ndarray:
    """`C[e, s]`: assignments to expert e of tokens labelled s.

    `experts` is [N] (one choice per token) or [N, k] (every choice counted; pass `[:, :1]` for
    top-1); `sources` is [N] non-negative labels. `num_sources` defaults to max label + 1.
    """
    experts = np.asarray(experts)
    sources = np.asarray(sources)
    if experts.ndim == 1:
        experts = experts[:, None]
    if experts.ndim != 2 or sources.ndim != 1 or experts.shape[0] != sources.shape[0]:
        raise ValueError(
            f"expert assignments {experts.shape} and source labels {sources.shape}: expected "
            f"[N] or [N, k] assignments for [N] labels"
        )
    if sources.size and sources.min() < 0:
        raise SpecializationError(
            f"source labels must be >= 0 (a negative label marks an unlabelled token), got "
            f"{int(sources.min())}"
        )
    if experts.size and (experts.min() < 0 or experts.max() >= num_experts):
        raise ValueError(
            f"expert ids must lie in [0, {num_experts}), got [{experts.min()}, {experts.max()}]"
        )
    if num_sources is None:
        num_sources = int(sources.max()) + 1 if sources.size else 0
    k = experts.shape[1]
    flat = experts.reshape(-1).astype(np.int64) * num_sources + np.repeat(sources, k)
    return np.bincount(flat, minlength=num_experts * num_sources).reshape(num_experts, num_sources)


def entropy(counts: Any) -> float:
    """Shannon entropy in nats of the distribution proportional to `counts`."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    total = c.sum()
    if total <= 0:
        return 0.0
    c = c[c > 0]
    return float(max(0.0, math.log(total) - (c * np.log(c)).sum() / total))


def mutual_information(counts: Any) -> float:
    """I(E; S) in nats of the joint distribution proportional to the matrix `counts[e, s]`.

    Computed as sum_c (c / N) (ln c + ln N - ln row_e - ln col_s) over non-zero cells. A matrix
    that is exactly the product of its marginals (C N = row col, exact for integer counts below
    2**26) gives exactly 0; otherwise tiny negative rounding is clipped to 0 (I >= 0).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"counts must be a 2-D [experts, sources] matrix, got shape {c.shape}")
    total = c.sum()
    if total <= 0:
        return 0.0
    rows, cols = c.sum(1), c.sum(0)
    if np.array_equal(c * total, np.outer(rows, cols)):
        return 0.0  # an exact product of its marginals (checked exactly for integer counts)
    e, s = np.nonzero(c)
    cell = c[e, s]
    terms = cell * (np.log(cell) + math.log(total) - np.log(rows[e]) - np.log(cols[s]))
    return float(max(0.0, terms.sum() / total))


def specialization(counts: Any) -> dict[str, Any]:
    """MI, H(source), H(expert) and the normalised MI I/H(source) of one count matrix.

    `normalized_mi` is None, with `normalized_mi_reason`, when H(source) = 0 (one source seen).
    """
    c = np.asarray(counts, dtype=np.float64)
    mi = mutual_information(c)
    h_source = entropy(c.sum(0))
    h_expert = entropy(c.sum(1))
    out: dict[str, Any] = {
        "mi_nats": mi,
        "h_source_nats": h_source,
        "h_expert_nats": h_expert,
        "normalized_mi": None,
        "normalized_mi_reason": None,
    }
    present = int((c.sum(0) > 0).sum())
    if h_source <= 0:
        out["normalized_mi_reason"] = (
            f"H(source) = 0: the analysed tokens carry {present} distinct source label(s), so "
            f"I(expert; source) / H(source) is undefined (a single-source shard has no source "
            f"structure to score)"
        )
    else:
        out["normalized_mi"] = float(min(1.0, mi / h_source))
    return out


def coefficient_of_variation(load: Any) -> float:
    """std / mean of per-expert load (population std); 0 for perfect balance or one expert."""
    x = np.asarray(load, dtype=np.float64)
    mean = x.mean()
    return float(x.std() / mean) if mean > 0 else math.nan


def check_labels(shard: Shard) -> None:
    """Refuse a shard whose tokens carry no usable source labels, naming the shard."""
    labels = getattr(shard, "labels", None)
    if labels is None or len(labels) == 0 or len(labels) != len(shard.tokens):
        have = "no" if labels is None else str(len(labels))
        raise SpecializationError(
            f"token shard {shard.path} has {have} source labels for {len(shard.tokens)} tokens: "
            f"specialization is scored against each token's source label; expected a shard "
            f"written by `nanigpt.data.tokenize encode` from text with a source_id column"
        )
    low = int(np.min(labels))
    if low < 0:
        raise SpecializationError(
            f"token shard {shard.path}: source label {low} < 0 marks unlabelled tokens; "
            f"specialization needs every token labelled with its source_id (>= 0)"
        )


# --- routing a model over a shard ---------------------------------------------------------------


def analysis_windows(
    shard: Shard, seq_len: int, max_tokens: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced windows [W, seq_len] of tokens and of their labels (see module docstring)."""
    check_labels(shard)
    n = len(shard.tokens)
    if n < seq_len + 1:
        raise SpecializationError(
            f"token shard {shard.path} has {n} tokens; one window of seq_len={seq_len} needs "
            f"{seq_len + 1}"
        )
    budget = n if max_tokens is None else min(max_tokens, n)
    n_windows = max(1, min(budget // seq_len, n // seq_len))
    starts = eval_starts(n, seq_len, n_windows)
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    tokens = np.asarray(shard.tokens[idx], dtype=np.int64)
    labels = np.asarray(shard.labels[idx], dtype=np.int64)
    return tokens, labels


@torch.no_grad()
def route(
    model: GPT, tokens: np.ndarray, labels: np.ndarray, batch_size: int
) -> list[dict[str, Any]]:
    """Run `model` over token windows; per MoE layer, the counts and the router statistics."""
    cfg = model.cfg
    if cfg.moe is None:
        raise SpecializationError(
            "the model has no MoE layer (model.moe is null): nothing to route"
        )
    num_experts, k = cfg.moe.num_routed_experts, cfg.moe.active_experts
    num_sources = int(labels.max()) + 1
    model.eval()
    acc: dict[int, dict[str, Any]] = {}
    for lo in range(0, len(tokens), batch_size):
        x = torch.from_numpy(tokens[lo : lo + batch_size])
        lab = labels[lo : lo + batch_size].reshape(-1)
        n = x.numel()
        for stats in model(x).moe_stats:
            choice = stats["expert_index"].reshape(n, k).cpu().numpy()
            a = acc.setdefault(
                stats["layer"],
                {
                    "top1": np.zeros((num_experts, num_sources), np.int64),
                    "all": np.zeros((num_experts, num_sources), np.int64),
                    "kept": np.zeros(num_experts, np.int64),
                    "tokens": 0,
                    "entropy_sum": 0.0,
                },
            )
            a["top1"] += count_matrix(choice[:, :1], lab, num_experts, num_sources)
            a["all"] += count_matrix(choice, lab, num_experts, num_sources)
            a["kept"] += stats["tokens_per_expert"].cpu().numpy().astype(np.int64)
            a["tokens"] += n
            a["entropy_sum"] += float(stats["router_entropy"]) * n
    layers = []
    for layer, a in sorted(acc.items()):
        routed = a["all"].sum(1)
        load = routed / max(1, routed.sum())
        top1, every = specialization(a["top1"]), specialization(a["all"])
        layers.append(
            {
                "layer": layer,
                "num_experts": num_experts,
                "top_k": k,
                "tokens": a["tokens"],
                "mi_top1_nats": top1["mi_nats"],
                "normalized_mi_top1": top1["normalized_mi"],
                "mi_all_nats": every["mi_nats"],
                "normalized_mi_all": every["normalized_mi"],
                "h_source_nats": top1["h_source_nats"],
                "h_expert_top1_nats": top1["h_expert_nats"],
                "normalized_mi_reason": top1["normalized_mi_reason"],
                "load": load.tolist(),
                "load_cv": coefficient_of_variation(load),
                "tokens_per_expert": a["kept"].tolist(),
                "dropped_frac": float(1 - a["kept"].sum() / (a["tokens"] * k)),
                "router_entropy_nats": a["entropy_sum"] / a["tokens"],
                "router_entropy_max_nats": math.log(num_experts),
                "counts_top1": a["top1"].tolist(),
                "counts_all": a["all"].tolist(),
            }
        )
    return layers


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A saved `state_dict`, with the prefixes of torch.compile and DDP wrappers removed."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise SpecializationError(
            f"{path}: expected a saved state_dict, got {type(state).__name__}"
        )
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def snapshot_paths(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of `snapshots/step_{step:06d}.pt`, by step."""
    folder = run_dir / "snapshots"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = SNAPSHOT_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def analyse_run(
    run_dir: str | Path, val: str | Path | Shard, max_tokens: int | None = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """The measures for the final model and every snapshot of a finished MoE run."""
    run_dir = Path(run_dir)
    config = read_json(run_dir / "config.json", what="run config")
    run = config.get("run", config)
    if "model" not in run:
        raise SpecializationError(f"{run_dir}/config.json has no run.model section")
    cfg = GPTConfig.from_dict(run["model"])
    if cfg.moe is None:
        raise SpecializationError(
            f"run {run.get('run_id', run_dir.name)} is dense (model.moe is null): specialization "
            f"is measured on MoE runs only"
        )
    final = run_dir / "model.pt"
    if not final.is_file():
        raise SpecializationError(
            f"{final} not found: the run folder holds no final weights (model.pt, a state_dict)"
        )
    shard = val if isinstance(val, Shard) else read_shard(val)
    training = run.get("training", {})
    seq_len = int(training.get("seq_len", cfg.seq_len))
    batch_size = int(training.get("batch_size", 16))
    tokens, labels = analysis_windows(shard, seq_len, max_tokens)

    summary_path = run_dir / "summary.json"
    final_step = None
    if summary_path.is_file():
        final_step = read_json(summary_path, what="run summary").get("steps")
    if final_step is None:
        final_step = config.get("derived", {}).get("steps")

    model = GPT(cfg)
    states = [(step, path) for step, path in snapshot_paths(run_dir) if step != final_step]
    states.append((final_step, final))
    over_training = []
    for step, path in states:
        model.load_state_dict(load_state(path))
        over_training.append(
            {"step": step, "path": str(path), "layers": route(model, tokens, labels, batch_size)}
        )
        log.info(f"{path}: routed {tokens.size} tokens")
    moe = cfg.moe
    return {
        "run_id": run.get("run_id", run_dir.name),
        "dataset": run.get("dataset"),
        "arch": run.get("arch"),
        "size": run.get("size"),
        "tokens": run.get("tokens"),
        "num_experts": moe.num_experts,
        "num_routed_experts": moe.num_routed_experts,
        "top_k": moe.top_k,
        "active_experts": moe.active_experts,
        "capacity_factor": moe.capacity_factor,
        "granularity": moe.granularity,
        "val": str(shard.path),
        "tokens_analysed": int(tokens.size),
        "sources_seen": sorted(int(s) for s in np.unique(labels)),
        "final": over_training[-1],
        "over_training": over_training,
    }


def counts_table(result: dict[str, Any]) -> pl.DataFrame:
    """The count matrices of every step and layer as long rows."""
    import polars as pl  # here, not at the top: the analysis itself runs where polars is absent

    rows = []
    for entry in result["over_training"]:
        for layer in entry["layers"]:
            top1, every = np.asarray(layer["counts_top1"]), np.asarray(layer["counts_all"])
            for e in range(top1.shape[0]):
                for s in range(top1.shape[1]):
                    rows.append(
                        {
                            "run_id": result["run_id"],
                            "step": entry["step"],
                            "layer": layer["layer"],
                            "expert": e,
                            "source": s,
                            "count_top1": int(top1[e, s]),
                            "count_all": int(every[e, s]),
                        }
                    )
    schema = {
        "run_id": pl.String,
        "step": pl.Int64,
        "layer": pl.Int64,
        "expert": pl.Int64,
        "source": pl.Int64,
        "count_top1": pl.Int64,
        "count_all": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.analysis.specialization",
        description="Expert-by-source counts, I(expert; source), load and drops of an MoE run.",
    )
    parser.add_argument("--run-dir", required=True, help="results/runs/RUN (config.json, model.pt)")
    parser.add_argument("--val", required=True, help="token shard with source labels")
    parser.add_argument("--out", required=True, help="specialization.json to write")
    parser.add_argument(
        "--counts", help="Parquet of the count matrices (default: counts.parquet beside --out)"
    )
    parser.add_argument(
        "--no-counts", action="store_true", help="skip the Parquet (machines without polars)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"tokens analysed, whole windows (default {DEFAULT_MAX_TOKENS}; 0 = the whole shard)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.max_tokens < 0:
        parser.error(f"--max-tokens={args.max_tokens}: expected >= 0 (0 = the whole shard)")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        result = analyse_run(args.run_dir, args.val, args.max_tokens or None)
    except (SpecializationError, ShardError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    out = Path(args.out)
    counts = Path(args.counts) if args.counts else out.with_name("counts.parquet")
    if not args.no_counts:
        table = counts_table(result)
        with atomic_path(counts) as tmp:
            table.write_parquet(tmp)
    write_json_atomic(out, _jsonable(result))
    final = result["final"]
    for layer in final["layers"]:
        nmi = layer["normalized_mi_top1"]
        nmi_text = f"{nmi:.3f}" if nmi is not None else f"null ({layer['normalized_mi_reason']})"
        log.info(
            f"{result['run_id']} step {final['step']} layer {layer['layer']}: "
            f"I/H(source) top-1 {nmi_text}, load CV {layer['load_cv']:.3f}, "
            f"dropped {layer['dropped_frac']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
