"""Dense and MoE GPTs and their exact parameter and FLOP accounting (core question 3).

`config` holds the settings of a model (no torch: planning reads them), `gpt` the model, `moe` the
MoE MLP that replaces the dense one, `flops` the count every trainer, MFU and scaling computation
uses. The torch-backed names load lazily, so that importing the settings does not import torch and
`python -m nanigpt.model.flops` runs the module once.
"""

from typing import Any

from nanigpt.model.config import GPTConfig, MoEConfig

_LAZY = {
    "GPT": "gpt",
    "ModelOutput": "gpt",
    "MoE": "moe",
    **dict.fromkeys(("Accounting", "Params", "count", "flops_6nd"), "flops"),
}

__all__ = ["GPTConfig", "MoEConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"nanigpt.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'nanigpt.model' has no attribute {name!r}")
