"""Does a WSD cooldown branch match a cosine run of the same length? (core question 4)

Hägele et al. 2024 (arXiv 2405.18392, section 3) report that a linear cooldown over the last 20% of
a constant-lr run reaches the loss of a cosine run of equal length; the headline sweep relies on it
to give each budget one short cooldown instead of its own run. This compares, seed by seed, the
final validation loss of each WSD budget run (`_wsd`) with the cosine run of the same (arch, size,
tokens) and seed: gap = WSD - cosine, with its mean, its standard deviation over seeds and the
standard error of the mean. A mean gap inside two standard errors is reported as no difference.

CLI: `python -m nanigpt.scaling.wsd_check --out results/scaling/wsd_vs_cosine.json SUMMARY...`
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from nanigpt.graph.jobs import RUN_SUFFIX
from nanigpt.io import read_json, write_json_atomic


def compare(summaries: list[dict[str, Any]], loss: str = "final_val_bpb") -> dict[str, Any]:
    """Pair each WSD run with the cosine run of the same (dataset, arch, size, tokens, seed)."""

    def key(s: dict[str, Any]) -> tuple:
        return (s["dataset"], s["arch"], s["size"], s["tokens_trained"], s.get("seed", 0))

    wsd = {key(s): s for s in summaries if s["run_id"].endswith(RUN_SUFFIX)}
    cosine = {key(s): s for s in summaries if not s["run_id"].endswith(RUN_SUFFIX)}
    pairs = []
    for k in sorted(set(wsd) & set(cosine)):
        pairs.append(
            {
                "dataset": k[0], "arch": k[1], "size": k[2], "tokens": k[3], "seed": k[4],
                "cosine": cosine[k][loss], "wsd": wsd[k][loss],
                "gap": wsd[k][loss] - cosine[k][loss],
            }
        )  # fmt: skip
    if not pairs:
        raise ValueError("no WSD run has a cosine run of the same arch, size, tokens and seed")
    gaps = [p["gap"] for p in pairs]
    sd = statistics.stdev(gaps) if len(gaps) > 1 else math.nan
    sem = sd / math.sqrt(len(gaps)) if len(gaps) > 1 else math.nan
    mean = statistics.fmean(gaps)
    return {
        "loss": loss,
        "pairs": pairs,
        "n_pairs": len(pairs),
        "gap_mean": mean,
        "gap_sd": sd,
        "gap_sem": sem,
        "cosine_sd": statistics.stdev([p["cosine"] for p in pairs]) if len(pairs) > 1 else None,
        "verdict": (
            "no difference (|mean gap| < 2 standard errors)"
            if math.isfinite(sem) and abs(mean) < 2 * sem
            else ("WSD higher" if mean > 0 else "WSD lower")
            if math.isfinite(sem)
            else "one pair: no spread"
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.scaling.wsd_check",
        fromfile_prefix_chars="@",  # `@LIST`: a file of arguments, one a line
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--loss", default="final_val_bpb")
    parser.add_argument("summaries", nargs="+", help="summary.json files (or @LIST)")
    args = parser.parse_args(argv)
    try:
        result = compare([read_json(p, what="summary") for p in args.summaries], args.loss)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(args.out, result)
    print(
        f"WSD - cosine: {result['gap_mean']:+.4f} +- {result['gap_sd']:.4f} (sd over "
        f"{result['n_pairs']} seeds; sem {result['gap_sem']:.4f}): {result['verdict']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
