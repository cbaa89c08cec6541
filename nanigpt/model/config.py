"""The settings of a model, without torch: what a run's `model` section means, and its defaults.

Serves every question that names a model by its settings (sizes, MoE routing, kernels): planning
(`nanigpt.graph.config`, the Snakefile) and `nanigpt.training.config` read these classes without importing
torch, and `nanigpt.model.gpt` / `nanigpt.model.moe` build the modules from them. The defaults here
are the only ones: the workflow schema leaves these keys to them (see `nanigpt.training.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from nanigpt.keys import check_keys

MLP_MULTIPLE = 8  # the MLP width is rounded to a multiple of this (tensor-core friendly shapes)

KERNELS = ("rms_norm", "rope", "swiglu", "cross_entropy")
IMPLS = ("torch", "triton")  # kernel implementations (nanigpt.kernels)


def resolve_kernels(setting: str | dict) -> dict[str, str]:
    """`model.kernels` -> {kernel: "torch" | "triton"} for every kernel in KERNELS.

    The setting is one implementation for all ("torch" or "triton") or a mapping of some kernels
    to one; a kernel the mapping leaves out uses "torch".
    """
    if isinstance(setting, str):
        if setting not in IMPLS:
            raise ValueError(
                f"model.kernels={setting!r}: expected one of {list(IMPLS)} or a mapping"
            )
        return dict.fromkeys(KERNELS, setting)
    if not isinstance(setting, dict):
        raise ValueError(f"model.kernels={setting!r}: expected one of {list(IMPLS)} or a mapping")
    unknown = sorted(set(setting) - set(KERNELS))
    if unknown:
        raise ValueError(
            f"model.kernels: unknown kernel(s) {unknown}; expected among {list(KERNELS)}"
        )
    for name, impl in setting.items():
        if impl not in IMPLS:
            raise ValueError(f"model.kernels.{name}={impl!r}: expected one of {list(IMPLS)}")
    return {name: setting.get(name, "torch") for name in KERNELS}


# `model.attention_backend`: "auto" lets SDPA pick; the others pin one kernel family
# (torch.nn.attention.SDPBackend), chosen per device by measurement (nanigpt.bench.throughput).
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
# `model.precision`: the matmuls' number format on the GPU. "bf16" is autocast's; "fp8" runs every
# Linear through torchao's float8 training (rowwise scaling), "fp8_lm_head" only the output layer
# (as modded-nanogpt does); nanigpt.model.fp8 says where each can run.
PRECISIONS = ("bf16", "fp8", "fp8_lm_head")

GATES = ("switch", "renorm", "sigmoid")
DEFAULT_NUM_EXPERTS = 4  # an arch of kind moe that names no num_experts (workflow config)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    top_k: int = 1
    capacity_factor: float | None = 1.25  # None = dropless
    aux_loss_weight: float = 0.01  # Switch uses 1e-2
    z_loss_weight: float = 0.001  # ST-MoE uses 1e-3
    every: int = 1  # layer i is MoE when (i + 1) % every == 0
    shared_expert: bool = False
    granularity: int = 1
    gate: str = "renorm"  # "switch" | "renorm" | "sigmoid" (see the module docstring)
    bias_update_rate: float = 0.001  # sigmoid gate's aux-loss-free balancing (DeepSeek-V3 gamma)
    eval_capacity_factor: float | None = None  # capacity outside training; None = dropless
    dense_layers: int = 0  # the first this many layers keep the dense MLP

    def __post_init__(self) -> None:
        def bad(key: str, value: object, expected: str) -> ValueError:
            return ValueError(f"model.moe.{key}={value!r}: expected {expected}")

        for key in ("num_experts", "top_k", "every", "granularity"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, value, "an integer >= 1")
        if self.top_k > self.num_experts:
            raise bad(
                "top_k",
                self.top_k,
                f"at most num_experts={self.num_experts} (a token cannot pick more experts than exist)",
            )
        for key in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, key)
            if value is not None and not (_is_number(value) and value > 0):
                raise bad(key, value, "a number > 0, or null for dropless")
        if self.gate not in GATES:
            raise bad("gate", self.gate, f"one of {', '.join(GATES)}")
        if not isinstance(self.dense_layers, int) or isinstance(self.dense_layers, bool):
            raise bad("dense_layers", self.dense_layers, "an integer >= 0")
        if self.dense_layers < 0:
            raise bad("dense_layers", self.dense_layers, "an integer >= 0")
        for key in ("aux_loss_weight", "z_loss_weight", "bias_update_rate"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or value < 0:
                raise bad(key, value, "a number >= 0")
        if not isinstance(self.shared_expert, bool):
            raise bad("shared_expert", self.shared_expert, "true or false")

    @property
    def num_routed_experts(self) -> int:
        """Experts the router chooses among: num_experts * granularity."""
        return self.num_experts * self.granularity

    @property
    def active_experts(self) -> int:
        """Routed experts each token uses: top_k * granularity."""
        return self.top_k * self.granularity

    def expert_hidden(self, dense_hidden: int) -> int:
        """Width of one routed (and of the shared) expert: the dense MLP width / granularity."""
        if dense_hidden % self.granularity:
            raise ValueError(
                f"model.moe.granularity={self.granularity}: the dense MLP width {dense_hidden} is not "
                f"divisible by it; expected a granularity dividing {dense_hidden}"
            )
        return dense_hidden // self.granularity


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    seq_len: int
    n_layer: int
    d_model: int
    n_head: int
    # SwiGLU hidden width / d_model, taken as is (8/3 would match the parameters of a 4x GELU MLP;
    # the study's sizes use 4).
    mlp_ratio: float = 4
    # Untied by default (the study's configs tie explicitly): tests/test_model.py's initial-loss
    # contract relies on it (a tied tiny-vocabulary model starts far from uniform predictions).
    tied_embeddings: bool = False
    moe: MoEConfig | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    kernels: str | dict = "torch"  # "torch" | "triton" | {kernel: impl} (nanigpt.kernels.KERNELS)
    # Speed options (issue 30); the defaults keep the reference model, and tests hold each option
    # equal to it (tests/test_fused_model.py). One QKV matmul and one gate-up matmul instead of 3 + 2
    # (the same parameters concatenated; `nanigpt.model.gpt.fuse_state_dict` maps between them):
    fused_projections: bool = False
    # RoPE on the projections' [batch, time, heads, head_dim] layout (no transpose copy) and RMSNorm
    # written as plain fp32 arithmetic, so Inductor fuses both with their neighbours:
    fusable_rope_norm: bool = False
    attention_backend: str = "auto"  # ATTENTION_BACKENDS
    precision: str = "bf16"  # PRECISIONS

    def __post_init__(self) -> None:
        for key in ("vocab_size", "seq_len", "n_layer", "d_model", "n_head"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{key}={value!r}: expected an integer >= 1")
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model={self.d_model}: not divisible by n_head={self.n_head}; expected a "
                f"width that splits into equal heads"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"model.d_model={self.d_model}, n_head={self.n_head}: head dim {self.head_dim} is "
                f"odd; rotary embeddings need an even head dim"
            )
        if not isinstance(self.mlp_ratio, int | float) or not self.mlp_ratio > 0:
            raise ValueError(f"model.mlp_ratio={self.mlp_ratio!r}: expected a number > 0")
        if not isinstance(self.tied_embeddings, bool):
            raise ValueError(
                f"model.tied_embeddings={self.tied_embeddings!r}: expected true or false"
            )
        _ = self.kernel_impls  # refuses an unknown kernel or implementation
        for key in ("fused_projections", "fusable_rope_norm"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"model.{key}={getattr(self, key)!r}: expected true or false")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"model.attention_backend={self.attention_backend!r}: expected one of "
                f"{list(ATTENTION_BACKENDS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"model.precision={self.precision!r}: expected one of {list(PRECISIONS)}"
            )
        if self.precision != "bf16" and self.kernel_impls["cross_entropy"] == "triton":
            raise ValueError(
                f"model.precision={self.precision!r} with kernels.cross_entropy=triton: the fused "
                f"loss reads lm_head's weight itself, so it cannot run in fp8; expected "
                f"precision bf16 or the torch cross-entropy"
            )
        if self.fused_projections and self.kernel_impls["swiglu"] == "triton":
            raise ValueError(
                "model.fused_projections=true with kernels.swiglu=triton: the Triton SwiGLU reads "
                "gate and up as separate tensors, so the fused gate-up output would be copied "
                "apart again; expected kernels.swiglu=torch (Inductor fuses silu(g) * u itself)"
            )
        if self.moe is not None:
            if not self.moe_layers:
                raise ValueError(
                    f"model.moe.every={self.moe.every}, dense_layers={self.moe.dense_layers}: no "
                    f"MoE layer among n_layer={self.n_layer} (layer i >= dense_layers is MoE when "
                    f"(i + 1) % every == 0); expected fewer dense layers or a smaller every"
                )
            self.moe.expert_hidden(self.mlp_hidden)  # refuses a granularity that does not divide

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build from a run's `model` dict; unknown or missing keys fail with the key named."""
        check_keys(d, [f.name for f in fields(cls)], "model")
        required = ("vocab_size", "seq_len", "n_layer", "d_model", "n_head")
        missing = [key for key in required if key not in d]
        if missing:
            raise ValueError(f"model: missing key(s) {missing}")
        d = dict(d)
        moe = d.get("moe")
        if isinstance(moe, dict):
            check_keys(moe, [f.name for f in fields(MoEConfig)], "model.moe")
            if "num_experts" not in moe:
                raise ValueError("model.moe: missing key 'num_experts'")
            d["moe"] = MoEConfig(**moe)
        elif moe is not None and not isinstance(moe, MoEConfig):
            raise ValueError(f"model.moe={moe!r}: expected null or a mapping")
        return cls(**d)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """Dense SwiGLU width: mlp_ratio * d_model rounded to the nearest multiple of 8 (>= 8)."""
        return max(MLP_MULTIPLE, MLP_MULTIPLE * round(self.mlp_ratio * self.d_model / MLP_MULTIPLE))

    @property
    def kernel_impls(self) -> dict[str, str]:
        """{kernel: "torch" | "triton"} for every kernel of `nanigpt.kernels`."""
        return resolve_kernels(self.kernels)

    @property
    def reference_layout_refusal(self) -> str | None:
        """Why the model is not in the reference layout (separate wq, wk, wv, w_gate, w_up; torch
        kernels; bf16 matmuls), or None. Code that reads those weights by name (tensor
        parallelism, stacked replicas) asks this instead of meeting a missing weight later."""
        if any(impl != "torch" for impl in self.kernel_impls.values()):
            return f"model.kernels={self.kernels!r} (expected torch)"
        if self.fused_projections:
            return "model.fused_projections=true (expected false)"
        if self.precision != "bf16":
            return f"model.precision={self.precision!r} (expected bf16)"
        return None

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the layers whose MLP is an MoE: every `every`-th, counting from 1, past the
        first `dense_layers` (which keep the dense MLP, as DeepSeekMoE's first layer)."""
        if self.moe is None:
            return ()
        moe = self.moe
        return tuple(i for i in range(moe.dense_layers, self.n_layer) if (i + 1) % moe.every == 0)


def moe_defaults() -> dict[str, Any]:
    """The MoE layer's settings of an arch of kind moe that names none (MoEConfig's defaults)."""
    return {
        "num_experts": DEFAULT_NUM_EXPERTS,
        **{f.name: f.default for f in fields(MoEConfig) if f.name != "num_experts"},
    }


def model_default(key: str) -> Any:
    """GPTConfig's default of `key` (`mlp_ratio`, `tied_embeddings`, ...)."""
    return next(f.default for f in fields(GPTConfig) if f.name == key)
