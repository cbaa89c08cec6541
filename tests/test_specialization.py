"""Expert specialization measures and MoE figures (issue 10): MI on constructed routers, refusals,
the CLI end to end on a tiny model and shard, and the figures as valid SVG."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from nanigpt.analysis import specialization as spec
from nanigpt.data.shards import Shard, write_shard
from nanigpt.model.config import GPTConfig
from nanigpt.model.gpt import GPT
from nanigpt.plots import moe as moe_plots
from nanigpt.scaling import crossover
from tests.chart_gallery import crossover_summaries

VOCAB, SEQ_LEN = 64, 16


# --- pure measures on constructed assignments ------------------------------------------------------


def test_mi_is_zero_for_a_router_independent_of_the_source():
    # Every (expert, source) pair appears n_e * m_s times: an exact product distribution.
    n_e, m_s = np.array([1, 2, 3]), np.array([4, 1, 2, 5])
    experts, sources = [], []
    for e, ne in enumerate(n_e):
        for s, ms in enumerate(m_s):
            experts += [e] * (ne * ms)
            sources += [s] * (ne * ms)
    counts = spec.count_matrix(np.array(experts), np.array(sources), num_experts=3)
    assert counts.tolist() == np.outer(n_e, m_s).tolist()
    assert spec.mutual_information(counts) == 0.0
    out = spec.specialization(counts)
    assert out["normalized_mi"] == 0.0
    # near-independent counts (not an exact product) give a small positive MI, never negative
    noisy = counts.copy()
    noisy[0, 0] += 1
    assert 0.0 < spec.mutual_information(noisy) < 1e-2


@pytest.mark.parametrize("k", [2, 4, 8])
def test_bijective_router_scores_log_k_over_h_source_equal_one(k):
    rng = np.random.default_rng(k)
    sources = np.repeat(np.arange(k), 50)  # uniform: H(source) = ln k
    perm = rng.permutation(k)
    experts = perm[sources]
    counts = spec.count_matrix(experts, sources, num_experts=k)
    out = spec.specialization(counts)
    assert out["mi_nats"] == pytest.approx(math.log(k), rel=1e-12)
    assert out["h_source_nats"] == pytest.approx(math.log(k), rel=1e-12)
    assert out["normalized_mi"] == pytest.approx(1.0, rel=1e-12)


def test_normalized_mi_lies_in_zero_one_on_random_routers():
    rng = np.random.default_rng(0)
    for _ in range(50):
        e, s = rng.integers(1, 9), rng.integers(2, 6)
        n = rng.integers(5, 300)
        sources = rng.integers(0, s, n)
        # a router that follows the source with some probability, else picks at random
        follow = rng.random(n) < rng.random()
        experts = np.where(follow, sources % e, rng.integers(0, e, n))
        counts = spec.count_matrix(experts, sources, num_experts=int(e))
        out = spec.specialization(counts)
        if out["normalized_mi"] is not None:
            assert 0.0 <= out["normalized_mi"] <= 1.0
            assert out["mi_nats"] <= min(out["h_source_nats"], out["h_expert_nats"]) + 1e-12


def test_all_k_choices_are_counted_and_top1_is_the_first_column():
    experts = np.array([[0, 1], [1, 0], [2, 1]])
    sources = np.array([0, 1, 1])
    assert spec.count_matrix(experts[:, :1], sources, 3).tolist() == [[1, 0], [0, 1], [0, 1]]
    assert spec.count_matrix(experts, sources, 3).tolist() == [[1, 1], [1, 2], [0, 1]]


def test_one_source_gives_null_normalisation_with_a_reason():
    counts = spec.count_matrix(np.array([0, 1, 1, 2]), np.zeros(4, int), num_experts=3)
    out = spec.specialization(counts)
    assert out["mi_nats"] == 0.0
    assert out["normalized_mi"] is None
    assert "H(source) = 0" in out["normalized_mi_reason"]


def test_load_cv():
    assert spec.coefficient_of_variation([0.25] * 4) == 0.0
    assert spec.coefficient_of_variation([1.0, 0.0]) == pytest.approx(1.0)


def test_shards_without_labels_are_refused(tmp_path):
    tokens = np.arange(100) % VOCAB
    for labels, words in [
        (None, "no source labels"),
        (np.zeros(0, np.int64), "0 source labels"),
        (np.full(100, -1), "unlabelled"),
    ]:
        shard = Shard(tmp_path / "x.bin", tokens, labels, 100, VOCAB)
        with pytest.raises(spec.SpecializationError, match=words):
            spec.analysis_windows(shard, SEQ_LEN, None)
    with pytest.raises(spec.SpecializationError, match="unlabelled"):
        spec.count_matrix(np.array([0, 1]), np.array([0, -1]), 2)


# --- a tiny run end to end ---------------------------------------------------------------------------


def tiny_model_cfg(num_experts=4, top_k=1, capacity_factor=1.25) -> dict:
    return {
        "vocab_size": VOCAB,
        "seq_len": SEQ_LEN,
        "n_layer": 2,
        "d_model": 16,
        "n_head": 2,
        "mlp_ratio": 2,
        "tied_embeddings": True,
        "moe": {
            "num_experts": num_experts,
            "top_k": top_k,
            "capacity_factor": capacity_factor,
            "aux_loss_weight": 0.01,
            "z_loss_weight": 0.001,
            "every": 1,
            "shared_expert": False,
            "granularity": 1,
        },
    }


def labelled_stream(n_tokens: int, num_sources: int, seed: int = 0):
    """Documents of 40 tokens; source s writes tokens from its own slice of the vocabulary."""
    rng = np.random.default_rng(seed)
    tokens, labels = [], []
    width = VOCAB // max(1, num_sources)
    while len(tokens) < n_tokens:
        s = int(rng.integers(num_sources))
        tokens += list(s * width + rng.integers(0, width, 40))
        labels += [s] * 40
    return np.array(tokens[:n_tokens]), np.array(labels[:n_tokens])


def make_run(tmp_path, name="mixmoe", num_sources=4, steps=(0, 10), moe_kwargs=None, train=True):
    """A run folder with config.json, summary.json, model.pt and snapshots; plus its val shard."""
    model_cfg = tiny_model_cfg(**(moe_kwargs or {}))
    run_dir = tmp_path / "runs" / name
    (run_dir / "snapshots").mkdir(parents=True)
    run = {
        "run_id": name,
        "dataset": "mix" if num_sources > 1 else "solo",
        "arch": "moe",
        "arch_kind": "moe",
        "size": "s1",
        "tokens": 1000,
        "model": model_cfg,
        "training": {"seq_len": SEQ_LEN, "batch_size": 4},
    }
    (run_dir / "config.json").write_text(json.dumps({"run": run, "derived": {"steps": steps[-1]}}))
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(model_cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens, labels = labelled_stream(4000, num_sources)
    rng = np.random.default_rng(1)
    for step in range(steps[-1] + 1):
        if step in steps:
            torch.save(model.state_dict(), run_dir / "snapshots" / f"step_{step:06d}.pt")
        if step == steps[-1] or not train:
            continue
        starts = rng.integers(0, len(tokens) - SEQ_LEN - 1, 8)
        x = torch.from_numpy(np.stack([tokens[s : s + SEQ_LEN] for s in starts]))
        y = torch.from_numpy(np.stack([tokens[s + 1 : s + SEQ_LEN + 1] for s in starts]))
        out = model(x, y)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
    torch.save(model.state_dict(), run_dir / "model.pt")
    (run_dir / "summary.json").write_text(json.dumps({"run_id": name, "steps": steps[-1]}))
    val_tokens, val_labels = labelled_stream(1200, num_sources, seed=7)
    val = tmp_path / f"{name}_val.bin"
    write_shard(val, val_tokens, val_labels, byte_count=len(val_tokens), vocab_size=VOCAB)
    return run_dir, val


def test_cli_end_to_end(tmp_path):
    run_dir, val = make_run(tmp_path)
    out = tmp_path / "moe" / "mixmoe" / "specialization.json"
    rc = spec.main(
        ["--run-dir", str(run_dir), "--val", str(val), "--out", str(out), "--max-tokens", "640"]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert [e["step"] for e in result["over_training"]] == [0, 10]  # the final snapshot is model.pt
    assert result["final"]["path"].endswith("model.pt")
    assert result["tokens_analysed"] == 640
    assert result["sources_seen"] == [0, 1, 2, 3]
    for layer in result["final"]["layers"]:
        assert np.asarray(layer["counts_top1"]).shape == (4, 4)
        assert np.asarray(layer["counts_top1"]).sum() == 640
        assert 0 <= layer["normalized_mi_top1"] <= 1
        assert sum(layer["load"]) == pytest.approx(1.0)
        assert 0 <= layer["dropped_frac"] < 1
        assert 0 < layer["router_entropy_nats"] <= math.log(4) + 1e-6
    counts = pl.read_parquet(out.with_name("counts.parquet"))
    assert counts.height == 2 * 2 * 4 * 4  # steps x layers x experts x sources
    assert counts.filter(pl.col("step") == 10)["count_top1"].sum() == 2 * 640

    # a dense run and a missing model are refused with a message, exit code 2
    config = json.loads((run_dir / "config.json").read_text())
    config["run"]["model"]["moe"] = None
    dense_dir = tmp_path / "runs" / "dense"
    dense_dir.mkdir()
    (dense_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(spec.SpecializationError, match="dense"):
        spec.analyse_run(dense_dir, val)
    (run_dir / "model.pt").unlink()
    assert spec.main(["--run-dir", str(run_dir), "--val", str(val), "--out", str(out)]) == 2


def test_single_source_shard_gives_null_normalised_mi(tmp_path):
    run_dir, val = make_run(tmp_path, name="solomoe", num_sources=1, steps=(2,), train=False)
    result = spec.analyse_run(run_dir, val, max_tokens=320)
    layer = result["final"]["layers"][0]
    assert layer["normalized_mi_top1"] is None
    assert "H(source) = 0" in layer["normalized_mi_reason"]


# --- figures --------------------------------------------------------------------------------------


def assert_svg(path):
    text = path.read_text()
    assert text.lstrip().startswith("<svg") and text.rstrip().endswith("</svg>")


def test_figures_render_to_svg(tmp_path):
    specs = []
    for name, sources, moe_kwargs in [
        ("mixmoe", 4, {"capacity_factor": 1.0}),
        ("mixdropless", 4, {"capacity_factor": None, "top_k": 2}),
        ("solomoe", 1, {}),
    ]:
        run_dir, val = make_run(tmp_path, name, sources, steps=(0, 3), moe_kwargs=moe_kwargs)
        out = tmp_path / "moe" / name / "specialization.json"
        assert spec.main(["--run-dir", str(run_dir), "--val", str(val), "--out", str(out),
                          "--max-tokens", "320"]) == 0  # fmt: skip
        specs.append(str(out))
    svg = tmp_path / "moe"
    assert moe_plots.main(["heatmap", "--spec", specs[0], "--out", str(svg / "h.svg")]) == 0
    assert moe_plots.main(["heatmap", "--spec", specs[2], "--out", str(svg / "h1.svg")]) == 0
    assert moe_plots.main(["mi", "--spec", *specs, "--out", str(svg / "mi.svg")]) == 0
    assert moe_plots.main(["load", "--spec", *specs, "--out", str(svg / "load.svg")]) == 0
    for name in ("h", "h1", "mi", "load"):
        assert_svg(svg / f"{name}.svg")


def test_crossover_figure_from_summaries(tmp_path):
    rng = np.random.default_rng(0)
    summaries = crossover_summaries(tmp_path, jitter=lambda d_model, tokens: rng.normal(0, 1e-3))
    out, fits_out = tmp_path / "crossover.svg", tmp_path / "fits.json"
    args = ["crossover", "--summaries", *summaries, "--out", str(out), "--fits-out", str(fits_out)]
    assert moe_plots.main([*args, "--bootstrap", "0"]) == 0
    assert_svg(out)
    fits = json.loads(fits_out.read_text())
    assert set(fits) == {
        "dense",
        "moeE2: E=2 k=1 cf=dropless g=1",
        "moeE4: E=4 k=1 cf=dropless g=1",
    }
    table = crossover.runs_table(summaries)
    deltas = crossover.paired_differences(table, "final_val_bpb")
    assert len(deltas) == 8 and all(d["delta"] < 0 for d in deltas)


# --- one expert (E = 1) and expert-count figures ------------------------------------------------------


def test_one_expert_scores_zero_mi_and_zero_load_cv():
    # E = 1: every token goes to expert 0, so I(expert; source) = 0 exactly, and the normalisation
    # by H(source) > 0 stays defined (0, not null); a single expert's load is perfectly balanced.
    counts = spec.count_matrix(np.zeros(12, int), np.arange(12) % 4, num_experts=1)
    assert counts.tolist() == [[3, 3, 3, 3]]
    out = spec.specialization(counts)
    assert out["mi_nats"] == 0.0 and out["h_expert_nats"] == 0.0
    assert out["normalized_mi"] == 0.0 and out["normalized_mi_reason"] is None
    assert spec.coefficient_of_variation([1.0]) == 0.0


def test_one_expert_run_end_to_end_and_in_the_figures(tmp_path):
    specs = []
    for name, experts in [("mixe1", 1), ("mixe2", 2), ("mixe4", 4)]:
        run_dir, val = make_run(
            tmp_path, name, 4, steps=(0, 3), moe_kwargs={"num_experts": experts}
        )
        out = tmp_path / "moe" / name / "specialization.json"
        assert spec.main(["--run-dir", str(run_dir), "--val", str(val), "--out", str(out),
                          "--max-tokens", "320"]) == 0  # fmt: skip
        specs.append(str(out))
    one = json.loads((tmp_path / "moe" / "mixe1" / "specialization.json").read_text())
    for layer in one["final"]["layers"]:
        assert np.asarray(layer["counts_top1"]).shape == (1, 4)
        assert layer["mi_top1_nats"] == 0.0 and layer["normalized_mi_top1"] == 0.0
        assert layer["load"] == [1.0] and layer["load_cv"] == 0.0
        assert layer["dropped_frac"] == 0.0  # capacity ceil(1.25 N) >= N: nothing dropped
        assert layer["router_entropy_max_nats"] == 0.0
    rows = moe_plots.experts_rows([json.loads(Path(s).read_text()) for s in specs])
    ceilings = {r["experts"]: r["mi_ceiling"] for r in rows}
    h_source = one["final"]["layers"][0]["h_source_nats"]
    assert ceilings[1] == 0.0 and ceilings[2] == pytest.approx(math.log(2) / h_source)
    assert ceilings[4] == pytest.approx(min(1.0, math.log(4) / h_source))
    svg = tmp_path / "svg"
    assert moe_plots.main(["experts", "--spec", *specs, "--out", str(svg / "e.svg")]) == 0
    assert moe_plots.main(["heatmap", "--spec", specs[0], "--out", str(svg / "h.svg")]) == 0
    assert moe_plots.main(["load", "--spec", *specs, "--out", str(svg / "l.svg")]) == 0
    for name in ("e", "h", "l"):
        assert_svg(svg / f"{name}.svg")
    assert (
        "mixe1 (E=1, top-1, cf 1.25): I/H per layer 0.000, 0.000; load CV 0.00, 0.00"
        in (svg / "e.svg").read_text()
    )


def test_experts_figure_refuses_files_without_layers(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"run_id": "x", "final": {"layers": []}}))
    assert moe_plots.main(["experts", "--spec", str(empty), "--out", str(tmp_path / "x.svg")]) == 2
    assert "no MoE layer" in capsys.readouterr().err


# --- matched total parameters -------------------------------------------------------------------------


def crossover_row(run_id, kind, *, experts=1, mlp_ratio=4.0, d_model=32, tokens=1000, loss=1.0,
                  params_total=None):  # fmt: skip
    """A runs_table row: params and FLOPs of a 1-layer model whose MLP holds `experts` copies."""
    mlp = 3 * d_model * mlp_ratio * d_model
    return {
        "run_id": run_id,
        "arch": run_id.split("_")[0],
        "arch_kind": kind,
        "size": f"d{d_model}",
        "n_layer": 1,
        "d_model": d_model,
        "mlp_ratio": mlp_ratio,
        "num_experts": experts,
        "top_k": 1,
        "capacity_factor": 1.25 if kind == "moe" else None,
        "granularity": 1,
        "tokens_target": tokens,
        "tokens_trained": tokens,
        "params_total": params_total or int(4 * d_model**2 + experts * mlp + d_model * experts),
        "params_active": int(4 * d_model**2 + mlp),
        "params_non_embedding_active": int(4 * d_model**2 + mlp),
        "params_non_embedding_total": int(4 * d_model**2 + experts * mlp),
        "flops_per_token": 6.0 * (4 * d_model**2 + mlp),
        "flops_total": 6.0 * (4 * d_model**2 + mlp) * tokens,
        "final_val_loss": loss,
        "final_val_bpb": loss,
    }


def test_matched_total_params_pairs_the_e_times_wider_dense_run():
    rows = [
        crossover_row("dense_a", "dense", loss=1.50),
        crossover_row("densew4_a", "dense", mlp_ratio=16.0, loss=1.20),
        crossover_row("densew2_a", "dense", mlp_ratio=8.0, loss=1.30),
        crossover_row("densew4_b", "dense", mlp_ratio=16.0, loss=1.10, tokens=2000),
        crossover_row("moe_a", "moe", experts=4, loss=1.25),
        crossover_row("moe_b", "moe", experts=4, loss=1.05, tokens=2000),
        crossover_row("moee8_a", "moe", experts=8, loss=1.40),  # no dense of its size: unpaired
    ]
    # the router's d_model x E weights stay inside the tolerance; the dense run is E times wider
    moe_a, w4 = rows[4], rows[1]
    rows[4]["params_total"] = w4["params_total"] + 32 * 4
    table = pl.DataFrame(rows)
    matched = crossover.matched_params_differences(table, "final_val_bpb")
    pairs = {r["run_id"]: (r["dense_run_id"], round(r["delta"], 6)) for r in matched}
    assert pairs == {"moe_a": ("densew4_a", 0.05), "moe_b": ("densew4_b", -0.05)}
    assert all(r["dense_over_moe_flops"] > 3 for r in matched)  # the wide MLP costs ~E x FLOPs
    assert all(abs(r["total_over_dense_params"] - 1) <= crossover.MATCHED_PARAMS_TOLERANCE
               for r in matched)  # fmt: skip
    # matched active compute pairs the dense run of the same MLP ratio, never a wider one
    active = crossover.paired_differences(table, "final_val_bpb")
    assert {r["run_id"]: r["dense_run_id"] for r in active} == {
        "moe_a": "dense_a",
        "moee8_a": "dense_a",
    }
    # just outside the tolerance: no partner
    far = [dict(r) for r in rows]
    far[1]["params_total"] = int(
        moe_a["params_total"] * (1 + 1.5 * crossover.MATCHED_PARAMS_TOLERANCE)
    )
    pairs = {
        r["run_id"]
        for r in crossover.matched_params_differences(pl.DataFrame(far), "final_val_bpb")
    }
    assert pairs == {"moe_b"}
    with pytest.raises(ValueError, match="tolerance"):
        crossover.matched_params_differences(table, "final_val_bpb", tolerance=-0.1)


def test_matched_total_params_prefers_same_depth_and_width_then_nearest():
    moe = crossover_row("moe_x", "moe", experts=4, params_total=100_000)
    near_other_shape = crossover_row("dense_y", "dense", d_model=48, params_total=100_500)
    same_shape = crossover_row("densew4_x", "dense", mlp_ratio=16.0, params_total=101_500)
    farther_other_shape = crossover_row("dense_z", "dense", d_model=40, params_total=101_000)
    table = pl.DataFrame([moe, near_other_shape, same_shape, farther_other_shape])
    (only,) = crossover.matched_params_differences(table, "final_val_bpb")
    assert only["dense_run_id"] == "densew4_x"
    table = pl.DataFrame([moe, near_other_shape, farther_other_shape])
    (only,) = crossover.matched_params_differences(table, "final_val_bpb")
    assert only["dense_run_id"] == "dense_y"


def test_wide_dense_runs_are_partners_not_the_fitted_dense_baseline():
    rows = []
    for d_model in (16, 32, 48):
        for tokens in (1000, 4000):
            base = 1.0 + 50 / d_model + 30 / tokens**0.5
            rows.append(crossover_row(f"dense_{d_model}_{tokens}", "dense", d_model=d_model,
                                      tokens=tokens, loss=base))  # fmt: skip
            rows.append(crossover_row(f"densew2_{d_model}_{tokens}", "dense", mlp_ratio=8.0,
                                      d_model=d_model, tokens=tokens, loss=base - 0.05))  # fmt: skip
            rows.append(crossover_row(f"moee2_{d_model}_{tokens}", "moe", experts=2,
                                      d_model=d_model, tokens=tokens, loss=base - 0.03))  # fmt: skip
    table = pl.DataFrame(rows)
    assert crossover.baseline_mlp_ratio(table) == 4.0
    fits = crossover.crossover_fits(table, "final_val_bpb", bootstrap=0)
    assert set(fits) == {"dense", "moee2: E=2 k=1 cf=1.25 g=1"}
    assert all(rid.startswith("dense_") for rid in fits["dense"]["run_ids"])
    chart = moe_plots.crossover_chart(table, fits).to_dict()
    assert [p["title"]["text"] for p in chart["hconcat"]] == [
        "matched active compute",
        "matched total parameters",
    ]
    subtitle = " | ".join(chart["title"]["subtitle"])
    assert "moee2: E=2 k=1 cf=1.25 g=1: matched params, MoE - dense median +0.020" in subtitle
    assert "MoE lower in 0 of 6" in subtitle


def test_crossover_subtitle_uses_the_fit_modules_wording():
    from nanigpt.scaling.fit import crossover_text

    text = crossover_text(
        {"flops": 1.2e14, "extrapolated": True, "flops_ci": [5e13, None],
         "bootstrap_outcomes": {"overtakes": 0.6}, "searched_flops": [1e9, 1e15]},
        "moee2",
    )  # fmt: skip
    assert text == (
        "moee2 overtakes dense from 1.2e+14 FLOPs (extrapolated beyond the runs), "
        "95% CI 5.0e+13 to beyond range; 60% of bootstrap fits overtake"
    )
    text = crossover_text(
        {"flops": None, "outcome": "not_lower_at_top", "searched_flops": [1e9, 1e15],
         "bootstrap_outcomes": {"overtakes": 0.25}},
        "moee8",
    )  # fmt: skip
    assert "no crossover in the searched range (25% of bootstrap fits overtake)" in text
