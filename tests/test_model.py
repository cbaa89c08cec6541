"""Dense GPT: causality, parameter counts, init, config validation (issue 4)."""

from __future__ import annotations

import math

import pytest
import torch

from nanigpt.model import GPT, GPTConfig, ModelOutput, count

BASE = {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "d_model": 32, "n_head": 4, "mlp_ratio": 4}
MOE = {"num_experts": 4, "top_k": 2, "capacity_factor": None, "every": 1}


def make(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_dict({**BASE, **overrides}))


@pytest.mark.parametrize(
    "overrides",
    [{}, {"moe": MOE}, {"moe": {**MOE, "top_k": 1, "capacity_factor": 1.0}}],
    ids=["dense", "moe-dropless", "moe-top1-capacity"],
)
def test_causality(overrides):
    """Changing token t never changes the logits before t.

    Capacity is shared by the whole batch, so with a capacity factor it holds only for one
    sequence and top-1 (earlier tokens are served first); across a batch, or with top-k > 1 (a later
    first choice may displace an earlier second choice), dropping couples tokens.
    """
    model = make(**overrides).eval()
    batch = 1 if overrides.get("moe", {}).get("capacity_factor") else 2
    idx = torch.randint(0, 64, (batch, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(idx).logits
        for t in (0, 5, 15):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 7) % 64
            logits = model(changed).logits
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(logits[:, t], base[:, t])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tied_embeddings": True},
        {"mlp_ratio": 8 / 3, "n_layer": 3},
        {"moe": MOE},
        {
            "moe": {**MOE, "every": 2, "shared_expert": True, "granularity": 2},
            "tied_embeddings": True,
        },
    ],
    ids=["dense", "tied", "ratio-8/3", "moe", "moe-every2-shared-fine"],
)
def test_param_count_matches_model(overrides):
    model = make(**overrides)
    acc = count(model.cfg)
    assert acc.params.total == sum(p.numel() for p in model.parameters())
    emb = model.wte.weight.numel() * (1 if model.cfg.tied_embeddings else 2)
    assert acc.params.embedding == emb
    assert acc.params.non_embedding_total == acc.params.total - emb
    if model.cfg.moe is None:
        assert acc.params.active == acc.params.total
    else:
        assert acc.params.active < acc.params.total


def test_output_contract_and_initial_loss():
    model = make()
    idx = torch.randint(0, 64, (4, 16))
    out = model(idx, idx)
    assert isinstance(out, ModelOutput)
    assert out._fields == ("logits", "loss", "aux_loss", "moe_stats")
    assert out.logits.shape == (4, 16, 64)
    assert out.aux_loss.item() == 0.0 and out.moe_stats == []
    assert abs(out.loss.item() - math.log(64)) < 0.2  # near-uniform predictions at init
    assert model(idx).loss is None
    moe_out = make(moe={**MOE, "every": 2}, n_layer=4)(idx, idx)
    assert [s["layer"] for s in moe_out.moe_stats] == [1, 3]
    assert moe_out.aux_loss.item() > 0


def test_tied_embeddings_share_storage_and_init():
    model = make(tied_embeddings=True, n_layer=8, d_model=64)
    assert model.lm_head.weight is model.wte.weight
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.wo.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(model.blocks[0].mlp.w_down.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(model.blocks[0].attn.wq.weight.std().item() - 0.02) < 0.002
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_mlp_width_rounding():
    cfg = GPTConfig.from_dict({**BASE, "d_model": 48, "n_head": 4, "mlp_ratio": 8 / 3})
    assert cfg.mlp_hidden == 128  # 8/3 * 48 = 128 exactly despite float noise
    cfg = GPTConfig.from_dict({**BASE, "d_model": 40, "n_head": 4, "mlp_ratio": 8 / 3})
    assert cfg.mlp_hidden == 104  # 106.7 -> nearest multiple of 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30}, "not divisible by n_head=4"),
        ({"d_model": 36, "n_head": 12}, "rotary"),
        ({"moe": {**MOE, "top_k": 5}}, "top_k=5"),
        ({"moe": {**MOE, "every": 3}}, "no MoE layer"),
        ({"moe": {**MOE, "granularity": 3}}, "granularity=3"),
        ({"moe": {**MOE, "capacity_factor": 0}}, "capacity_factor"),
        ({"moe": {**MOE, "experts": 2}}, "unknown key 'model.moe.experts'"),
        ({"n_layers": 2}, "unknown key 'model.n_layers' (did you mean 'n_layer'?)"),
        ({"n_layer": 0}, "model.n_layer=0"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match="model") as err:
        GPTConfig.from_dict({**BASE, **overrides})
    assert message in str(err.value)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="exceeds model.seq_len=16"):
        make()(torch.zeros(1, 17, dtype=torch.long))
