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


def test_capacity_drops_the_least_confident_tokens_of_an_overloaded_expert():
    """All tokens prefer expert 0: it keeps the `capacity` most confident, the rest pass as zero."""
    layer = make_moe(top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0].fill_(0.05)  # unsaturated: no ties
    x = tokens(24).abs() + 0.1  # positive, so the router's logit for expert 0 is largest
    out, _, stats = layer(x)
    n = 24
    capacity = math.ceil(1.0 * n * 1 / 4)
    assert layer.capacity(n) == capacity == 6
    assert stats["tokens_per_expert"].tolist() == [6, 0, 0, 0]
    assert stats["load"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert stats["dropped_frac"].item() == pytest.approx(1 - 6 / 24)
    confidence = layer.router(x.reshape(n, D)).softmax(-1)[:, 0]
    kept = out.reshape(n, D).abs().sum(-1).gt(0)
    assert set(kept.nonzero().flatten().tolist()) == set(confidence.topk(6).indices.tolist())


@pytest.mark.parametrize("gate", ["switch", "renorm"])
@pytest.mark.parametrize(("top_k", "capacity_factor"), [(1, 1.0), (2, 1.0), (2, 0.5), (1, 0.75)])
def test_capacity_drops_the_right_assignments(top_k, capacity_factor, gate):
    """Against a token-by-token reference of batch-prioritized routing: first choices, then
    second, each in order of the router's confidence."""
    layer = make_moe(top_k=top_k, capacity_factor=capacity_factor, gate=gate)
    with torch.no_grad():
        layer.router.weight.mul_(20)  # a peaked router, so some experts overflow
    n = 48
    x = tokens(n)
    out, _, stats = layer(x)
    choices = stats["expert_index"].reshape(n, top_k)
    capacity = math.ceil(capacity_factor * n * top_k / 4)

    probs = layer.router(x.reshape(n, D)).softmax(-1)
    confidence = probs.gather(1, choices)
    gates = confidence / confidence.sum(-1, keepdim=True)
    if top_k == 1 and gate == "switch":
        gates = confidence
    taken = [0] * 4
    expected = torch.zeros(n, D)
    for rank in range(top_k):
        for t in confidence[:, rank].argsort(descending=True).tolist():
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


@pytest.mark.parametrize("gate", ["switch", "renorm", "sigmoid"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_gradients_reach_the_router(top_k, gate):
    """Through the gates (main loss) and through the auxiliary losses; the renormalised top-1
    gate is exactly 1 in the forward pass and still trains the router."""
    for aux_weight in (0.0, 0.01):
        layer = make_moe(top_k=top_k, aux_loss_weight=aux_weight, z_loss_weight=0.0, gate=gate)
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


# --- routing choices (issue 15) ----------------------------------------------------------------

GPT_BASE = {
    "vocab_size": 64,
    "seq_len": 16,
    "n_layer": 2,
    "d_model": D,
    "n_head": 2,
    "mlp_ratio": 2,
}


@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_one_expert_renormalised_gate_is_exactly_the_dense_model(capacity_factor):
    """E = 1 with the renormalised gate: the gate is 1, nothing drops, the function is dense's."""
    torch.manual_seed(0)
    dense = GPT(GPTConfig.from_dict(GPT_BASE))
    moe_cfg = {"num_experts": 1, "top_k": 1, "capacity_factor": capacity_factor, "gate": "renorm"}
    moe = GPT(GPTConfig.from_dict({**GPT_BASE, "moe": moe_cfg}))
    moe.set_moe_impl("loop")
    moe.load_state_dict(
        {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}, strict=False
    )
    for dense_block, moe_block in zip(dense.blocks, moe.blocks, strict=True):
        copy_dense_into_expert(dense_block.mlp, moe_block.mlp)
    idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(3))
    for mode in ("train", "eval"):
        getattr(dense, mode)(), getattr(moe, mode)()
        a, b = dense(idx, idx), moe(idx, idx)
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-6)


def per_row_loss(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx).logits
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1), reduction="none"
    )
    return flat.reshape(idx.shape[0], -1).mean(-1)


@pytest.mark.parametrize("eval_capacity_factor", [None, 0.5])
def test_validation_loss_of_a_row_does_not_depend_on_its_place_in_the_batch(eval_capacity_factor):
    """Default evaluation is dropless; even with an eval capacity that drops half the tokens,
    confidence-ordered dropping keeps each row's loss independent of the batch's row order."""
    torch.manual_seed(0)
    moe_cfg = {"num_experts": 4, "top_k": 1, "capacity_factor": 1.0}
    if eval_capacity_factor is not None:
        moe_cfg["eval_capacity_factor"] = eval_capacity_factor
    model = GPT(GPTConfig.from_dict({**GPT_BASE, "moe": moe_cfg})).eval()
    model.set_moe_impl("loop")
    with torch.no_grad():
        for block in model.blocks:
            block.mlp.router.weight.mul_(50)  # a peaked router, so capacity binds if applied
        idx = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(5))
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(6))
        loss = per_row_loss(model, idx)
        permuted = per_row_loss(model, idx[perm])
        dropped = model(idx).moe_stats[0]["dropped_frac"].item()
    torch.testing.assert_close(permuted, loss[perm], rtol=1e-5, atol=1e-6)
    assert (dropped > 0) == (eval_capacity_factor is not None)


def test_router_logits_are_fp32_from_fp32_weights_under_bf16_autocast():
    layer = make_moe(top_k=1)
    seen = {}

    def hook(module, args, out):
        seen.update(input=args[0].dtype, weight=module.weight.dtype, out=out.dtype)

    layer.router.register_forward_hook(hook)
    x = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, stats = layer(x.bfloat16())
        logits = layer.router_logits(x.bfloat16().reshape(-1, D))
    assert seen == {"input": torch.float32, "weight": torch.float32, "out": torch.float32}
    reference = x.bfloat16().float().reshape(-1, D) @ layer.router.weight.t()
    torch.testing.assert_close(logits, reference, rtol=1e-6, atol=1e-6)


def test_aux_loss_free_balancing_moves_biases_toward_under_loaded_experts():
    """DeepSeek-V3's bias: an over-loaded expert's bias falls, under-loaded ones rise, by the
    rate per step, only in training steps; after enough steps the load evens out."""
    layer = make_moe(top_k=1, gate="sigmoid", bias_update_rate=0.05, aux_loss_weight=0.0)
    with torch.no_grad():
        layer.router.weight.mul_(10)
        layer.router.weight[0].add_(0.3)  # expert 0 wins every token at first
    x = tokens(48).abs() + 0.1
    _, _, stats = layer(x)
    assert stats["load"][0].item() == 1.0
    layer.update_bias()
    assert layer.expert_bias.tolist() == pytest.approx([-0.05, 0.05, 0.05, 0.05])
    with torch.no_grad():  # no training step: no count, no update
        layer(x)
    layer.update_bias()
    assert layer.expert_bias.tolist() == pytest.approx([-0.05, 0.05, 0.05, 0.05])
    layer.eval()
    layer(x)
    layer.update_bias()
    assert layer.expert_bias.tolist() == pytest.approx([-0.05, 0.05, 0.05, 0.05])
    layer.train()
    peaks = []
    for _ in range(60):
        _, _, stats = layer(x)
        layer.update_bias()
        peaks.append(stats["load"].max().item())
    # From 1.0: the bias spreads the tokens (sign updates then oscillate around the balance).
    assert sum(peaks[-20:]) / 20 < 0.5
    assert "expert_bias" in layer.state_dict()  # saved with the weights (checkpoints, model.pt)


def test_dense_layers_keep_the_first_layers_dense():
    cfg = GPTConfig.from_dict({**GPT_BASE, "moe": {"num_experts": 4, "dense_layers": 1}})
    assert cfg.moe_layers == (1,)
    model = GPT(cfg)
    assert [b.is_moe for b in model.blocks] == [False, True]
    assert len(model(torch.randint(0, 64, (1, 8))).moe_stats) == 1
    with pytest.raises(ValueError, match="dense_layers"):
        GPTConfig.from_dict({**GPT_BASE, "moe": {"num_experts": 4, "dense_layers": 2}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gate", "softmax"),
        ("eval_capacity_factor", 0),
        ("dense_layers", -1),
        ("bias_update_rate", -1),
    ],
)
def test_bad_routing_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"model.moe.{key}"):
        MoEConfig(num_experts=4, **{key: value})
