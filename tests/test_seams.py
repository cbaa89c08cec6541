"""The model's seams that parallelism plugs into (issue 17): the MoE's token dispatcher, attention
that infers its local head count, and no model forward copied into `nanigpt/parallel/`."""

from __future__ import annotations

from pathlib import Path

import torch

from nanigpt.model import GPT, GPTConfig, MoE, MoEConfig
from nanigpt.model.moe import Dispatched, LocalDispatcher

ROOT = Path(__file__).resolve().parents[1]


class _Recording(LocalDispatcher):
    """The local dispatcher, counting its calls and adding a statistic."""

    def __init__(self):
        self.calls = []

    def dispatch(self, x, r):
        self.calls.append("dispatch")
        return super().dispatch(x, r)

    def combine(self, ys, sent: Dispatched):
        self.calls.append("combine")
        return super().combine(ys, sent)

    def stats(self, sent):
        return {"rows": torch.tensor(sent.rows.shape[0])}


def test_moe_runs_through_its_dispatcher_and_a_replacement_changes_nothing_else():
    torch.manual_seed(0)
    layer = MoE(16, 32, MoEConfig(num_experts=4, top_k=2, capacity_factor=1.0))
    layer.impl = "loop"
    x = torch.randn(2, 6, 16)
    out, aux, stats = layer(x)
    layer.dispatcher = _Recording()
    out2, aux2, stats2 = layer(x)
    assert layer.dispatcher.calls == ["dispatch", "combine"]
    assert torch.equal(out, out2) and torch.equal(aux, aux2)
    assert int(stats2.pop("rows")) == int(stats["tokens_per_expert"].sum())
    assert stats.keys() == stats2.keys()


def test_attention_on_a_slice_of_the_heads_is_its_share_of_the_output():
    """Whole heads per shard (wq, wk, wv rows, wo columns): the same forward runs on the local
    heads (-1), and the shards' outputs sum to the full attention's (tensor parallelism's g)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=1, d_model=16, n_head=4))
    attn = model.blocks[0].attn
    x = torch.randn(2, 8, 16)
    cos, sin = model.rope_cos, model.rope_sin
    with torch.no_grad():
        full = attn(x, cos, sin)
        parts = []
        for rank in range(2):
            shard = GPT(GPTConfig(vocab_size=32, seq_len=8, n_layer=1, d_model=16, n_head=4))
            local = shard.blocks[0].attn
            rows = slice(rank * 8, (rank + 1) * 8)
            for name in ("wq", "wk", "wv"):
                w = getattr(attn, name).weight[rows]
                getattr(local, name).weight = torch.nn.Parameter(w.clone())
            local.wo.weight = torch.nn.Parameter(attn.wo.weight[:, rows].clone())
            parts.append(local(x, cos, sin))
    torch.testing.assert_close(parts[0] + parts[1], full)


def test_no_forward_is_swapped_in_from_parallel():
    for path in (ROOT / "nanigpt" / "parallel").glob("*.py"):
        text = path.read_text()
        assert "MethodType" not in text and ".forward = " not in text, path.name


def test_the_dense_swiglu_lives_with_the_dense_model_and_keeps_its_old_import():
    from nanigpt.model import mlp, moe

    assert moe.SwiGLU is mlp.SwiGLU


def test_tp_plan_names_real_parameters():
    from nanigpt.parallel.tensor import tp_sharded

    cfg = GPTConfig(
        vocab_size=32,
        seq_len=8,
        n_layer=2,
        d_model=16,
        n_head=4,
        moe=MoEConfig(num_experts=2, every=2),
    )
    model = GPT(cfg)
    names = dict(model.named_parameters())
    sharded = tp_sharded(model)
    assert set(sharded) <= set(names)
    assert sharded["blocks.0.attn.wo.weight"] == 1 and sharded["blocks.0.mlp.w_gate.weight"] == 0
    assert not any(n.startswith("blocks.1.mlp") for n in sharded)  # the MoE layer stays replicated


def test_aux_loss_free_bias_moves_by_the_load_its_reduction_returns():
    """The load of a step is summed over ranks by the reduction nanigpt.parallel sets; without one
    (a single process) the local load is the step's."""
    layer = MoE(16, 32, MoEConfig(num_experts=4, gate="sigmoid", bias_update_rate=0.5))
    layer.step_load.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    layer.load_reduction = lambda load: load.add_(torch.tensor([0.0, 3.0, 3.0, 3.0]))
    layer.update_bias()  # global load [1, 3, 3, 3]: expert 0 under-loaded
    assert layer.expert_bias.tolist() == [0.5, -0.5, -0.5, -0.5]
