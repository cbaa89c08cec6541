"""Tests of nanigpt.analysis.trace_analysis: a synthetic trace is categorised exactly (question 1)."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from nanigpt.analysis.trace_analysis import analyze, categorize, load_trace, main


def kernel(name, ts, dur, stream, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": stream}


def cpu_op(name, ts, dur, cat="cpu_op"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1}


# Stream 7 computes with a 50 us gap; stream 20 runs an all-reduce that overlaps attention and
# elementwise for 100 of its 150 us, then stands alone for 50 us; a memcpy closes the window.
GPU_TRACE = {
    "traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
        cpu_op("ProfilerStep#3", -10, 400, cat="user_annotation"),
        cpu_op("aten::mm", -5, 3),  # a CPU op: ignored when the trace has device kernels
        kernel("ProfilerStep#3", 0, 360, 7, cat="gpu_user_annotation"),  # ignored too
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", 0, 100, 7),
        kernel("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", 150, 100, 7),
        kernel("void at::native::vectorized_elementwise_kernel<4, silu>", 250, 50, 7),
        kernel("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*)", 200, 150, 20),
        kernel("Memcpy DtoD (Device -> Device)", 350, 10, 7, cat="gpu_memcpy"),
    ]
}


def test_gpu_trace_is_categorised_exactly():
    result = analyze(GPU_TRACE)
    assert result.mode == "gpu"
    assert result.steps == 1
    assert result.window_s == pytest.approx(360e-6)
    k = result.kernel_time_s
    assert k["matmul"] == pytest.approx(100e-6)
    assert k["attention"] == pytest.approx(100e-6)
    assert k["norm_elementwise"] == pytest.approx(50e-6)
    assert k["communication"] == pytest.approx(150e-6)
    assert k["memory_copy"] == pytest.approx(10e-6)
    assert k["other"] == 0
    w = result.wall_time_s
    assert w["idle"] == pytest.approx(50e-6)  # the gap 100..150 on the only busy stream
    assert w["communication"] == pytest.approx(50e-6)  # exposed: 300..350
    assert w["memory_copy"] == pytest.approx(10e-6)
    assert sum(w.values()) == pytest.approx(result.window_s)
    assert result.comm_time_s == pytest.approx(150e-6)
    assert result.comm_overlap_s == pytest.approx(100e-6)
    assert result.comm_overlap_frac == pytest.approx(100 / 150)
    assert result.counts["matmul"] == 1 and result.counts["communication"] == 1


def test_cpu_trace_uses_self_time_and_ancestors():
    trace = {
        "traceEvents": [
            cpu_op("ProfilerStep#1", 0, 100, cat="user_annotation"),
            cpu_op("aten::linear", 10, 30),
            cpu_op("aten::mm", 15, 20),
            cpu_op("aten::empty", 15, 1),  # inherits matmul from its parent
            cpu_op("aten::rms_norm", 50, 10),
            cpu_op("aten::empty", 50, 2),
            cpu_op("aten::view", 70, 5),
        ]
    }
    result = analyze(trace)
    assert result.mode == "cpu"
    assert result.window_s == pytest.approx(100e-6)
    assert result.kernel_time_s["matmul"] == pytest.approx(30e-6)
    assert result.kernel_time_s["norm_elementwise"] == pytest.approx(10e-6)
    assert result.kernel_time_s["other"] == pytest.approx(5e-6)
    assert result.wall_time_s["idle"] == pytest.approx(55e-6)
    assert result.comm_overlap_frac is None


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL", "communication"),
        ("c10d::allreduce_", "communication"),
        ("fmha_cutlassF_f32_aligned_64x64_rf_sm80", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", "matmul"),
        ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn", "matmul"),
        ("aten::addmm", "matmul"),
        ("MmBackward0", "matmul"),
        ("aten::_grouped_mm", "matmul"),
        ("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>", "memory_copy"),
        ("aten::copy_", "memory_copy"),
        ("triton_per_fused__fused_rms_norm_0", "norm_elementwise"),
        ("void at::native::reduce_kernel<512, 1>", "norm_elementwise"),
        ("void at::native::(anonymous namespace)::cunn_SoftMaxForward", "norm_elementwise"),
        ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "norm_elementwise"),
        ("aten::view", None),
    ],
)
def test_categorize(name, category):
    assert categorize(name) == category


def test_cli_writes_parquet_and_json(tmp_path, capsys):
    trace_path = tmp_path / "trace.json.gz"
    with gzip.open(trace_path, "wt") as f:
        json.dump(GPU_TRACE, f)
    out = tmp_path / "profile" / "trace_breakdown.parquet"
    assert main(["--trace", str(trace_path), "--out", str(out)]) == 0
    rows = {r["category"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["idle"]["wall_time_s"] == pytest.approx(50e-6)
    assert sum(r["wall_share"] for r in rows.values()) == pytest.approx(1.0)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["comm_overlap_frac"] == pytest.approx(2 / 3)


def test_empty_and_bad_traces(tmp_path):
    empty = analyze({"traceEvents": []})
    assert empty.mode == "empty" and empty.window_s == 0
    bad = tmp_path / "bad.json.gz"
    with gzip.open(bad, "wt") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="bad.json.gz"):
        load_trace(bad)
    assert (
        main(["--trace", str(tmp_path / "missing.json.gz"), "--out", str(tmp_path / "x.parquet")])
        == 2
    )


def _synthetic_run(tmp_path):
    """A run folder without training: hand-written config, summary, metrics and the GPU trace."""
    import pyarrow as pa

    run_dir = tmp_path / "runs" / "toy"
    run_dir.mkdir(parents=True)
    model = {"vocab_size": 64, "seq_len": 16, "n_layer": 2, "d_model": 32, "n_head": 2}
    run = {
        "run_id": "toy", "arch_kind": "dense", "size": "s0", "parallelism_name": "single",
        "parallelism": {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1}, "model": model,
        "training": {"batch_size": 4, "seq_len": 16, "grad_accum": 1},
    }  # fmt: skip
    (run_dir / "config.json").write_text(
        json.dumps({"run": run, "derived": {"device": "cuda", "tokens_per_step": 64}})
    )
    summary = {
        "run_id": "toy", "device": "NVIDIA H100 80GB HBM3", "flops_per_token": 1e6,
        "tokens_per_s": 1e5, "peak_memory_bytes": 4_000_000,
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    steps = [
        {"step": i, "step_time_s": 0.010, "data_s": 0.001, "forward_s": 0.003,
         "backward_s": 0.004, "optimizer_s": 0.001, "other_s": 0.001, "profiled": i in (2, 3)}
        for i in range(6)
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(steps), run_dir / "metrics.parquet")
    with gzip.open(run_dir / "trace.json.gz", "wt") as f:
        json.dump(GPU_TRACE, f)
    hardware = {
        "device": "NVIDIA H100 80GB HBM3", "device_slug": "nvidia-h100-80gb-hbm3",
        "matmul_flops_per_s": 8e14, "copy_bytes_per_s": 3e12,
        "datasheet_peak_flops": 1e15, "datasheet_peak_bytes_per_s": 3.35e12,
    }  # fmt: skip
    hw_path = tmp_path / "hardware.json"
    hw_path.write_text(json.dumps(hardware))
    return run_dir, hw_path


def test_report_of_a_synthetic_run(tmp_path):
    from nanigpt.analysis import report

    run_dir, hw_path = _synthetic_run(tmp_path)
    out = tmp_path / "profile" / "toy"
    assert (
        report.main(["--run-dir", str(run_dir), "--hardware", str(hw_path), "--out-dir", str(out)])
        == 0
    )
    for name in ("breakdown.parquet", "memory.json", "breakdown.svg", "roofline.svg", "memory.svg"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "report.json").read_text())
    assert result["mfu_datasheet"] == pytest.approx(1e6 * 1e5 / 1e15)
    assert result["mfu_measured"] == pytest.approx(1e6 * 1e5 / 8e14)
    assert result["hardware_matches_run"] is True
    rows = pq.read_table(out / "breakdown.parquet").to_pylist()
    phases = {r["category"]: r for r in rows if r["section"] == "phase"}
    assert list(phases) == ["data", "forward", "backward", "optimizer", "other"]
    assert phases["backward"]["share"] == pytest.approx(0.4)
    assert sum(r["share"] for r in phases.values()) == pytest.approx(1.0)
    trace = {r["category"]: r for r in rows if r["section"] == "trace"}
    assert trace["idle"]["seconds_per_step"] == pytest.approx(50e-6)
    matmul = next(p for p in result["roofline"] if p["category"] == "matmul")
    assert matmul["kernel_time_s"] == pytest.approx(100e-6) and matmul["intensity"] > 0

    summary = tmp_path / "profile" / "summary.parquet"
    assert report.main(["aggregate", "--reports", str(out / "report.json"), "--out", str(summary),
                        "--chart", str(tmp_path / "profile" / "breakdown.svg")]) == 0  # fmt: skip
    (row,) = pq.read_table(summary).to_pylist()
    assert row["run_id"] == "toy" and row["trace_share_idle"] == pytest.approx(50 / 360)


def test_outlier_step_is_left_out():
    """Three profiled steps, the middle one 10x longer (a checkpoint): it leaves the window."""
    events = [
        cpu_op("ProfilerStep#1", 0, 100, cat="user_annotation"),
        cpu_op("ProfilerStep#2", 100, 1000, cat="user_annotation"),
        cpu_op("ProfilerStep#3", 1100, 100, cat="user_annotation"),
        cpu_op("aten::mm", 10, 50),
        cpu_op("aten::copy_", 200, 800),  # the checkpoint's copies
        cpu_op("aten::mm", 1110, 50),
    ]
    result = analyze({"traceEvents": events})
    assert result.dropped_steps == ["ProfilerStep#2"] and result.steps == 2
    assert result.window_s == pytest.approx(200e-6)
    assert result.kernel_time_s["memory_copy"] == 0
    assert result.wall_time_s["idle"] == pytest.approx(100e-6)
    kept = analyze({"traceEvents": events}, drop_outliers=False)
    assert kept.dropped_steps == [] and kept.kernel_time_s["memory_copy"] == pytest.approx(800e-6)


def test_report_without_trace_or_hardware(tmp_path):
    """Profiling off (an empty trace) and no ceilings: the report still writes every file."""
    from nanigpt.analysis import report

    run_dir, _ = _synthetic_run(tmp_path)
    with gzip.open(run_dir / "trace.json.gz", "wt") as f:
        json.dump({"traceEvents": [], "otherData": {"nanigpt": "profiling disabled"}}, f)
    out = tmp_path / "profile" / "toy"
    assert report.main(["--run-dir", str(run_dir), "--out-dir", str(out)]) == 0
    result = json.loads((out / "report.json").read_text())
    assert result["trace"]["mode"] == "empty" and result["roofline"] == []
    assert result["mfu_measured"] is None  # no ceilings file
    assert result["mfu_datasheet"] == pytest.approx(1e6 * 1e5 / 989.4e12)  # hardware.py's table
    assert (out / "roofline.svg").stat().st_size > 0


def test_inductor_fused_kernels_are_compute_unless_they_only_copy():
    from nanigpt.analysis.trace_analysis import categorize

    assert categorize("triton_red_fused__log_softmax__to_copy_add_arange_eq_nll_3") == (
        "norm_elementwise"
    )
    assert categorize("triton_per_fused__fused_rms_norm_backward__to_copy_add_view_9") == (
        "norm_elementwise"
    )
    assert categorize("triton_poi_fused__to_copy_0") == "memory_copy"
    assert categorize("triton_poi_fused__to_copy_clone_view_12") == "memory_copy"
    assert categorize("triton_tem_fused_mm_4") == "matmul"
