"""Tests of nanigpt.analysis.memory: the predicted footprint matches a built model (question 1)."""

from __future__ import annotations

import json

import pytest
import torch

from nanigpt.analysis.memory import compare, measured_peak, predict
from nanigpt.model.config import GPTConfig
from nanigpt.model.gpt import GPT

DENSE = {
    "vocab_size": 64,
    "seq_len": 16,
    "n_layer": 2,
    "d_model": 32,
    "n_head": 2,
    "mlp_ratio": 2.0,
}
MOE = {**DENSE, "moe": {"num_experts": 4, "top_k": 2, "every": 2, "shared_expert": True}}


def exact_bytes(model_dict):
    """Parameter, gradient and AdamW state bytes of a built model after one optimizer step."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(model_dict))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 16))
    model(x, x).loss.backward()
    opt.step()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    states = sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for key, t in state.items()
        if key != "step"
    )
    return params, grads, states


@pytest.mark.parametrize("model_dict", [DENSE, MOE, {**DENSE, "tied_embeddings": True}])
def test_params_grads_optimizer_match_a_built_model(model_dict):
    params, grads, states = exact_bytes(model_dict)
    pred = predict(model_dict, batch_size=2, seq_len=16, compute_dtype="fp32")
    assert pred.params_bytes == params
    assert pred.grads_bytes == grads
    assert pred.optimizer_bytes == states
    assert pred.weight_copies_bytes == 0  # no autocast copies in fp32
    assert pred.activations_bytes == sum(row["bytes"] for row in pred.activations_by_layer)
    assert len(pred.activations_by_layer) == model_dict["n_layer"] + 2


def test_sharding_factors():
    base = predict(DENSE, 8, 16, compute_dtype="fp32")
    ddp = predict(DENSE, 8, 16, {"dp": 4}, "fp32")
    assert (ddp.params_bytes, ddp.grads_bytes, ddp.optimizer_bytes) == (
        base.params_bytes, base.grads_bytes, base.optimizer_bytes,
    )  # fmt: skip
    assert ddp.local_batch == 2 and ddp.activations_bytes < base.activations_bytes
    z1 = predict(DENSE, 8, 16, {"fsdp": 4, "strategy": "zero1"}, "fp32")
    assert z1.grads_bytes == base.grads_bytes and z1.params_bytes == base.params_bytes
    assert z1.optimizer_bytes == pytest.approx(
        (base.optimizer_bytes + base.params_bytes) / 4, abs=1
    )
    z2 = predict(DENSE, 8, 16, {"fsdp": 4, "strategy": "zero2"}, "fp32")
    assert z2.grads_bytes == pytest.approx(base.grads_bytes / 4, abs=1)
    fsdp = predict(DENSE, 8, 16, {"fsdp": 4}, "fp32")  # default strategy: fsdp2
    assert fsdp.strategy == "fsdp2"
    assert fsdp.params_bytes == pytest.approx(base.params_bytes / 4, abs=1)
    assert fsdp.optimizer_bytes == pytest.approx(base.optimizer_bytes / 4, abs=1)

    cfg = GPTConfig.from_dict(DENSE)
    block = 4 * cfg.d_model**2 + 3 * cfg.d_model * cfg.mlp_hidden  # attention + MLP weights
    tp = predict(DENSE, 8, 16, {"tp": 2}, "fp32")
    assert base.params_bytes - tp.params_bytes == pytest.approx(4 * cfg.n_layer * block / 2, abs=1)
    assert tp.local_batch == 8  # tp ranks share the data
    assert tp.activations_by_layer[0]["bytes"] < base.activations_by_layer[0]["bytes"]

    moe_cfg = GPTConfig.from_dict(MOE)
    experts = 4 * 3 * moe_cfg.d_model * moe_cfg.moe.expert_hidden(moe_cfg.mlp_hidden)
    base_moe = predict(MOE, 8, 16, compute_dtype="fp32")
    ep = predict(MOE, 8, 16, {"ep": 2}, "fp32")
    assert base_moe.params_bytes - ep.params_bytes == pytest.approx(4 * experts / 2, abs=1)


def test_bf16_adds_weight_copies_and_halves_activations():
    fp32 = predict(DENSE, 8, 16, compute_dtype="fp32")
    bf16 = predict(DENSE, 8, 16, compute_dtype="bf16")
    assert bf16.params_bytes == fp32.params_bytes  # fp32 masters either way
    assert bf16.weight_copies_bytes > 0
    assert bf16.activations_by_layer[0]["bytes"] < fp32.activations_by_layer[0]["bytes"]
    with pytest.raises(ValueError, match="compute_dtype"):
        predict(DENSE, 8, 16, compute_dtype="fp8")


def test_measured_peak_and_compare(tmp_path):
    assert measured_peak(tmp_path) is None
    (tmp_path / "summary.json").write_text(json.dumps({"peak_memory_bytes": 1000}))
    assert measured_peak(tmp_path) == 1000
    pred = predict(DENSE, 8, 16, compute_dtype="fp32")
    result = compare(pred, 1000, "cpu")
    assert result["measured_over_predicted"] == pytest.approx(1000 / pred.total_bytes)
    assert compare(pred, None, "cuda")["measured_over_predicted"] is None


@pytest.mark.parametrize(
    ("model_dict", "tolerance"),
    [
        (DENSE, 0.05),
        ({**MOE, "moe": {"num_experts": 4, "top_k": 1, "capacity_factor": None}}, 0.10),
    ],
)
def test_activations_match_what_autograd_saves(model_dict, tolerance):
    """The activation formula against the storages autograd actually saves (fp32, CPU)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(model_dict))
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, 64, (4, 16))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, x)
    saved[out.logits.untyped_storage().data_ptr()] = out.logits.untyped_storage().nbytes()
    measured = sum(n for ptr, n in saved.items() if ptr not in weights)
    predicted = predict(model_dict, 4, 16, compute_dtype="fp32").activations_bytes
    assert predicted == pytest.approx(measured, rel=tolerance)
