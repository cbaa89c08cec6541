"""The speed options of the GPT (issue 30) compute the reference model's function.

Fused projections (one QKV and one gate-up matmul), the fusable RoPE / RMSNorm forms and a pinned
attention backend must give the reference model's outputs and gradients on the same weights
(within float noise: the sums run in another order); the fp8 precisions must refuse, in one line,
where fp8 cannot run, and on an fp8 GPU stay near bf16's loss.
"""

from __future__ import annotations

import pytest
import torch

from nanigpt.model import flops
from nanigpt.model.config import GPTConfig
from nanigpt.model.fp8 import FP8Unavailable, fp8_unavailable_reason
from nanigpt.model.gpt import GPT, fuse_state_dict, unfuse_state_dict

BASE = {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "d_model": 32, "n_head": 4,
        "mlp_ratio": 8 / 3, "tied_embeddings": True}  # fmt: skip


def model(seed: int = 0, **options) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_dict({**BASE, **options})).double()


def batch():
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, BASE["vocab_size"], (3, BASE["seq_len"]), generator=gen)
    return idx, torch.roll(idx, -1, dims=1)


def loss_and_grads(m: GPT) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    idx, targets = batch()
    out = m(idx, targets)
    out.loss.backward()
    logits = m(idx).logits.detach()
    return out.loss.detach(), logits, {k: p.grad for k, p in m.named_parameters()}


def test_fused_init_is_the_reference_init_concatenated():
    ref, fused = model(fused_projections=False), model(fused_projections=True)
    mapped = fuse_state_dict(ref.state_dict())
    assert set(mapped) == set(fused.state_dict())
    for key, value in fused.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    back = unfuse_state_dict(fused.state_dict())
    assert {k: v.shape for k, v in back.items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }


@pytest.mark.parametrize(
    "options",
    [
        {"fused_projections": True},
        {"fusable_rope_norm": True},
        {"attention_backend": "math"},
        {"fused_projections": True, "fusable_rope_norm": True, "attention_backend": "flash"},
    ],
    ids=["fused", "fusable", "math", "all"],
)
def test_option_computes_the_reference_function(options):
    ref = model(seed=3)
    fast = model(seed=4, **options)  # another init: the weights come from ref, mapped
    state = ref.state_dict()
    fast.load_state_dict(fuse_state_dict(state) if options.get("fused_projections") else state)
    loss_r, logits_r, grads_r = loss_and_grads(ref)
    loss_f, logits_f, grads_f = loss_and_grads(fast)
    torch.testing.assert_close(loss_f, loss_r, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits_f, logits_r, rtol=1e-9, atol=1e-10)
    if options.get("fused_projections"):
        grads_f = unfuse_state_dict(grads_f)
    assert set(grads_f) == set(grads_r)
    for key in grads_r:
        torch.testing.assert_close(grads_f[key], grads_r[key], rtol=1e-8, atol=1e-10, msg=key)


def test_options_leave_the_flop_and_parameter_count_alone():
    ref = flops.count(GPTConfig.from_dict(BASE))
    fast = GPTConfig.from_dict({**BASE, "fused_projections": True, "fusable_rope_norm": True})
    assert flops.count(fast) == ref
    assert sum(p.numel() for p in model(fused_projections=True).parameters()) == ref.params.total


@pytest.mark.parametrize(
    ("key", "value"),
    [("attention_backend", "fast"), ("precision", "fp4"), ("fused_projections", "yes")],
)
def test_bad_option_is_refused_with_its_key(key, value):
    with pytest.raises(ValueError, match=f"model.{key}="):
        GPTConfig.from_dict({**BASE, key: value})


def test_fp8_with_the_fused_loss_is_refused():
    with pytest.raises(ValueError, match="cross_entropy"):
        GPTConfig.from_dict({**BASE, "precision": "fp8", "kernels": {"cross_entropy": "triton"}})


def test_fused_projections_with_the_triton_swiglu_is_refused():
    with pytest.raises(ValueError, match="kernels.swiglu=torch"):
        GPTConfig.from_dict({**BASE, "fused_projections": True, "kernels": {"swiglu": "triton"}})


@pytest.mark.skipif(fp8_unavailable_reason() is None, reason="fp8 can run here")
@pytest.mark.parametrize("precision", ["fp8", "fp8_lm_head"])
def test_fp8_refuses_in_one_line_where_it_cannot_run(precision):
    with pytest.raises(FP8Unavailable) as error:
        GPT(GPTConfig.from_dict({**BASE, "precision": precision}))
    message = str(error.value)
    assert "\n" not in message and f"model.precision={precision}: cannot run here" in message


@pytest.mark.skipif(fp8_unavailable_reason() is not None, reason="needs an fp8 GPU and torchao")
def test_fp8_loss_stays_near_bf16():
    shape = {**BASE, "vocab_size": 256, "d_model": 128, "n_head": 4, "seq_len": 64}
    losses = {}
    for precision in ("bf16", "fp8_lm_head", "fp8"):
        torch.manual_seed(0)
        m = GPT(GPTConfig.from_dict({**shape, "precision": precision})).cuda()
        idx = torch.randint(0, 256, (8, 64), device="cuda", generator=None)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses[precision] = float(m(idx, torch.roll(idx, -1, 1)).loss)
    assert abs(losses["fp8"] - losses["bf16"]) < 0.05 * losses["bf16"]
    assert abs(losses["fp8_lm_head"] - losses["bf16"]) < 0.05 * losses["bf16"]


def test_fp8_loss_runs_differ_only_in_precision():
    from nanigpt.bench.fp8_loss import BEST_BF16, run_dict
    from nanigpt.training.config import RunConfig

    runs = [
        RunConfig.from_dict(run_dict("r", "gpt2_124M_b32", 10, {**BEST_BF16, "precision": p}))
        for p in ("bf16", "fp8")
    ]
    assert runs[0].model.precision == "bf16" and runs[1].model.precision == "fp8"
    assert runs[0].training == runs[1].training and runs[0].model.fused_projections


def test_code_that_reads_weights_by_name_refuses_the_fused_or_fp8_model():
    """Tensor parallelism and stacked replicas read wq, wk, wv, w_gate, w_up: a fused or fp8 model
    is refused in one line at the config, not met as a missing weight."""
    from nanigpt.parallel.setting import validate_parallelism
    from nanigpt.training.stacked import StackedGPT
    from nanigpt.training.stacked_runs import stack_key

    shape = {"vocab_size": 64, "seq_len": 16, "n_layer": 1, "d_model": 32, "n_head": 4}
    with pytest.raises(ValueError, match="fused_projections=false"):
        validate_parallelism(
            {"tp": 2, "strategy": "tp_manual"}, {**shape, "fused_projections": True}
        )
    for option in ({"fused_projections": True}, {"precision": "fp8"}):
        cfg = GPTConfig.from_dict({**shape, **option})
        assert cfg.reference_layout_refusal
        with pytest.raises(ValueError, match="reference layout"):
            StackedGPT(cfg, 2)
        assert stack_key({"run_id": "r", "model": {**shape, **option}, "parallelism": {}}) is None
    assert GPTConfig.from_dict(shape).reference_layout_refusal is None
