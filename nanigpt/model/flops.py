"""Exact parameter and FLOP accounting of a GPT config: the one count every comparison uses.

Serves the contract "FLOPs are counted, not guessed" and core question 3: the trainer records these
numbers in summary.json, the MFU code divides them by time x peak, and the scaling fits compare dense
and MoE runs "at matched FLOPs" or "at matched parameters" with them. `tests/test_flops.py` holds the
count equal to `torch.utils.flop_counter.FlopCounterMode` on forward and backward.

What is counted (per token, per layer, context `s = seq_len`, width d, MLP width h, vocab V):
matmul FLOPs only, 2 per multiply-add, as in Kaplan et al. 2020 (table 1) and PaLM (Chowdhery et al.
2022, appendix B); norms, rotary, softmax, activations and the loss are left out (they are O(d) per
token, not O(d^2), and FlopCounterMode leaves them out too).

| component          | forward                    | backward                           |
| ------------------ | -------------------------- | ---------------------------------- |
| attention_proj     | 2 * 4 d^2  (q, k, v, o)    | 2 x forward                        |
| attention_scores   | 2 * 2 s d  (QK^T, AV)      | 2.5 x forward (see below)          |
| mlp (dense layers) | 2 * 3 d h  (SwiGLU)        | 2 x forward                        |
| experts (MoE)      | k g * 2 * 3 d (h / g)      | 2 x forward                        |
| shared_expert      | 2 * 3 d (h / g)            | 2 x forward                        |
| router             | 2 d E g                    | 2 x forward                        |
| lm_head            | 2 d V                      | 2 x forward                        |

Backward is twice forward for a matmul (gradient of the input and of the weight; Kaplan et al. 2020
section 2.1), which gives the familiar 6 N per token (`flops_6nd`).

Attention scores, the choice: we count what FlopCounterMode counts for
`scaled_dot_product_attention`, so the count and the profiler agree. That is the full s x s score
matrix even though the attention is causal (no halving, as in PaLM appendix B's 6N + 12 L H Q T),
and a backward of 2.5 x forward, because the fused (flash / memory-efficient) kernels recompute
QK^T in the backward: 5 matmuls of 2 s d each against 2 in the forward. The unfused "math" backend
would count 2 x forward instead; our count is the fused kernels' work, which is what runs on GPU
(checked equal to the counter with cuDNN attention in bf16 on an H100) and on CPU in float32.

MoE experts are counted at k assignments per token (k g with granularity g). That is the exact work
of the dropless mode; with a capacity factor it is an upper bound (dropped assignments are not
computed). Parameters: `embedding` is the input table plus the output table when untied (Kaplan's
"non-embedding" N leaves both out); `active` counts only the k g routed experts a token uses.

CLI (the issue's `describe`): `python -m nanigpt.model.flops RUN_OR_MODEL.json [--seq-len S]` prints
a table of parameters and FLOPs per component.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from nanigpt.io import read_json
from nanigpt.model.config import GPTConfig

COMPONENTS = (
    "embedding",
    "attention_proj",
    "attention_scores",
    "norms",
    "mlp",
    "experts",
    "shared_expert",
    "router",
    "lm_head",
)
# Backward / forward ratio per FLOP component (see the module docstring).
BACKWARD_RATIO = {"attention_scores": 2.5}


@dataclass(frozen=True)
class Params:
    total: int
    active: int
    embedding: int
    non_embedding_total: int
    non_embedding_active: int
    by_component: dict[str, int]  # total parameters per component
    active_by_component: dict[str, int]


@dataclass(frozen=True)
class Accounting:
    params: Params
    seq_len: int  # the attention context the FLOPs are counted at
    forward_by_component: dict[str, int]  # FLOPs per token
    backward_by_component: dict[str, int]  # FLOPs per token
    forward_flops_per_token: int
    backward_flops_per_token: int
    train_flops_per_token: int  # forward + backward

    @property
    def train_by_component(self) -> dict[str, int]:
        return {
            name: self.forward_by_component[name] + self.backward_by_component[name]
            for name in self.forward_by_component
        }

    def summary_fields(self) -> dict[str, int]:
        """The flat keys summary.json records (see docs/interfaces.md)."""
        return {
            "params_total": self.params.total,
            "params_active": self.params.active,
            "params_embedding": self.params.embedding,
            "params_non_embedding_total": self.params.non_embedding_total,
            "params_non_embedding_active": self.params.non_embedding_active,
            "flops_per_token": self.train_flops_per_token,
        }


def count(cfg: GPTConfig | dict[str, Any], seq_len: int | None = None) -> Accounting:
    """Parameters and per-token FLOPs of `cfg` at attention context `seq_len` (default cfg.seq_len)."""
    if isinstance(cfg, dict):
        cfg = GPTConfig.from_dict(cfg)
    s = cfg.seq_len if seq_len is None else seq_len
    d, h, V, L = cfg.d_model, cfg.mlp_hidden, cfg.vocab_size, cfg.n_layer
    n_moe = len(cfg.moe_layers)
    n_dense = L - n_moe

    params = dict.fromkeys(COMPONENTS, 0)
    active = dict.fromkeys(COMPONENTS, 0)
    forward = dict.fromkeys(COMPONENTS, 0)

    params["embedding"] = V * d * (1 if cfg.tied_embeddings else 2)
    params["attention_proj"] = L * 4 * d * d
    params["norms"] = (2 * L + 1) * d
    params["mlp"] = n_dense * 3 * d * h
    forward["attention_proj"] = L * 2 * 4 * d * d
    forward["attention_scores"] = L * 2 * 2 * s * d
    forward["mlp"] = n_dense * 2 * 3 * d * h
    forward["lm_head"] = 2 * d * V
    active.update(params)

    if cfg.moe is not None:
        n_experts, k = cfg.moe.num_routed_experts, cfg.moe.active_experts
        expert = 3 * d * cfg.moe.expert_hidden(h)  # parameters of one SwiGLU expert
        params["experts"] = n_moe * n_experts * expert
        active["experts"] = n_moe * k * expert
        params["shared_expert"] = active["shared_expert"] = n_moe * expert * cfg.moe.shared_expert
        params["router"] = active["router"] = n_moe * d * n_experts
        forward["experts"] = 2 * active["experts"]
        forward["shared_expert"] = 2 * active["shared_expert"]
        forward["router"] = 2 * params["router"]

    backward = {name: int(BACKWARD_RATIO.get(name, 2) * f) for name, f in forward.items()}
    total, total_active = sum(params.values()), sum(active.values())
    return Accounting(
        params=Params(
            total=total,
            active=total_active,
            embedding=params["embedding"],
            non_embedding_total=total - params["embedding"],
            non_embedding_active=total_active - params["embedding"],
            by_component=params,
            active_by_component=active,
        ),
        seq_len=s,
        forward_by_component=forward,
        backward_by_component=backward,
        forward_flops_per_token=sum(forward.values()),
        backward_flops_per_token=sum(backward.values()),
        train_flops_per_token=sum(forward.values()) + sum(backward.values()),
    )


def flops_6nd(params: int, tokens: int) -> int:
    """Training compute C = 6 N D (Kaplan et al. 2020 eq. 2.1; Chinchilla, Hoffmann et al. 2022).

    Pass N = non-embedding (active, for an MoE) parameters; it leaves out attention scores and the
    LM head, which `count` includes.
    """
    return 6 * params * tokens


def register_grouped_mm_flops() -> None:
    """Give FlopCounterMode (and the profiler's FLOP counts) a formula for torch._grouped_mm.

    torch has none yet for the dropless MoE fast path; with this, profiles of the grouped path
    count expert FLOPs. 2 FLOPs per multiply-add; the group dimension is ragged in one operand and
    the other carries one matrix per group. Called where the grouped path lives
    (`nanigpt.model.moe`), so that the analytical count above imports no torch.
    """
    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    if torch.ops.aten._grouped_mm in flop_registry:
        return

    @register_flop_formula(torch.ops.aten._grouped_mm)
    def _grouped_mm_flop(a_shape, b_shape, *args, **kwargs) -> int:
        if len(a_shape) == 2 and len(b_shape) == 3:  # (M, K) x (G, K, N), rows grouped
            return 2 * a_shape[0] * a_shape[1] * b_shape[2]
        if len(a_shape) == 2 and len(b_shape) == 2:  # (M, K) x (K, N), K grouped -> (G, M, N)
            return 2 * a_shape[0] * a_shape[1] * b_shape[1]
        if len(a_shape) == 3 and len(b_shape) == 2:  # (G, M, K) x (K, N), N grouped
            return 2 * a_shape[1] * a_shape[2] * b_shape[1]
        return (
            2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]
        )  # batched (G, M, K) x (G, K, N)


def describe(acc: Accounting) -> str:
    """A text table of parameters and per-token FLOPs by component."""
    header = f"{'component':<18}{'params':>14}{'active':>14}{'fwd FLOP/tok':>16}{'bwd FLOP/tok':>16}{'train share':>13}"
    lines = [header, "-" * len(header)]
    train = acc.train_by_component
    for name in COMPONENTS:
        share = train[name] / acc.train_flops_per_token
        lines.append(
            f"{name:<18}{acc.params.by_component[name]:>14,}{acc.params.active_by_component[name]:>14,}"
            f"{acc.forward_by_component[name]:>16,}{acc.backward_by_component[name]:>16,}{share:>12.1%}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<18}{acc.params.total:>14,}{acc.params.active:>14,}"
        f"{acc.forward_flops_per_token:>16,}{acc.backward_flops_per_token:>16,}{1:>12.1%}"
    )
    p = acc.params
    lines.append(
        "embedding = the input table, plus the output table when untied (lm_head's weight)"
    )
    lines.append(
        f"non-embedding params: total {p.non_embedding_total:,}, active {p.non_embedding_active:,}; "
        f"train FLOPs/token at seq_len {acc.seq_len}: {acc.train_flops_per_token:,} "
        f"(6N = {flops_6nd(p.non_embedding_active, 1):,})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nanigpt.model.flops",
        description="Print parameters and FLOPs per component of a model config.",
    )
    parser.add_argument("config", help="JSON file: a run (with a 'model' key) or a model dict")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="attention context (default: the config's)"
    )
    args = parser.parse_args(argv)
    try:
        obj = read_json(args.config, "model config")
        model = obj.get("model", obj) if isinstance(obj, dict) else obj
        if not isinstance(model, dict):
            raise ValueError("expected a JSON object (a run or a model dict)")
        acc = count(GPTConfig.from_dict(model), args.seq_len)
    except (OSError, ValueError, TypeError) as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return 2
    print(describe(acc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
