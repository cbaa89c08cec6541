"""MoE layer: equivalences, capacity dropping, auxiliary losses, router gradients (issue 4)."""

from __future__ import annotations

import math

import pytest
import torch

from nanigpt.model import GPT, GPTConfig, MoE, MoEConfig, count
from nanigpt.model.moe import SwiGLU

D, HIDDEN = 16, 32


def make_moe(**kwargs) -> MoE:
    torch.manual_seed(0)
    layer = MoE(D, HIDDEN, MoEConfig(**{"num_experts": 4, "top_k": 2, **kwargs}))
    layer.impl = "loop"
    return layer


def tokens(n: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, n // 2, D, generator=torch.Generator().manual_seed(seed))


def copy_dense_into_expert(dense: SwiGLU, moe: MoE, e: int = 0) -> None:
    with torch.no_grad():
        moe.w_gate[e].copy_(dense.w_gate.weight.t())
        moe.w_up[e].copy_(dense.w_up.weight.t())
        moe.w_down[e].copy_(dense.w_down.weight.t())


@pytest.mark.parametrize("impl", ["loop", "grouped"])
def test_one_expert_top1_dropless_equals_dense_mlp(impl):
    torch.manual_seed(0)
    dense = SwiGLU(D, HIDDEN)
    moe = make_moe(num_experts=1, top_k=1, capacity_factor=None)
    moe.impl = impl
    copy_dense_into_expert(dense, moe)
    x = tokens()
    out, _, stats = moe(x)
    torch.testing.assert_close(out, dense(x), rtol=1e-5, atol=1e-6)
    assert stats["dropped_frac"].item() == 0.0


def test_one_expert_gpt_equals_dense_gpt():
    base = {"vocab_size": 64, "seq_len": 8, "n_layer": 2, "d_model": D, "n_head": 2, "mlp_ratio": 2}
    torch.manual_seed(0)
    dense = GPT(GPTConfig.from_dict(base))
    moe_cfg = {"num_experts": 1, "top_k": 1, "capacity_factor": None, "every": 1}
    moe = GPT(GPTConfig.from_dict({**base, "moe": moe_cfg}))
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    moe.load_state_dict(state, strict=False)
    for dense_block, moe_block in zip(dense.blocks, moe.blocks, strict=True):
        copy_dense_into_expert(dense_block.mlp, moe_block.mlp)
    idx = torch.randint(0, 64, (2, 8))
    a, b = dense(idx, idx), moe(idx, idx)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss)


def grouped_runs_here() -> bool:
    try:
        torch._grouped_mm(
            torch.ones(4, 16), torch.ones(2, 16, 16), torch.tensor([2, 4], dtype=torch.int32)
        )
    except (RuntimeError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not grouped_runs_here(), reason="torch._grouped_mm does not run on this device")
@pytest.mark.parametrize(
    "kwargs", [{}, {"granularity": 2, "shared_expert": True}, {"capacity_factor": 1.0}]
)
def test_grouped_path_equals_loop_reference(kwargs):
    loop = make_moe(**kwargs)
    grouped = make_moe(**kwargs)
    grouped.impl = "grouped"
    x = tokens(48)
    outs = []
    for layer in (loop, grouped):
        xi = x.clone().requires_grad_()
        out, aux, _ = layer(xi)
        (out.square().sum() + aux).backward()
        outs.append((out, xi.grad, [p.grad for p in layer.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-5, atol=1e-6)
    for g_grouped, g_loop in zip(outs[1][2], outs[0][2], strict=True):
        torch.testing.assert_close(g_grouped, g_loop, rtol=1e-5, atol=1e-6)


def test_dropless_equals_infinite_capacity():
    x = tokens(48)
    dropless = make_moe(capacity_factor=None)
    infinite = make_moe(capacity_factor=math.inf)
    a, aux_a, _ = dropless(x)
    b, aux_b, stats = infinite(x)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    torch.testing.assert_close(aux_b, aux_a)
    assert stats["dropped_frac"].item() == 0.0


def test_capacity_drops_the_later_tokens_of_an_overloaded_expert():
    """All tokens prefer expert 0: it keeps the first `capacity`, the rest pass through as zero."""
    layer = make_moe(top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0].fill_(1.0)
    x = tokens(24).abs() + 0.1  # positive, so the router's logit for expert 0 is largest
    out, _, stats = layer(x)
    n = 24
    capacity = math.ceil(1.0 * n * 1 / 4)
    assert layer.capacity(n) == capacity == 6
    assert stats["tokens_per_expert"].tolist() == [6, 0, 0, 0]
    assert stats["load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert stats["dropped_frac"].item() == pytest.approx(1 - 6 / 24)
    flat = out.reshape(n, D)
    assert flat[:6].abs().sum(-1).gt(0).all()
    assert flat[6:].abs().max().item() == 0.0


@pytest.mark.parametrize(("top_k", "capacity_factor"), [(1, 1.0), (2, 1.0), (2, 0.5), (1, 0.75)])
def test_capacity_drops_the_right_assignments(top_k, capacity_factor):
    """Against a token-by-token reference of GShard priority: first choices, then second, in order."""
    layer = make_moe(top_k=top_k, capacity_factor=capacity_factor)
    with torch.no_grad():
        layer.router.weight.mul_(20)  # a peaked router, so some experts overflow
    n = 48
    x = tokens(n)
    out, _, stats = layer(x)
    choices = stats["expert_index"].reshape(n, top_k)
    capacity = math.ceil(capacity_factor * n * top_k / 4)

    probs = layer.router(x.reshape(n, D)).softmax(-1)
    gates = probs.gather(1, choices)
    if top_k > 1:
        gates = gates / gates.sum(-1, keepdim=True)
    taken = [0] * 4
    expected = torch.zeros(n, D)
    for rank in range(top_k):
        for t in range(n):
            e = choices[t, rank].item()
            if taken[e] < capacity:
                taken[e] += 1
                xe = x.reshape(n, D)[t]
                h = torch.nn.functional.silu(xe @ layer.w_gate[e]) * (xe @ layer.w_up[e])
                expected[t] += gates[t, rank] * (h @ layer.w_down[e])
    torch.testing.assert_close(out.reshape(n, D), expected, rtol=1e-5, atol=1e-6)
    assert stats["tokens_per_expert"].tolist() == taken
    dropped = 1 - sum(taken) / (n * top_k)
    assert stats["dropped_frac"].item() == pytest.approx(dropped)
    assert dropped > 0


def test_balance_loss_is_one_for_a_uniform_router_and_entropy_is_log_e():
    layer = make_moe(num_experts=8, top_k=2, aux_loss_weight=1.0, z_loss_weight=0.0)
    with torch.no_grad():
        layer.router.weight.zero_()
    _, aux, stats = layer(tokens())
    assert stats["balance_loss"].item() == pytest.approx(1.0)
    assert aux.item() == pytest.approx(1.0)
    assert stats["router_entropy"].item() == pytest.approx(math.log(8))
    assert stats["z_loss"].item() == pytest.approx(math.log(8) ** 2)  # logsumexp(0 * 8) = log 8


def test_balance_loss_grows_with_imbalance():
    layer = make_moe(top_k=1, aux_loss_weight=1.0, z_loss_weight=0.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0].fill_(5.0)
    _, _, stats = layer(tokens().abs() + 0.1)
    assert stats["balance_loss"].item() > 3.0  # near E = 4 when one expert takes everything


@pytest.mark.parametrize("top_k", [1, 2])
def test_gradients_reach_the_router(top_k):
    """Through the gates (main loss) and through the auxiliary losses."""
    for aux_weight in (0.0, 0.01):
        layer = make_moe(top_k=top_k, aux_loss_weight=aux_weight, z_loss_weight=0.0)
        out, aux, _ = layer(tokens())
        (out.square().sum() + aux).backward()
        assert layer.router.weight.grad is not None
        assert layer.router.weight.grad.abs().sum().item() > 0
        assert all(p.grad is not None for p in layer.parameters())


def test_fine_grained_experts_match_coarse_parameters_and_active_flops():
    base = {"vocab_size": 64, "seq_len": 8, "n_layer": 2, "d_model": D, "n_head": 2, "mlp_ratio": 4}
    coarse = count({**base, "moe": {"num_experts": 4, "top_k": 1}})
    fine = count({**base, "moe": {"num_experts": 4, "top_k": 1, "granularity": 4}})
    assert fine.params.by_component["experts"] == coarse.params.by_component["experts"]
    assert (
        fine.params.active_by_component["experts"] == coarse.params.active_by_component["experts"]
    )
    assert fine.forward_by_component["experts"] == coarse.forward_by_component["experts"]
    layer = make_moe(num_experts=4, top_k=1, granularity=4)
    assert (layer.num_experts, layer.top_k, layer.hidden) == (16, 4, HIDDEN // 4)
    _, _, stats = layer(tokens())
    assert stats["expert_index"].shape == (2, 12, 4)


def test_shared_expert_is_added_to_every_token():
    layer = make_moe(shared_expert=True)
    x = tokens()
    with_shared, _, _ = layer(x)
    shared = layer.shared
    layer.shared = None
    without, _, _ = layer(x)
    torch.testing.assert_close(with_shared, without + shared(x))
