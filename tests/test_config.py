"""Config validation and sweep expansion: bad keys fail early, run ids follow parameters."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from nanigpt.graph.config import (
    ConfigError,
    load_config,
    profiled_run_ids,
    resolve_runs,
    run_id_for,
    run_settings_json,
    tokens_label,
    validate_config,
)
from tests.workflow_util import SMOKE_CONFIG, load_smoke


def test_default_and_smoke_configs_are_valid():
    default = load_config()
    smoke = load_config(SMOKE_CONFIG)
    assert len(resolve_runs(default)) >= 18
    assert len(resolve_runs(smoke)) == 23  # 4 of the IsoFLOP sweep's 6 are its own


def test_misspelled_key_names_the_key_and_suggests():
    raw = load_smoke()
    raw["training"]["lrr"] = raw["training"].pop("lr")
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    message = str(err.value)
    assert "training.lrr" in message
    assert "did you mean 'lr'" in message


def test_every_unknown_key_check_words_it_alike():
    """Issue 27: one helper (nanigpt.keys) words each unknown key: its path, the nearest key."""
    from nanigpt.data.realtext import RealTextError, RealTextSpec
    from nanigpt.data.synthetic import SpecError, SyntheticSpec
    from nanigpt.keys import unknown_keys_message
    from nanigpt.model.config import GPTConfig
    from nanigpt.parallel.setting import ParallelSetting

    model = {"vocab_size": 64, "seq_len": 16, "n_layer": 1, "d_model": 16, "n_head": 2}
    refused = [
        (lambda: GPTConfig.from_dict({**model, "n_layers": 2}), ValueError,
         "unknown key 'model.n_layers' (did you mean 'n_layer'?); allowed keys here: "),
        (lambda: GPTConfig.from_dict({**model, "moe": {"num_experts": 2, "topk": 1}}), ValueError,
         "unknown key 'model.moe.topk' (did you mean 'top_k'?); allowed keys here: "),
        (lambda: ParallelSetting.from_dict({"dpp": 2}), ValueError,
         "unknown key 'parallelism.dpp' (did you mean 'dp'?); allowed keys here: dp, ep, fsdp, "),
        (lambda: SyntheticSpec.from_dict({"brnching": 4}), SpecError,
         "unknown key 'brnching' (did you mean 'branching'?); allowed keys here: "),
        (lambda: RealTextSpec.from_dict({"kind": "python_stdlib", "sed": 1}), RealTextError,
         "unknown key 'sed' (did you mean 'seed'?); allowed keys here: kind, "),
    ]  # fmt: skip
    for build, error, message in refused:
        with pytest.raises(error) as err:
            build()
        assert message in str(err.value)
    assert unknown_keys_message({"a": 1}, ["a", "b"], "x") is None
    assert unknown_keys_message(["zzz", "bb"], ["a", "b"], ["x", 0]) == (
        "unknown key 'x.0.bb' (did you mean 'b'?); unknown key 'x.0.zzz'; allowed keys here: a, b"
    )


def test_out_of_range_value_names_the_key():
    raw = load_smoke()
    raw["sizes"]["a"]["n_layer"] = 0
    with pytest.raises(ConfigError, match=r"sizes\.a\.n_layer"):
        validate_config(raw)


def test_unknown_sweep_reference_is_named():
    raw = load_smoke()
    raw["sweeps"]["scaling"]["sizes"].append("huge")
    with pytest.raises(ConfigError, match=r"sweeps\.scaling\.sizes: unknown entry 'huge'"):
        validate_config(raw)


def test_head_dim_must_divide():
    raw = load_smoke()
    raw["sizes"]["a"]["n_head"] = 3
    with pytest.raises(ConfigError, match=r"sizes\.a: d_model=16 is not divisible by n_head=3"):
        validate_config(raw)


def test_multi_process_parallelism_is_accepted_and_reaches_the_run():
    raw = load_smoke()
    raw["parallelism"]["ddp2"] = {"dp": 2, "strategy": "ddp_manual"}
    raw["sweeps"]["scaling"]["parallelism"] = ["single", "ddp2"]
    runs = resolve_runs(validate_config(raw))
    run = runs["tiny_dense_a_t1024_ddp2"]
    assert run["parallelism"] == {"dp": 2, "fsdp": 1, "tp": 1, "ep": 1, "strategy": "ddp_manual"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"tp": 3}, r"tp=3 does not divide model.n_head=2"),
        ({"ep": 2}, r"arch 'dense' .*ep=2 but the model is dense"),
        ({"dp": 3}, r"batch_size=4 is not divisible by the 3 data-parallel ranks"),
        ({"dp": 2, "strategy": "fsdp2"}, r"strategy 'fsdp2' does not use dp=2"),
    ],
)
def test_parallelism_that_cannot_run_is_refused_before_any_job(setting, message):
    raw = load_smoke()
    raw["parallelism"]["bad"] = setting
    raw["sweeps"]["scaling"]["parallelism"] = ["bad"]
    with pytest.raises(ConfigError, match=r"sweeps\.scaling: parallelism 'bad' .*" + message):
        validate_config(raw)


def test_unknown_strategy_is_a_schema_error():
    raw = load_smoke()
    raw["parallelism"]["single"] = {"strategy": "ddp_magic"}
    with pytest.raises(ConfigError, match=r"parallelism\.single\.strategy"):
        validate_config(raw)


def test_run_ids_are_derived_from_parameters():
    assert tokens_label(50_000) == "50k"
    assert tokens_label(2_000_000) == "2M"
    assert tokens_label(1234) == "1234"
    assert run_id_for("mix", "moe", "s1", 50_000, "single") == "mix_moe_s1_t50k_single"
    runs = resolve_runs(load_config(SMOKE_CONFIG))
    run = runs["tiny_moe_c_t4096_single"]
    assert run["model"]["n_layer"] == 2 and run["model"]["moe"]["num_experts"] == 2
    assert run["arch_kind"] == "moe" and run["tokens"] == 4096


def test_c_yaml_loader_reads_the_configs_as_the_python_one():
    import glob

    import yaml

    from nanigpt.graph.config import load_yaml

    for path in glob.glob("workflow/config/*.yaml") + ["workflow/schemas/config.schema.yaml"]:
        text = Path(path).read_text()
        assert load_yaml(text) == yaml.safe_load(text), path


def test_profiled_runs_are_each_models_largest_budget():
    config = load_config("workflow/config/default.yaml")
    runs = resolve_runs(config)
    profiled = profiled_run_ids(config, "scaling")
    sweep = config["sweeps"]["scaling"]
    assert len(profiled) == len(sweep["archs"]) * len(sweep["sizes"])
    assert {runs[rid]["tokens"] for rid in profiled} == {max(sweep["tokens"])}
    assert {(runs[rid]["arch"], runs[rid]["size"]) for rid in profiled} == {
        (arch, size) for arch in sweep["archs"] for size in sweep["sizes"]
    }
    seeded = profiled_run_ids(config, "scaling_seeds")  # each seed is a model of its own
    assert len(seeded) == 2 * len(profiled)


def test_changing_one_size_changes_only_its_runs_settings():
    raw = load_smoke()
    before = {k: run_settings_json(v) for k, v in resolve_runs(validate_config(raw)).items()}
    changed = copy.deepcopy(raw)
    changed["sizes"]["a"]["d_model"] = 20
    changed["sizes"]["a"]["n_head"] = 2
    after = {k: run_settings_json(v) for k, v in resolve_runs(validate_config(changed)).items()}
    differing = {k for k in before if k in after and before[k] != after[k]}
    assert differing == {k for k in before if "_a_" in k and k in after}
    assert len(differing) == 7  # 6 scaling runs of size a and the MoE control
    # the IsoFLOP sweep's runs of size a train other token counts (FLOPs/token changed): new ids
    renamed = set(before) ^ set(after)
    assert len(renamed) == 4 and all("_a_" in k for k in renamed)


def test_defaults_are_filled():
    config = load_config(SMOKE_CONFIG)
    assert config["training"]["schedule"] == "cosine"
    assert config["parallelism"]["single"] == {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1}
    assert config["tokenizer"]["impl"] == "rust"


def test_default_declares_the_expert_count_and_matched_parameter_sweeps():
    config = load_config()
    runs = resolve_runs(config)
    for experts in (2, 4, 8):
        arch = "moe" if experts == 4 else f"moee{experts}"
        moe = runs[f"mix_{arch}_s1_t200k_single"]["model"]["moe"]
        assert moe["num_experts"] == experts and moe["top_k"] == 1
        # the routing defaults (issue 15): renormalised gate, capacity in training only
        assert moe["gate"] == "renorm" and moe["capacity_factor"] == 1.25
        assert moe["eval_capacity_factor"] is None
    assert runs["mix_moeswitch_s1_t200k_single_seed1"]["model"]["moe"]["gate"] == "switch"
    run = runs["mix_densew4_s1_t200k_single_seed1"]  # dense with 4x the MLP: the MoE's params
    assert run["model"]["moe"] is None
    assert run["model"]["mlp_ratio"] == 4 * config["model"]["mlp_ratio"]
    assert runs["mix_moe_s2_t200k_single"]["model"]["mlp_ratio"] == config["model"]["mlp_ratio"]
    assert "mlp_ratio" not in runs["mix_moe_s2_t200k_single"]["model"]["moe"]
    analysis = config["moe_analysis"]
    assert "moe_experts" in analysis["sweeps"] and analysis["experts"]
    crossover = [s for sweeps in analysis["crossover"].values() for s in sweeps]
    assert {"scaling", "dense_wide"} <= set(crossover)
    datasets = {config["sweeps"][s]["dataset"] for s in analysis["knowledge"]["data"]}
    assert {"solo", "mix", "mix16"} <= datasets  # the knowledge dial, with its control
    for dataset in ("solo", "mix16"):
        assert {"dense", "moe"} <= {
            r["arch"] for r in runs.values() if r["dataset"] == dataset and r["seed"] == 1
        }


def test_arch_mlp_ratio_overrides_the_size_and_the_model():
    raw = load_smoke()
    raw["archs"]["densew"] = {"kind": "dense", "mlp_ratio": 6}
    raw["sizes"]["a"]["mlp_ratio"] = 3
    raw["sweeps"]["scaling"]["archs"].append("densew")
    runs = resolve_runs(validate_config(raw))
    assert runs["tiny_densew_a_t1024_single"]["model"]["mlp_ratio"] == 6
    assert runs["tiny_dense_a_t1024_single"]["model"]["mlp_ratio"] == 3
    assert runs["tiny_dense_b_t1024_single"]["model"]["mlp_ratio"] == raw["model"]["mlp_ratio"]
    raw["archs"]["densew"]["num_experts"] = 4
    with pytest.raises(ConfigError, match=r"archs\.densew: kind dense takes no MoE settings"):
        validate_config(raw)
    raw["archs"]["densew"] = {"kind": "dense", "mlp_ratio": 0}
    with pytest.raises(ConfigError, match=r"archs\.densew\.mlp_ratio"):
        validate_config(raw)


def test_unknown_sweep_in_the_experts_figure_is_named():
    raw = load_smoke()
    raw["moe_analysis"]["experts"] = {"count": ["nope"]}
    with pytest.raises(ConfigError, match=r"moe_analysis\.experts\.count: unknown sweep 'nope'"):
        validate_config(raw)


def test_speed_options_reach_the_runs_only_where_set():
    """Issue 30's model options are config keys: set ones reach every run's model, unset or
    default ones leave the runs (and their ids) as they were; a bad value names its key."""
    raw = load_smoke()
    before = resolve_runs(validate_config(copy.deepcopy(raw), source="test"))
    raw["model"] = {**raw.get("model", {}), "fused_projections": True, "precision": "bf16"}
    after = resolve_runs(validate_config(copy.deepcopy(raw), source="test"))
    assert list(after) == list(before)
    for run_id, run in after.items():
        assert run["model"] == {**before[run_id]["model"], "fused_projections": True}
    raw["model"]["precision"] = "fp4"
    with pytest.raises(ConfigError, match="model.precision"):
        validate_config(raw, source="test")
