"""The FLOP count agrees with torch's FlopCounterMode, forward and backward (issue 4).

Every config is measured at batch x seq_len tokens with seq_len = the config's context, so the
count's per-token numbers times the tokens should equal what the counter sees (matmul FLOPs, 1%).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nanigpt.model import GPT, GPTConfig, count, flops_6nd
from nanigpt.model.flops import main

BASE = {"vocab_size": 96, "seq_len": 16, "n_layer": 2, "d_model": 32, "n_head": 4, "mlp_ratio": 4}
BATCH = 2

CONFIGS = {
    "dense": {},
    "dense-tied-deep-narrow": {
        "n_layer": 3,
        "d_model": 24,
        "n_head": 2,
        "tied_embeddings": True,
        "mlp_ratio": 8 / 3,
    },
    "dense-wide-long": {"d_model": 48, "n_head": 6, "seq_len": 32, "n_layer": 1},
    "moe-dropless": {"moe": {"num_experts": 4, "top_k": 2, "capacity_factor": None}},
    "moe-every2-shared-fine": {
        "n_layer": 4,
        "moe": {"num_experts": 2, "top_k": 1, "every": 2, "shared_expert": True, "granularity": 2},
    },
}


def measure(model: GPT, idx: torch.Tensor) -> tuple[int, int, dict, list]:
    with FlopCounterMode(display=False) as fwd:
        out = model(idx, idx)
    with FlopCounterMode(display=False) as bwd:
        (out.loss + out.aux_loss).backward()
    return fwd.get_total_flops(), bwd.get_total_flops(), fwd.get_flop_counts(), out.moe_stats


def build(overrides: dict) -> tuple[GPT, torch.Tensor]:
    torch.manual_seed(0)
    cfg = GPTConfig.from_dict({**BASE, **overrides})
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len))
    return model, idx


CASES = [(name, "loop") for name in CONFIGS] + [
    (name, "grouped") for name in CONFIGS if "moe" in name
]


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_count_matches_flop_counter(name, impl):
    model, idx = build(CONFIGS[name])
    model.set_moe_impl(impl)
    try:
        forward, backward, by_op, _ = measure(model, idx)
    except RuntimeError as err:  # a torch without CPU _grouped_mm
        pytest.skip(f"{impl}: {err}")
    acc = count(model.cfg)
    n_tokens = idx.numel()
    assert forward == pytest.approx(acc.forward_flops_per_token * n_tokens, rel=0.01)
    assert backward == pytest.approx(acc.backward_flops_per_token * n_tokens, rel=0.01)
    sdpa = sum(f for op, f in by_op["Global"].items() if "scaled_dot_product" in str(op))
    assert sdpa == acc.forward_by_component["attention_scores"] * n_tokens


@pytest.mark.parametrize("capacity_factor", [0.5, 1.0])
def test_capacity_flops_follow_the_routed_counts(capacity_factor):
    """With dropping the experts' work is the kept assignments; the count is its upper bound."""
    model, idx = build({"moe": {"num_experts": 4, "top_k": 2, "capacity_factor": capacity_factor}})
    model.set_moe_impl("loop")
    forward, backward, _, stats = measure(model, idx)
    acc = count(model.cfg)
    n_tokens = idx.numel()
    per_assignment = 2 * 3 * model.cfg.d_model * model.cfg.moe.expert_hidden(model.cfg.mlp_hidden)
    kept = sum(s["tokens_per_expert"].sum().item() for s in stats)
    not_experts = acc.forward_flops_per_token - acc.forward_by_component["experts"]
    expected_forward = not_experts * n_tokens + kept * per_assignment
    expected_backward = (
        acc.backward_flops_per_token - acc.backward_by_component["experts"]
    ) * n_tokens
    expected_backward += 2 * kept * per_assignment
    assert forward == pytest.approx(expected_forward, rel=0.01)
    assert backward == pytest.approx(expected_backward, rel=0.01)
    assert forward <= acc.forward_flops_per_token * n_tokens


def test_components_follow_the_formulas():
    cfg = GPTConfig.from_dict({**BASE, "tied_embeddings": False})
    acc = count(cfg, seq_len=64)
    d, h, V, L, s = 32, cfg.mlp_hidden, 96, 2, 64
    assert acc.seq_len == 64
    assert acc.forward_by_component["attention_scores"] == L * 4 * s * d
    assert acc.backward_by_component["attention_scores"] == L * 10 * s * d
    # Without attention scores, forward = 2 x (matmul parameters), Kaplan et al. 2020 table 1.
    matmul_params = (
        acc.params.total - acc.params.by_component["norms"] - V * d
    )  # input table: a lookup
    assert (
        acc.forward_flops_per_token - acc.forward_by_component["attention_scores"]
        == 2 * matmul_params
    )
    assert acc.forward_by_component["mlp"] == L * 6 * d * h
    assert acc.train_flops_per_token == acc.forward_flops_per_token + acc.backward_flops_per_token
    assert sum(acc.train_by_component.values()) == acc.train_flops_per_token
    assert flops_6nd(1000, 10) == 60000
    assert acc.summary_fields()["params_non_embedding_active"] == acc.params.non_embedding_active


def test_count_accepts_the_run_dict_and_the_cli_prints_a_table(tmp_path, capsys):
    model = {**BASE, "moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 1.25, "every": 2}}
    assert count(model) == count(GPTConfig.from_dict(model))
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"run_id": "x", "model": model}))
    assert main([str(path)]) == 0
    text = capsys.readouterr().out
    for name in ("attention_proj", "attention_scores", "experts", "router", "lm_head", "total"):
        assert name in text
    path.write_text(json.dumps({"model": {**model, "n_head": 5}}))
    assert main([str(path)]) == 2
    assert "not divisible by n_head=5" in capsys.readouterr().err
