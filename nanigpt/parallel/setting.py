"""The parallelism setting of a run, without torch: how the world is cut, and whether it can run.

Serves core question 2: one setting `{"dp", "fsdp", "tp", "ep", "strategy"}` names how the world is
cut (`nanigpt.parallel.mesh` builds the device mesh from it). It lives apart from the mesh so that
planning (`nanigpt.graph.config`) and `nanigpt.training.config` can read and check it without importing torch.
It is the one home of the parallel dims, their order and the world size (`world_size`): the
launcher, the planner, the rules' resources and `scripts/gpu_session.py` ask it (torchtitan's
`ParallelDims` owns the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nanigpt.keys import check_keys
from nanigpt.model.config import GPTConfig

# The parallel dims, in the order the device mesh lays them out (outermost first).
DIMS = ("dp", "fsdp", "ep", "tp")


def world_size(parallelism: Mapping[str, Any]) -> int:
    """Number of processes a parallelism setting needs: dp * fsdp * ep * tp (a missing dim is 1)."""
    n = 1
    for dim in DIMS:
        n *= parallelism.get(dim, 1)
    return n


# strategy -> (dims it may use beyond 1, what it is)
STRATEGIES: dict[str, tuple[tuple[str, ...], str]] = {
    "single": ((), "one process, no collectives"),
    "ddp_builtin": (("dp",), "torch DistributedDataParallel"),
    "ddp_manual": (("dp",), "hand-written bucketed DDP, all-reduce fired from backward hooks"),
    "zero1": (("fsdp",), "hand-written ZeRO-1: optimizer state sharded"),
    "zero2": (("fsdp",), "hand-written ZeRO-2: optimizer state and gradients sharded"),
    "fsdp2": (("fsdp",), "torch FSDP2 fully_shard (ZeRO-3)"),
    "tp_manual": (("tp",), "hand-written Megatron tensor parallel"),
    "tp_dtensor": (("tp",), "DTensor parallelize_module tensor parallel"),
    "ep": (("dp", "ep"), "expert parallel (all_to_all dispatch); non-expert weights DDP"),
    "fsdp2_tp": (("fsdp", "tp"), "FSDP2 x DTensor TP on a 2-D mesh"),
    "fsdp2_ep": (("fsdp", "ep"), "FSDP2 x expert parallel on a 2-D mesh"),
}


@dataclass(frozen=True)
class ParallelSetting:
    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    ep: int = 1
    strategy: str = "single"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParallelSetting:
        """From a run's `parallelism` dict; a missing `strategy` gets `default_strategy`."""
        check_keys(d, [*DIMS, "strategy"], "parallelism")
        sizes = {}
        for key in DIMS:
            value = d.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"parallelism.{key}={value!r}: expected an integer >= 1")
            sizes[key] = value
        strategy = d.get("strategy") or default_strategy(**sizes)
        if strategy not in STRATEGIES:
            raise ValueError(
                f"parallelism.strategy={strategy!r}: expected one of {sorted(STRATEGIES)}"
            )
        return cls(**sizes, strategy=strategy)

    @property
    def world_size(self) -> int:
        return world_size(self.as_dict())

    @property
    def data_parallel_size(self) -> int:
        """How many different data shards one global batch is split into."""
        return self.dp * self.fsdp * self.ep

    def as_dict(self) -> dict[str, Any]:
        return {
            "dp": self.dp,
            "fsdp": self.fsdp,
            "tp": self.tp,
            "ep": self.ep,
            "strategy": self.strategy,
        }


def default_strategy(dp: int = 1, fsdp: int = 1, tp: int = 1, ep: int = 1) -> str:
    """The strategy a setting without a `strategy` key gets: PyTorch's built-in where there is one."""
    if tp > 1:
        return "fsdp2_tp" if fsdp > 1 else "tp_dtensor"
    if ep > 1:
        return "fsdp2_ep" if fsdp > 1 else "ep"
    if fsdp > 1:
        return "fsdp2"
    if dp > 1:
        return "ddp_builtin"
    return "single"


def validate_parallelism(
    setting: dict[str, Any] | ParallelSetting,
    model_cfg: dict[str, Any] | Any,
    world_size: int | None = None,
    batch_size: int | None = None,
) -> ParallelSetting:
    """Refuse a setting that cannot run, naming the key, the value and what was expected.

    Checks: known strategy using only its dims; product of sizes == world_size (when given); tp
    divides n_head and the MLP width; ep divides the routed expert count (and needs an MoE);
    the batch splits evenly over the data-parallel ranks.
    """
    s = setting if isinstance(setting, ParallelSetting) else ParallelSetting.from_dict(setting)
    cfg = model_cfg if isinstance(model_cfg, GPTConfig) else GPTConfig.from_dict(model_cfg)
    where = f"parallelism {s.as_dict()}"
    if world_size is not None and s.world_size != world_size:
        raise ValueError(
            f"{where}: dp*fsdp*tp*ep = {s.world_size} != world size {world_size}; expected the "
            f"product of the sizes to equal the number of processes"
        )
    allowed = STRATEGIES[s.strategy][0]
    for dim in DIMS:
        if getattr(s, dim) > 1 and dim not in allowed:
            raise ValueError(
                f"{where}: strategy {s.strategy!r} does not use {dim}={getattr(s, dim)}; expected "
                f"{dim}=1, or a strategy using {dim} (dims it uses: {list(allowed) or 'none'})"
            )
    if s.tp > 1:
        if cfg.n_head % s.tp:
            raise ValueError(
                f"{where}: tp={s.tp} does not divide model.n_head={cfg.n_head}; expected a tp "
                f"among {[d for d in range(1, cfg.n_head + 1) if cfg.n_head % d == 0]}"
            )
        if cfg.mlp_hidden % s.tp:
            raise ValueError(f"{where}: tp={s.tp} does not divide the MLP width {cfg.mlp_hidden}")
        if cfg.fused_projections:
            raise ValueError(
                f"{where}: tp={s.tp} shards wq, wk, wv, w_gate, w_up by name; expected "
                f"model.fused_projections=false"
            )
    if s.ep > 1:
        if cfg.moe is None:
            raise ValueError(f"{where}: ep={s.ep} but the model is dense; expected ep=1")
        experts = cfg.moe.num_routed_experts
        if experts % s.ep:
            raise ValueError(
                f"{where}: ep={s.ep} does not divide the {experts} routed experts "
                f"(model.moe.num_experts * granularity); expected a divisor of {experts}"
            )
    if batch_size is not None and batch_size % s.data_parallel_size:
        raise ValueError(
            f"{where}: training.batch_size={batch_size} is not divisible by the "
            f"{s.data_parallel_size} data-parallel ranks (dp*fsdp*ep)"
        )
    return s
