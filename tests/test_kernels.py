"""Triton kernels equal to their PyTorch references, forward and every gradient (issue 19).

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py
and nanigpt/kernels before triton is imported); the interpreter has no bf16, so float32 and
float16 are tested here and bf16 only on a GPU. Shapes are small and deliberately not multiples of
the block sizes, and `max_block` is lowered so a row spans several blocks.

Tolerances: float32 rtol = atol = 1e-5 (the kernels and the references do the same float32
arithmetic in another order); float16 rtol = atol = 2e-3 (one or two fp16 ulps of the outputs).
"""

from __future__ import annotations

import os

if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


import pytest
import torch

from nanigpt.kernels import resolve_kernels
from nanigpt.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from nanigpt.kernels.rms_norm import rms_norm, rms_norm_reference
from nanigpt.kernels.rope import rope, rope_reference
from nanigpt.kernels.swiglu import swiglu, swiglu_reference
from nanigpt.model import GPT, GPTConfig
from nanigpt.model.gpt import apply_rotary, rotary_tables

# On a GPU machine (TRITON_INTERPRET unset) the same tests run the compiled kernels on CUDA.
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float16: {"rtol": 2e-3, "atol": 2e-3}}
DTYPES = [torch.float32, torch.float16]


def _grads(out, inputs, grad_out):
    outs = out if isinstance(out, tuple) else (out,)
    grad_outs = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    return torch.autograd.grad(outs, inputs, grad_outs)


def _assert_all_close(got, want, dtype):
    for name, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype, f"output {name}: dtype {a.dtype} != reference {b.dtype}"
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, n=name: f"output {n}: {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
# one-block: 15 rows in one [16, 64] tile; 70-rows: three backward programs of 32, 32 and 6 rows
# in [16, 32] tiles; multi-block and 33-cols: rows longer than the block, looped.
@pytest.mark.parametrize(
    "shape, max_block",
    [((3, 5, 50), 8192), ((70, 24), 8192), ((7, 50), 16), ((4, 33), 32)],
    ids=["one-block", "70-rows", "multi-block", "33-cols"],
)
def test_kernels_rms_norm_matches_reference(dtype, shape, max_block):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(DEV, dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(DEV, dtype).requires_grad_()
    dy = torch.randn(*shape, generator=g).to(DEV, dtype)
    y = rms_norm(x, w, 1e-5, max_block)
    y_ref = rms_norm_reference(x, w, 1e-5)
    got = (y, *_grads(y, (x, w), dy))
    want = (y_ref, *_grads(y_ref, (x, w), dy))
    _assert_all_close(got, want, dtype)


def test_kernels_rms_norm_non_contiguous_and_module():
    from nanigpt.kernels.rms_norm import TritonRMSNorm

    x = torch.randn(24, 6, device=DEV).t().requires_grad_()  # [6, 24], strides (1, 6)
    norm, ref = TritonRMSNorm(24, eps=1e-5).to(DEV), torch.nn.RMSNorm(24, eps=1e-5).to(DEV)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 24))
        ref.weight.copy_(norm.weight)
    y, y_ref = norm(x), ref(x)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])
    dy = torch.randn_like(y)
    got = _grads(y, (x, norm.weight), dy)
    want = _grads(y_ref, (x, ref.weight), dy)
    _assert_all_close(got, want, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 10), (1, 7, 4, 8)], ids=["3heads-d10", "4heads-d8"])
def test_kernels_rope_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(0)
    batch, time, heads, head_dim = shape
    q = torch.randn(*shape, generator=g).to(DEV, dtype).requires_grad_()
    k = torch.randn(batch, time, heads - 1 if heads > 3 else heads, head_dim, generator=g)
    k = k.to(DEV, dtype).requires_grad_()
    cos, sin = rotary_tables(time + 3, head_dim, 10000.0)
    cos, sin = cos[:time].to(DEV), sin[:time].to(DEV)
    dq, dk = (
        torch.randn(q.shape, generator=g).to(DEV, dtype),
        torch.randn(k.shape, generator=g).to(DEV, dtype),
    )
    out, out_ref = rope(q, k, cos, sin), rope_reference(q, k, cos, sin)
    got = (*out, *_grads(out, (q, k), (dq, dk)))
    want = (*out_ref, *_grads(out_ref, (q, k), (dq, dk)))
    _assert_all_close(got, want, dtype)
    # The reference is the model's rotation, on the heads-first layout the model uses.
    model_q = apply_rotary(q.detach().transpose(1, 2), cos, sin).transpose(1, 2)
    torch.testing.assert_close(out_ref[0].detach(), model_q, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_kernels_swiglu_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    gate = (
        torch.randn(3, 37, generator=g).to(DEV, dtype).requires_grad_()
    )  # 111 = 6 blocks of 16 + 15
    up = torch.randn(3, 37, generator=g).to(DEV, dtype).requires_grad_()
    dh = torch.randn(3, 37, generator=g).to(DEV, dtype)
    h, h_ref = swiglu(gate, up, block=16), swiglu_reference(gate, up)
    got = (h, *_grads(h, (gate, up), dh))
    want = (h_ref, *_grads(h_ref, (gate, up), dh))
    _assert_all_close(got, want, dtype)


def test_kernels_swiglu_module_matches_dense_mlp():
    from nanigpt.kernels.swiglu import FusedSwiGLU
    from nanigpt.model.moe import SwiGLU

    torch.manual_seed(0)
    ref = SwiGLU(12, 20).to(DEV)
    fused = FusedSwiGLU(12, 20).to(DEV)
    fused.load_state_dict(ref.state_dict())  # same parameters, same names
    x = torch.randn(2, 3, 12, device=DEV)
    torch.testing.assert_close(fused(x), ref(x), **TOL[torch.float32])


@pytest.mark.parametrize(
    "dtype, chunk, max_block",
    [(torch.float32, 4, 16), (torch.float32, None, 8192), (torch.float16, 5, 16)],
    ids=["fp32-chunks-of-4-multi-block", "fp32-one-chunk", "fp16-chunks-of-5"],
)
def test_kernels_cross_entropy_matches_reference(dtype, chunk, max_block):
    g = torch.Generator().manual_seed(0)
    n, d, vocab = 13, 8, 37
    h = torch.randn(n, d, generator=g).to(DEV, dtype).requires_grad_()
    w = torch.randn(vocab, d, generator=g).to(DEV, dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=g).to(DEV)
    targets[[2, 7]] = -100  # ignored: no loss, no gradient, not counted in the mean
    loss = linear_cross_entropy(h, w, targets, chunk_tokens=chunk, max_block=max_block)
    loss_ref = linear_cross_entropy_reference(h, w, targets)
    # An upstream gradient that is not 1 (as under a loss scale or grad accumulation).
    got = (loss, *_grads(loss * 3.0, (h, w), torch.tensor(1.0, device=DEV)))
    want = (loss_ref, *_grads(loss_ref * 3.0, (h, w), torch.tensor(1.0, device=DEV)))
    _assert_all_close(got, want, dtype)


def test_kernels_cross_entropy_tied_weight_accumulates():
    """A weight used by an embedding and the fused loss gets the sum of both gradients."""
    g = torch.Generator().manual_seed(0)
    vocab, d = 19, 6
    idx = torch.randint(0, vocab, (10,), generator=g).to(DEV)
    targets = torch.randint(0, vocab, (10,), generator=g).to(DEV)
    grads = []
    for fn in (linear_cross_entropy, linear_cross_entropy_reference):
        w = torch.randn(vocab, d, generator=torch.Generator().manual_seed(1)).to(DEV)
        w.requires_grad_()
        h = torch.nn.functional.embedding(idx, w) * 2.0
        fn(h, w, targets).backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float32])


def test_kernels_cross_entropy_bad_shapes():
    with pytest.raises(ValueError, match="expected h \\[tokens, d\\]"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))


TINY = {"vocab_size": 50, "seq_len": 12, "n_layer": 2, "d_model": 24, "n_head": 3, "mlp_ratio": 2}


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_kernels_model_triton_matches_torch(tied):
    """The whole model with every kernel in Triton: same loss and gradients as with torch."""
    idx = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(2)).to(DEV)
    targets = idx.roll(-1, 1)
    targets[0, -1] = -100
    results = {}
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_dict({**TINY, "tied_embeddings": tied, "kernels": impl}))
        model.to(DEV)
        out = model(idx, targets)
        out.loss.backward()
        results[impl] = (out.loss, {n: p.grad for n, p in model.named_parameters()})
    (loss_t, grads_t), (loss_k, grads_k) = results["torch"], results["triton"]
    torch.testing.assert_close(loss_k, loss_t, **TOL[torch.float32])
    assert grads_k.keys() == grads_t.keys()
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_kernels_model_compiles_in_one_graph():
    """torch.compile(fullgraph=True) of the Triton model traces forward and backward with no graph
    break, under autocast (the fused loss takes its matmul dtype from it), equal to eager torch."""
    idx = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(3)).to(DEV)
    losses = {}
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT(GPTConfig.from_dict({**TINY, "n_layer": 1, "kernels": impl})).to(DEV)
        if impl == "triton":
            model = torch.compile(model, backend="aot_eager", fullgraph=True)
        with torch.autocast(DEV.type, dtype=torch.float16):
            losses[impl] = model(idx, idx.roll(-1, 1)).loss
        losses[impl].backward()
    torch.testing.assert_close(losses["triton"], losses["torch"], **TOL[torch.float16])


def test_kernels_rms_norm_launch_config_changes_nothing_but_speed():
    """Another launch setting (tiles of other row counts, as the bench sweeps) gives the same
    result; on the CPU the programs-per-SM entry is unused (4 programs)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(37, 40, generator=gen).to(DEV).requires_grad_()
    w = (1 + 0.1 * torch.randn(40, generator=gen)).to(DEV).requires_grad_()
    dy = torch.randn(37, 40, generator=gen).to(DEV)
    want = rms_norm_reference(x, w, 1e-5)
    want_grads = _grads(want, (x, w), dy)
    for config in [(128, 1, 64, 1, 2), (2048, 4, 512, 4, 8)]:
        got = rms_norm(x, w, 1e-5, launch_config=config)
        torch.testing.assert_close(got, want, **TOL[torch.float32])
        _assert_all_close(_grads(got, (x, w), dy), want_grads, torch.float32)


TRACE_SCRIPT = """
import os
os.environ["TRITON_INTERPRET"] = "0"
import torch
import nanigpt.kernels._launch as launch
launch.sm_count = lambda device_type, index: 132  # no GPU to ask
from torch._functorch.aot_autograd import aot_function
from torch._subclasses.fake_tensor import FakeTensorMode
from nanigpt.kernels import rms_norm, rope, swiglu
assert launch.use_triton_op()
graphs = []
def keep(gm, inputs):
    graphs.append(gm.code)
    return gm
with FakeTensorMode():
    x = torch.empty(64, 48, device="cuda", dtype=torch.bfloat16)
    w = torch.empty(48, device="cuda", dtype=torch.bfloat16)
    q = torch.empty(2, 8, 4, 16, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(8, 8, device="cuda")
    def norm(x, w):
        y, r = rms_norm.rms_norm_fwd(x, w, 1e-5, 8192, 8192, 8)
        return rms_norm.rms_norm_bwd(y, x, w, r, 8192, 4096, 8, 8)
    aot_function(norm, fw_compiler=keep)(x, w)
    aot_function(lambda q, c: rope.rope_op(q, q, c, c, 1), fw_compiler=keep)(q, c)
    aot_function(lambda q: swiglu.swiglu_fwd(q, q, 1024), fw_compiler=keep)(q)
    aot_function(lambda q: swiglu.swiglu_bwd(q, q, q, 1024), fw_compiler=keep)(q)
kernels = [g.count("triton_kernel_wrapper_functional(") for g in graphs]
assert kernels == [2, 1, 1, 1], kernels
assert all("torch.ops.nanigpt" not in g for g in graphs)
print("traced", kernels)
"""


def test_kernels_triton_ops_trace_to_kernel_calls():
    """The GPU form of the ops (triton_op, not runnable here): tracing them with fake CUDA
    tensors, as torch.compile does, turns each into its Triton kernel calls (the higher-order
    op Inductor launches from generated code), not an opaque op. A subprocess, because
    TRITON_INTERPRET must be off before triton is imported."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", TRACE_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "traced [2, 1, 1, 1]" in done.stdout


def test_kernels_setting_validation():
    assert resolve_kernels("triton") == dict.fromkeys(resolve_kernels("torch"), "triton")
    assert resolve_kernels({"rope": "triton"})["rope"] == "triton"
    assert resolve_kernels({"rope": "triton"})["rms_norm"] == "torch"
    with pytest.raises(ValueError, match="model.kernels='cuda'"):
        GPTConfig.from_dict({**TINY, "kernels": "cuda"})
    with pytest.raises(ValueError, match="unknown kernel"):
        GPTConfig.from_dict({**TINY, "kernels": {"layernorm": "triton"}})
    model = GPT(GPTConfig.from_dict({**TINY, "kernels": {"cross_entropy": "triton"}})).to(DEV)
    zeros = torch.zeros(1, 4, dtype=torch.long, device=DEV)
    out = model(zeros, zeros)
    assert out.logits is None and out.loss is not None  # the fused loss never builds logits
    with torch.no_grad():  # evaluation: the eager loss (one matmul), logits returned
        assert model(zeros, zeros).logits is not None
    assert type(model.norm) is torch.nn.RMSNorm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernels need a CUDA GPU")
def test_kernels_bf16_on_gpu():
    """bf16 (no interpreter support) against the float32 references, tolerance a few bf16 ulps."""
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    tol = {"rtol": 2e-2, "atol": 2e-2}
    x = torch.randn(64, 1000, device=dev, dtype=bf16)
    w = torch.ones(1000, device=dev, dtype=bf16)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), rms_norm_reference(x, w, 1e-5), **tol)
    gate, up = torch.randn(2, 4096, device=dev, dtype=bf16).unbind(0)
    torch.testing.assert_close(swiglu(gate, up), swiglu_reference(gate, up), **tol)
    q, k = torch.randn(2, 2, 128, 12, 64, device=dev, dtype=bf16).unbind(0)
    cos, sin = (t.to(dev) for t in rotary_tables(128, 64, 10000.0))
    for got, want in zip(rope(q, k, cos, sin), rope_reference(q, k, cos, sin), strict=True):
        torch.testing.assert_close(got, want, **tol)
    h = torch.randn(300, 64, device=dev, dtype=bf16)
    weight = (0.02 * torch.randn(5000, 64, device=dev)).to(bf16)
    targets = torch.randint(0, 5000, (300,), device=dev)
    loss = linear_cross_entropy(h, weight, targets, chunk_tokens=128)
    torch.testing.assert_close(loss, linear_cross_entropy_reference(h, weight, targets), **tol)


def test_kernels_bench_cpu_writes_json_parquet_figure(tmp_path):
    import json

    import polars as pl

    from nanigpt.kernels import bench

    out = tmp_path / "kernels" / "bench.json"
    code = bench.main(["--out", str(out), "--preset", "cpu", "--kernels", "rms_norm",
                       "--repeats", "1", "--no-compile"])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["meta"]["copy_bytes_per_s"] > 0 and result["meta"]["preset"] == "cpu"
    assert {r["kernel"] for r in rows} == {"rms_norm"}
    timed = [r for r in rows if r["status"] == "ok"]
    assert {"eager", "triton"} <= {r["impl"] for r in timed}  # liger too on a GPU with it
    assert all(r["rel_err_ok"] and r["gb_per_s"] > 0 for r in timed)
    if not torch.cuda.is_available():
        assert all(r["interpreted"] for r in timed if r["impl"] == "triton")
    skipped = [r for r in rows if r["status"] == "skipped"]  # compiled and liger, with the reason
    assert skipped and all(r["reason"] for r in skipped)
    assert pl.read_parquet(out.with_suffix(".parquet")).height == len(rows)
    assert out.with_suffix(".svg").read_text().startswith("<svg")
    redrawn = tmp_path / "redrawn.svg"
    assert bench.main(["--chart-from", str(out), "--out", str(redrawn)]) == 0
    assert redrawn.exists()


def test_kernels_bench_bad_input(tmp_path, capsys):
    from nanigpt.kernels import bench

    missing = tmp_path / "missing.json"
    assert bench.main(["--chart-from", str(missing), "--out", str(tmp_path / "x.svg")]) == 2
    assert "bench JSON not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    assert bench.main(["--chart-from", str(bad), "--out", str(tmp_path / "x.svg")]) == 2
    assert "expected a kernel bench JSON" in capsys.readouterr().err
    assert bench.main(["--out", str(tmp_path / "x.csv"), "--preset", "cpu"]) == 2
    if not torch.cuda.is_available():
        assert bench.main(["--out", str(tmp_path / "x.json"), "--preset", "gpu"]) == 2


def test_kernels_bench_sweeps_rms_norm_launch_settings_at_the_large_case():
    """At the large RMSNorm case (here at a small shape) the bench adds one `triton_sweep` row per
    direction and launch setting, each checked against the reference; on the CPU no graph time,
    with the reason."""
    from nanigpt.kernels import bench

    case = bench.rms_norm_case("d1024_large", (16, 40), torch.float32, DEV,
                               torch.Generator().manual_seed(0))  # fmt: skip
    ceil = {"copy_bytes_per_s": 1e10, "matmul_flops_per_s": 1e11}
    rows = bench.run_case(case, DEV, 1, ceil, "off", {}, "no liger")
    sweep = [r for r in rows if r["impl"] == "triton_sweep"]
    assert len(sweep) == 3 * len(bench.RMS_NORM_SWEEP)
    assert all(r["status"] == "ok" and r["rel_err_ok"] and r["launch_config"] for r in sweep)
    timed = [r for r in rows if r["status"] == "ok"]
    assert all(r["timing"] == "calls" and r["graph_reason"] for r in timed)
    assert all(r["ceiling_fraction"] == r["ceiling_fraction_calls"] for r in timed)


def test_kernels_bench_flags_a_wrong_kernel():
    """The bench's correctness column can fail: a norm with a 10% wrong weight is flagged."""
    from nanigpt.kernels import bench

    case = bench.rms_norm_case("d40", (16, 40), torch.float32, DEV,
                               torch.Generator().manual_seed(0))  # fmt: skip
    good = bench.check(case, case.impls["triton"])
    bad = bench.check(case, lambda x, w: rms_norm_reference(x, w * 1.1, bench.EPS))
    assert max(good.values()) <= bench.TOLERANCE[torch.float32]
    assert min(bad.values()) > bench.TOLERANCE[torch.float32]
