"""Dense and MoE GPTs and their exact parameter and FLOP accounting (core question 3).

`gpt` holds the model, `moe` the MoE MLP that replaces the dense one, `flops` the count every
trainer, MFU and scaling computation uses. The accounting names load lazily, so that
`python -m nanigpt.model.flops` runs the module once.
"""

from typing import Any

from nanigpt.model.gpt import GPT, GPTConfig, ModelOutput
from nanigpt.model.moe import MoE, MoEConfig

_FLOPS_NAMES = ("Accounting", "Params", "count", "flops_6nd")

__all__ = ["GPT", "GPTConfig", "ModelOutput", "MoE", "MoEConfig", *_FLOPS_NAMES]


def __getattr__(name: str) -> Any:
    if name in _FLOPS_NAMES:
        from nanigpt.model import flops

        return getattr(flops, name)
    raise AttributeError(f"module 'nanigpt.model' has no attribute {name!r}")
