"""FP8 matmuls for training: `model.precision: fp8 | fp8_lm_head` (issue 30, core question 1).

Serves "where does a step's time go?" at its largest share: matmuls (53% of a GPT-2 step on an
H200). Hopper's tensor cores multiply float8 (e4m3) at twice the bf16 rate (NVIDIA H100/H200
datasheet: 1979 against 989 dense TFLOP/s), so a matmul-bound step can go faster if the casts cost
less than the matmuls save. The path is torchao's float8 training (`torchao.float8`,
`convert_to_float8_training`), with the "rowwise" recipe: dynamic scaling with one scale per row of
each operand (e4m3 for inputs, weights and gradients; power-of-two scales), the recipe torchao and
torchtitan recommend for accuracy (torchao float8 README; Micikevicius et al. 2022, "FP8 Formats
for Deep Learning", arXiv 2209.05433, for the formats). `fp8_lm_head` converts the output layer
only, as modded-nanogpt does (its lm_head runs in FP8; the vocabulary projection is 27% of a
GPT-2 124M step's FLOPs).

Every `nn.Linear` whose two dimensions are multiples of 16 (the fp8 GEMM's alignment) becomes a
`Float8Linear` holding the same Parameter, so a tied lm_head stays tied and state dicts keep their
names. The MFU of an fp8 run is still quoted against the bf16 peak (the counted FLOPs do not
change; `nanigpt.model.flops`), so an fp8 speedup shows as MFU above what bf16 reaches.

Where it cannot run (no CUDA GPU, compute capability below 8.9, torchao missing) building the
model fails with one line that says why (`FP8Unavailable`); torchao is imported only here, only
then, so the CPU default never needs it. tests/test_fused_model.py checks the refusal on the CPU
and, on an FP8 GPU, that the fp8 model's loss stays near the bf16 one's.
"""

from __future__ import annotations

import torch
import torch.nn as nn

FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90) have fp8 tensor cores
ALIGN = 16
RECIPE = "rowwise"


class FP8Unavailable(ValueError):
    """model.precision asks for fp8 where it cannot run; the message says why, in one line."""


def fp8_unavailable_reason() -> str | None:
    """None when fp8 training can run in this process, else why not (one line)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU in this process (fp8 matmuls need one of compute capability >= 8.9)"
    index = torch.cuda.current_device()
    capability = torch.cuda.get_device_capability(index)
    if capability < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        return (
            f"{name} has compute capability {capability[0]}.{capability[1]}; fp8 matmuls need "
            f">= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (Ada, Hopper or newer)"
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError as error:
        return f"torchao's float8 training is not importable ({error}); install torchao"
    return None


def fp8_eligible(module: nn.Module) -> bool:
    """A Linear the fp8 GEMM can take: both dimensions multiples of 16."""
    return (
        isinstance(module, nn.Linear)
        and module.in_features % ALIGN == 0
        and module.out_features % ALIGN == 0
    )


def convert_to_fp8(model: nn.Module, lm_head_only: bool) -> list[str]:
    """Swap the model's eligible Linears (or only `lm_head`) for torchao Float8Linears in place;
    return the converted names. Raises FP8Unavailable where fp8 cannot run."""
    precision = "fp8_lm_head" if lm_head_only else "fp8"
    reason = fp8_unavailable_reason()
    if reason is not None:
        raise FP8Unavailable(f"model.precision={precision}: cannot run here: {reason}")
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    converted: list[str] = []

    def keep(module: nn.Module, fqn: str) -> bool:
        chosen = fp8_eligible(module) and (fqn == "lm_head" or not lm_head_only)
        if chosen:
            converted.append(fqn)
        return chosen

    convert_to_float8_training(
        model, module_filter_fn=keep, config=Float8LinearConfig.from_recipe_name(RECIPE)
    )
    if not converted:
        raise FP8Unavailable(
            f"model.precision={precision}: no Linear has both dimensions a multiple of {ALIGN}"
        )
    return list(dict.fromkeys(converted))
