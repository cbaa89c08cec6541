"""Predicted memory footprint of a run, beside the measured peak: where does memory go? (question 1)

Per rank, in bytes, for our model (`nanigpt.model.gpt`) trained by AdamW:
- **parameters**: fp32 (autocast keeps fp32 masters), 4 bytes each;
- **gradients**: fp32, 4 bytes each;
- **optimizer states**: AdamW's exp_avg and exp_avg_sq, 2 x 4 bytes each (the `step` scalars are
  left out); the hand-written ZeRO-1/2 (`nanigpt.parallel.zero`) also keeps an fp32 copy of its
  slice, which the optimizer updates: + 4 bytes per sharded parameter;
- **weight copies** (bf16 autocast only): the bf16 copy autocast makes of every matmul weight,
  cached for the forward and saved for the backward, 2 bytes per matmul parameter;
- **activations**: what autograd saves for the backward of one micro-batch (gradient accumulation
  frees them between micro-batches), layer by layer, below;
- **logits**: the lm_head output and what the loss saves.

Parallelism (`{"dp", "fsdp", "tp", "ep", "strategy"}`, `nanigpt.parallel.mesh`): data-parallel ranks
(dp x fsdp x ep) split the global batch, so activations are per local micro-batch. DDP replicates the
rest. ZeRO-1 divides the optimizer states by fsdp, ZeRO-2 the gradients too, FSDP2 (also with TP or
EP) the parameters as well (its transient all-gathered layer is left out). TP (Megatron,
`nanigpt.parallel.tensor`) divides the attention projections and the dense MLP weights by tp, and
the activations inside those sublayers (heads, MLP hidden); norms, residual, embeddings, head and
MoE layers stay replicated. EP divides the routed experts' weights by ep.

Activations saved per token of one layer (d = d_model, h = MLP width, a = heads, b = bytes of the
compute dtype: 2 under bf16 autocast, 4 in fp32; the residual stream stays fp32, r = 4 bytes;
c = 1 in fp32, where projections share one saved input, and the number of projections reading a
tensor under autocast, which casts the input once per call), counted from what the ops save
(cf. Korthikanti et al. 2022, "Reducing Activation Recomputation", section 4, for GPT-2's block):

| piece                                       | bytes per token                      |
| ------------------------------------------- | ------------------------------------ |
| attention RMSNorm input (residual)          | r d                                  |
| q, k, v projection input                    | c b d, c = 3 under autocast          |
| rotary inputs of q and k (rotated in fp32)  | 4 * 2 d / tp                         |
| q, k, v after rotary (SDPA's inputs)        | 3 b d / tp                           |
| SDPA output and its logsumexp               | (b d + 4 a) / tp                     |
| wo input (the re-laid-out SDPA output)      | b d / tp                             |
| MLP RMSNorm input (residual)                | r d                                  |
| SwiGLU input                                | c b d, c = 2 under autocast          |
| gate, silu(gate), up, silu * up             | 4 b h / tp                           |
| MoE layer instead of the MLP: router input  | b d, router probabilities 4 E        |
|   per routed assignment (k per token)       | b d (gathered input) + 4 b h_e       |
|                                             | + b d (expert output, before combine)|
|   shared expert                             | b d + 4 b h_e                        |
| final RMSNorm input, lm_head input          | r d + b d                            |
| logits, their fp32 copy, log-softmax        | V (b + 4 [if b = 2] + 4)             |

An upper bound rather than an exact count: the prediction sums all of it (`total_bytes`), while
the real peak is reached early in the backward, when the last layers' activations are already
freed but the first gradients exist; allocator caching and fragmentation push the other way. On
the CPU the measured peak is the process's resident set size, which also holds the Python
interpreter and the torch libraries (a few hundred MB), so only the GPU comparison is tight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanigpt.io import read_json
from nanigpt.model.config import GPTConfig
from nanigpt.model.flops import count

FP32 = 4
ADAMW_STATES = 2  # exp_avg, exp_avg_sq
RESIDUAL_BYTES = 4  # the residual stream stays fp32 under autocast
MATMUL_COMPONENTS = (
    "attention_proj",
    "mlp",
    "experts",
    "shared_expert",
    "router",
)  # autocast casts these weights (and lm_head: the "embedding" output table) to bf16
SHARDING = {  # strategy -> which of params/grads/optimizer the fsdp dim divides
    "single": (),
    "ddp_builtin": (),
    "ddp_manual": (),
    "zero1": ("optimizer",),
    "zero2": ("optimizer", "grads"),
    "fsdp2": ("optimizer", "grads", "params"),
    "tp_manual": (),
    "tp_dtensor": (),
    "ep": (),
    "fsdp2_tp": ("optimizer", "grads", "params"),
    "fsdp2_ep": ("optimizer", "grads", "params"),
}


@dataclass
class MemoryPrediction:
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    weight_copies_bytes: int
    activations_bytes: int  # blocks + final norm/head input + logits
    logits_bytes: int
    activations_by_layer: list[dict[str, Any]]
    local_batch: int
    seq_len: int
    compute_dtype: str
    strategy: str
    param_count_local: float  # parameters this rank holds (after tp/ep/fsdp division)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return (
            self.params_bytes
            + self.grads_bytes
            + self.optimizer_bytes
            + self.weight_copies_bytes
            + self.activations_bytes
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def _parallel(parallelism: dict[str, Any] | None) -> dict[str, Any]:
    from nanigpt.parallel.setting import ParallelSetting

    setting = ParallelSetting.from_dict(parallelism or {})
    return setting.as_dict() | {"data_parallel_size": setting.data_parallel_size}


def layer_activation_bytes(
    cfg: GPTConfig, layer: int, tokens: int, b: int, autocast: bool, tp: int
) -> int:
    """Bytes one layer saves for backward for `tokens` tokens (the table in the module docstring)."""
    d, h, a = cfg.d_model, cfg.mlp_hidden, cfg.n_head
    r = RESIDUAL_BYTES
    attn = (
        r * d
        + (3 if autocast else 1) * b * d
        + (FP32 * 2 * d + 3 * b * d + b * d + FP32 * a + b * d) / tp
    )
    if layer in cfg.moe_layers:
        moe = cfg.moe
        he = moe.expert_hidden(h)
        k, n_experts = moe.active_experts, moe.num_routed_experts
        routed = b * d + 4 * b * he + b * d
        mlp = r * d + b * d + FP32 * n_experts + k * routed
        if moe.shared_expert:
            mlp += b * d + 4 * b * he
    else:
        mlp = r * d + (2 if autocast else 1) * b * d + 4 * b * h / tp
    return int(round(tokens * (attn + mlp)))


def predict(
    model: GPTConfig | dict[str, Any],
    batch_size: int,
    seq_len: int,
    parallelism: dict[str, Any] | None = None,
    compute_dtype: str = "bf16",
) -> MemoryPrediction:
    """Predicted per-rank footprint; `batch_size` is the global micro-batch (split over data ranks)."""
    cfg = model if isinstance(model, GPTConfig) else GPTConfig.from_dict(model)
    if compute_dtype not in ("bf16", "fp32"):
        raise ValueError(f"compute_dtype={compute_dtype!r}: expected bf16 or fp32")
    par = _parallel(parallelism)
    strategy, tp, ep, fsdp = par["strategy"], par["tp"], par["ep"], par["fsdp"]
    autocast = compute_dtype == "bf16"
    b = 2 if autocast else 4
    notes = []

    by_component = count(cfg).params.by_component
    local = dict(by_component)
    for name in ("attention_proj", "mlp"):
        local[name] = by_component[name] / tp
    local["experts"] = by_component["experts"] / ep
    local_params = sum(local.values())
    sharded = SHARDING.get(strategy, ())
    divide = {kind: (fsdp if kind in sharded else 1) for kind in ("params", "grads", "optimizer")}

    params_bytes = FP32 * local_params / divide["params"]
    grads_bytes = FP32 * local_params / divide["grads"]
    optimizer_bytes = ADAMW_STATES * FP32 * local_params / divide["optimizer"]
    if strategy in ("zero1", "zero2"):
        optimizer_bytes += FP32 * local_params / fsdp  # the fp32 slice the optimizer updates
        notes.append("ZeRO keeps an fp32 copy of its parameter slice: counted with the optimizer")
    matmul_params = sum(local[name] for name in MATMUL_COMPONENTS) + cfg.vocab_size * cfg.d_model
    weight_copies = 2 * matmul_params / divide["params"] if autocast else 0

    data_ranks = par["data_parallel_size"]
    if batch_size % data_ranks:
        notes.append(f"batch {batch_size} does not split evenly over {data_ranks} data ranks")
    local_batch = max(1, batch_size // data_ranks)
    tokens = local_batch * seq_len
    rows = [
        {
            "layer": f"block {i}",
            "kind": "moe" if i in cfg.moe_layers else "dense",
            "bytes": layer_activation_bytes(cfg, i, tokens, b, autocast, tp),
        }
        for i in range(cfg.n_layer)
    ]
    V, d = cfg.vocab_size, cfg.d_model
    head_inputs = tokens * (RESIDUAL_BYTES * d + b * d) + tokens * 8  # + the int64 targets
    logits = tokens * V * (b + (FP32 if b != FP32 else 0) + FP32)
    rows.append({"layer": "final norm + head", "kind": "head", "bytes": int(head_inputs)})
    rows.append({"layer": "logits + loss", "kind": "logits", "bytes": int(logits)})
    return MemoryPrediction(
        params_bytes=int(round(params_bytes)),
        grads_bytes=int(round(grads_bytes)),
        optimizer_bytes=int(round(optimizer_bytes)),
        weight_copies_bytes=int(round(weight_copies)),
        activations_bytes=sum(row["bytes"] for row in rows),
        logits_bytes=int(logits),
        activations_by_layer=rows,
        local_batch=local_batch,
        seq_len=seq_len,
        compute_dtype=compute_dtype,
        strategy=strategy,
        param_count_local=local_params / divide["params"],
        notes=notes,
    )


def predict_run(run: dict[str, Any], device_type: str) -> MemoryPrediction:
    """The prediction for a run config (docs/interfaces.md) trained on `device_type` (cpu | cuda)."""
    t = run["training"]
    return predict(
        run["model"],
        batch_size=t["batch_size"],
        seq_len=t["seq_len"],
        parallelism=run.get("parallelism"),
        compute_dtype="bf16" if device_type == "cuda" else "fp32",
    )


def measured_peak(run_dir: str | Path) -> int | None:
    """The run's measured peak (summary.json's, else metrics.parquet's max); None when absent."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        value = read_json(summary_path, "run summary").get("peak_memory_bytes")
        if value is not None:
            return int(value)
    metrics_path = run_dir / "metrics.parquet"
    if metrics_path.exists():
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(metrics_path)
        if "peak_memory_bytes" in table.column_names:
            value = pc.max(table["peak_memory_bytes"]).as_py()
            return None if value is None else int(value)
    return None


def compare(prediction: MemoryPrediction, measured_bytes: int | None, device_type: str) -> dict:
    """Predicted components beside the measured peak, with their ratio."""
    predicted = prediction.as_dict()
    ratio = (
        measured_bytes / prediction.total_bytes
        if measured_bytes and prediction.total_bytes
        else None
    )
    measured_what = (
        "torch.cuda.max_memory_allocated"
        if device_type == "cuda"
        else "process peak RSS (includes the Python interpreter and torch libraries)"
    )
    return {
        "predicted": predicted,
        "predicted_total_bytes": prediction.total_bytes,
        "measured_peak_bytes": measured_bytes,
        "measured_what": measured_what,
        "measured_over_predicted": ratio,
        "device_type": device_type,
    }
