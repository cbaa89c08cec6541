"""The throughput harness (nanigpt.bench.throughput) on the CPU: rows, ratios, bad input."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from nanigpt.bench import throughput

# A stand-in with nanoGPT's interface (GPT, GPTConfig, configure_optimizers, get_num_params), so the
# adapter is tested without nanoGPT's code in the repository.
FAKE_NANOGPT = textwrap.dedent(
    """
    from dataclasses import dataclass
    import torch, torch.nn as nn, torch.nn.functional as F

    @dataclass
    class GPTConfig:
        block_size: int = 64
        vocab_size: int = 512
        n_layer: int = 1
        n_head: int = 1
        n_embd: int = 32
        dropout: float = 0.0
        bias: bool = False

    class GPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.wte = nn.Embedding(c.vocab_size, c.n_embd)
            self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)

        def get_num_params(self):
            return sum(p.numel() for p in self.parameters())

        def configure_optimizers(self, wd, lr, betas, device_type):
            return torch.optim.AdamW(self.parameters(), lr=lr, betas=betas)

        def forward(self, idx, targets=None):
            logits = self.head(self.wte(idx))
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    """
)


def fake_nanogpt(tmp_path: Path) -> Path:
    """A folder holding FAKE_NANOGPT as nanoGPT's model.py (`--nanogpt-dir`)."""
    (tmp_path / "ng").mkdir()
    (tmp_path / "ng" / "model.py").write_text(FAKE_NANOGPT)
    return tmp_path / "ng"


@pytest.mark.slow
def test_harness_writes_one_row_per_impl_and_ratios(tmp_path: Path):
    out = tmp_path / "throughput.json"
    code = throughput.main(
        ["--preset", "cpu", "--out", str(out), "--nanogpt-dir", str(fake_nanogpt(tmp_path)),
         "--impls", "nanogpt,ours_torch", "--steps", "1", "--windows", "2", "--warmup", "0",
         "--profile-steps", "1", "--no-compile"]
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())
    assert sorted(r["impl"] for r in rows) == ["nanogpt", "ours_torch"]
    for r in rows:
        assert r["shape"] == "tiny_b4" and r["tokens_per_s"] > 0
        assert len(r["tokens_per_s_samples"]) == 2
        assert r["kernel_categories"]["mode"] == "cpu"
        assert sum(v for v in r["kernel_categories"]["wall_share"].values()) == pytest.approx(1.0)
    assert set(throughput.ratios(rows)["tiny_b4"]) == {"ours_torch"}


def test_counted_flops_of_nanogpt_match_our_count_of_a_gelu_mlp():
    from nanigpt.model import flops

    # Our count of a model whose MLP has 2 matmuls of d x 4d equals 3 SwiGLU matmuls of d x (8/3)d.
    ours = flops.count(
        {"vocab_size": 512, "seq_len": 64, "n_layer": 2, "d_model": 96, "n_head": 4,
         "mlp_ratio": 8 / 3, "tied_embeddings": True, "moe": None}
    ).train_flops_per_token  # fmt: skip
    assert throughput.nanogpt_counted_flops_per_token(2, 96, 512, 64) == ours


def test_missing_nanogpt_folder_is_named(tmp_path: Path):
    with pytest.raises(throughput.BenchError, match="no nanoGPT model.py"):
        throughput.load_nanogpt(tmp_path)


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--out", "x.json", "--impls", "ours_fast", "--preset", "cpu"])
    assert "unknown implementation 'ours_fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        throughput.main(["--out", "x.json", "--impls", "nanogpt", "--preset", "cpu"])
    assert "--nanogpt-dir" in capsys.readouterr().err


def _row(shape, impl, samples):
    samples = list(samples)
    tps = sorted(samples)[len(samples) // 2]
    return {"shape": shape, "impl": impl, "tokens_per_s": tps, "tokens_per_s_samples": samples,
            "mfu_palm": 0.4, "mfu_counted": 0.41, "peak_mem_gib": 1.0, "device": "cpu",
            "kernel_categories": {"wall_share": {"matmul": 1.0}}}  # fmt: skip


def test_waterfall_gain_within_the_window_spread_is_no_gain(tmp_path: Path):
    from nanigpt.bench import waterfall

    rows = [
        _row("s", "nanogpt", [100, 101, 102]),
        _row("s", "wf_baseline", [95, 96, 97]),
        _row("s", "wf_fused_projections", [106, 107, 108]),  # +11%, spread ~2%: a gain
        _row("s", "wf_fusable_rope_norm", [105, 107.5, 109]),  # +0.5%, spread ~4%: none
    ]
    skipped = [{"shape": "s", "impl": "wf_fp8", "reason": "no CUDA GPU"}]
    steps = {s["step"]: s for s in waterfall.summarize(rows, skipped)}
    assert "gain" not in steps["baseline"] and steps["baseline"]["vs_nanogpt"] == 96 / 101
    assert steps["fused_projections"]["significant"] is True
    assert steps["fused_projections"]["gain"] == pytest.approx(107 / 96 - 1)
    assert steps["fusable_rope_norm"]["significant"] is False
    assert steps["fp8"] == {
        "shape": "s",
        "step": "fp8",
        "status": "skipped",
        "reason": "no CUDA GPU",
    }
    assert steps["attention_backend"]["status"] == "skipped"  # not measured: said so, not hidden
    svg = waterfall.draw(
        {"meta": {"device": "cpu"}, "steps": list(steps.values())}, tmp_path / "w.svg"
    )
    assert svg.read_text().lstrip().startswith("<svg")


def test_waterfall_steps_are_cumulative():
    from nanigpt.bench import waterfall

    model, harness = waterfall.settings_at("fp8_lm_head")
    assert model == {"fused_projections": True, "fusable_rope_norm": True,
                     "attention_backend": waterfall.MEASURED, "precision": "fp8_lm_head"}  # fmt: skip
    assert harness == {"cuda_graphs": True}
    assert waterfall.settings_at("baseline") == ({}, {})
    with pytest.raises(ValueError, match="waterfall step"):
        waterfall.settings_at("turbo")


@pytest.mark.slow
def test_waterfall_harness_on_the_cpu(tmp_path: Path):
    out = tmp_path / "waterfall.json"
    code = throughput.main(
        ["--waterfall", "--preset", "cpu", "--out", str(out), "--nanogpt-dir", str(fake_nanogpt(tmp_path)),
         "--impls", "nanogpt,wf_fused_projections,wf_fp8", "--steps", "1",
         "--windows", "2", "--warmup", "0", "--profile-steps", "0", "--no-compile"]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert sorted(r["impl"] for r in result["rows"]) == ["nanogpt", "wf_fused_projections"]
    assert (
        result["skipped"][0]["impl"] == "wf_fp8" and "no CUDA GPU" in result["skipped"][0]["reason"]
    )
    assert result["attention"]["tiny_b4"]["chosen"] in ("flash", "efficient", "math")
    fused = next(r for r in result["rows"] if r["impl"] == "wf_fused_projections")
    assert fused["settings"]["fused_projections"] is True
    steps = {s["step"]: s for s in result["steps"]}
    assert steps["baseline"]["status"] == "skipped" and steps["nanogpt"]["vs_nanogpt"] == 1.0
    assert steps["fused_projections"]["vs_nanogpt"] > 0
    assert out.with_suffix(".svg").exists()
