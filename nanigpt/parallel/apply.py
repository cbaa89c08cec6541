"""One entry the trainer calls: validate a parallelism setting, then apply it to a built model.

Serves core question 2 (how strategies compose): `validate_parallelism` refuses a bad setting before
any process starts; `parallelize(model, setting, mesh)` returns a `Parallelized` whose methods are
all the trainer needs, whatever the strategy:

    par = parallelize(model, run["parallelism"], mesh, ledger)
    opt = par.make_optimizer(lr=..., weight_decay=...)
    for micro in range(accum):
        x, y = par.local_batch(*loader.next_batch())       # this rank's rows of the global batch
        with par.no_sync() if micro < accum - 1 else nullcontext():
            out = par.model(x, y); ((out.loss + out.aux_loss) / accum).backward()
    par.sync_grads(); par.clip_grad_norm_(clip); opt.step(); opt.zero_grad(); par.end_step()
    loss_for_logging = par.mean_over_data(out.loss)

`parallelize` applies a strategy as steps keyed by degree, tensor parallel, then expert parallel,
then data parallel (torchtitan's `parallelize_llama`), each plugging into the model's seams rather
than replacing its forwards. Every rank must build the model with the same seed (the hand-written
strategies slice, not broadcast, the initial weights).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from nanigpt.parallel.ledger import Ledger
from nanigpt.parallel.mesh import data_rank
from nanigpt.parallel.setting import DIMS, ParallelSetting, validate_parallelism


@dataclass
class Parallelized:
    model: nn.Module
    setting: ParallelSetting
    mesh: Any
    ledger: Ledger
    data_rank: int = 0
    data_world: int = 1
    ddp: list = field(default_factory=list)  # ManualDDP instances whose finish() ends backward
    zero: Any = None
    # param name -> {mesh dim: the tensor dim it is sliced along}, for weights sliced by hand
    # (manual TP, EP); iterating a value gives the mesh dims. DTensors carry their own placements.
    sharded_dims: dict[str, dict[str, int]] = field(default_factory=dict)
    intercept_names: dict[str, str] = field(default_factory=dict)
    intercepting: bool = False
    expected: dict[str, int] = field(default_factory=dict)  # analytic bytes per step by op
    _param_names: dict[int, str] = field(default_factory=dict)

    # --- data ---
    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's contiguous rows of the global batch (tp ranks share theirs)."""
        if self.data_world == 1:
            return x, y
        rows = x.shape[0] // self.data_world
        sl = slice(self.data_rank * rows, (self.data_rank + 1) * rows)
        return x[sl], y[sl]

    # --- optimizer ---
    def make_optimizer(
        self,
        lr: float,
        weight_decay: float,
        betas=(0.9, 0.95),
        eps: float = 1e-8,
        fused: bool | None = None,
    ):
        """AdamW, decay on matrices only (as the trainer); ZeRO returns its sharded optimizer."""
        if self.zero is not None:
            for g in self.zero.param_groups:
                g["lr"] = lr
                if g["kind"] == "decay":
                    g["weight_decay"] = weight_decay
            return self.zero
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        kwargs = {"fused": fused} if fused is not None else {}
        # No parameter can be a DTensor unless that module was loaded (importing it costs 0.8 s)
        dtensor = sys.modules.get("torch.distributed.tensor")
        dtensors = sum(isinstance(p, dtensor.DTensor) for p in params) if dtensor else 0
        if 0 < dtensors < len(params):
            # DTensor parallelize_module shards some parameters and leaves norms and embeddings
            # plain: multi-tensor (foreach/fused) kernels refuse the mix, so update one at a time.
            kwargs = {"foreach": False, "fused": False}
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)

    # --- the step ---
    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Gradient accumulation without communication (the last micro-batch leaves it)."""
        with contextlib.ExitStack() as stack:
            for d in self.ddp:
                stack.enter_context(d.no_sync())
            if self.zero is not None:
                stack.enter_context(self.zero.no_sync())
            if hasattr(self.model, "no_sync"):
                stack.enter_context(self.model.no_sync())
            if self.setting.strategy.startswith("fsdp2"):
                self.model.set_requires_gradient_sync(False)
                stack.callback(self.model.set_requires_gradient_sync, True)
            yield

    def forward_context(self):
        """Where library collectives are recorded (FSDP2, DTensor); wrap forward and backward in it."""
        if self.intercepting:
            return self.ledger.intercept(self.intercept_names)
        return contextlib.nullcontext()

    def sync_grads(self) -> None:
        for d in self.ddp:
            d.finish()
        if self.zero is not None:
            self.zero.finish()

    def clip_grad_norm_(self, max_norm: float | None) -> torch.Tensor:
        """Clip to the global norm; each shard counted once (one scalar all_reduce if sharded)."""
        if self.zero is not None:
            return self.zero.clip_grad_norm_(max_norm if max_norm else float("inf"))
        from torch.distributed.tensor import DTensor

        world = dist.get_world_size() if dist.is_initialized() else 1
        sizes = {d: getattr(self.setting, d) for d in DIMS}
        grads, total, sharded = [], None, False
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad
            distinct = 1
            if isinstance(g, DTensor):
                for dim_size, pl in zip(g.device_mesh.mesh.shape, g.placements, strict=True):
                    if not pl.is_replicate():  # Shard, and FSDP-over-TP's _StridedShard
                        distinct *= dim_size
                g = g.to_local()
            for dim in self.sharded_dims.get(_clean(name), ()):
                distinct *= sizes[dim]
            sharded = sharded or distinct > 1
            sq = g.detach().double().square().sum() * (distinct / world)
            total = sq if total is None else total + sq
            grads.append(p.grad)
        if total is None:
            return torch.zeros(())
        total = total.reshape(1)
        if sharded and world > 1:
            self.ledger.all_reduce(total, purpose="grad_norm")
        else:
            total = total * world  # every rank holds the same gradients: no communication
        norm = total.sqrt()[0].float()
        if max_norm and not any(isinstance(g, DTensor) for g in grads):
            # On the device, no host sync; float64 like the host arithmetic below, and a factor
            # of exactly 1 when not clipping, so the gradients are the same bit for bit.
            coef = (max_norm / (norm.double() + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef)
        elif max_norm:
            coef = max_norm / (float(norm) + 1e-6)
            if coef < 1:
                for g in grads:
                    g.mul_(coef)
        return norm

    def end_step(self) -> None:
        self.ledger.end_step()

    def mean_over_data(self, value: torch.Tensor | float) -> float:
        """Mean of a per-rank scalar (e.g. the loss) over all ranks, for logging."""
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return float(value.detach() if isinstance(value, torch.Tensor) else value)
        value = value.detach() if isinstance(value, torch.Tensor) else value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.ledger.device)
        self.ledger.all_reduce(t, purpose="metric")
        return float(t.item()) / dist.get_world_size()


def _clean(name: str) -> str:
    """Parameter names without wrapper prefixes (torch DDP's module., compile's _orig_mod.)."""
    for prefix in ("module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _group(mesh, dims: tuple[str, ...]):
    """(process group, label) for one mesh dim or the flattened product of several."""
    if len(dims) == 1:
        return mesh[dims[0]].get_group(), dims[0]
    label = "_".join(dims)
    return mesh[dims]._flatten(label).get_group(), label


# strategy -> (tensor-parallel implementation, data-parallel implementation). The dims a strategy
# uses (`setting.STRATEGIES`) and their degrees decide which steps run; these say how.
IMPLEMENTATIONS: dict[str, tuple[str | None, str | None]] = {
    "single": (None, None),
    "ddp_builtin": (None, "ddp_builtin"),
    "ddp_manual": (None, "ddp_manual"),
    "zero1": (None, "zero1"),
    "zero2": (None, "zero2"),
    "fsdp2": (None, "fsdp2"),
    "tp_manual": ("manual", None),
    "tp_dtensor": ("dtensor", None),
    "ep": (None, "ddp_manual"),
    "fsdp2_tp": ("dtensor", "fsdp2"),
    "fsdp2_ep": (None, "fsdp2"),
}


def parallelize(
    model: nn.Module,
    setting: dict[str, Any] | ParallelSetting,
    mesh,
    ledger: Ledger | None = None,
    bucket_bytes: int | None = None,
) -> Parallelized:
    """Apply `setting` to a built (same-seed) model on `mesh`; see the module docstring for use.

    Steps keyed by degree, in torchtitan's order (`parallelize_llama`): tensor parallel when tp > 1,
    expert parallel when ep > 1, then data parallel (DDP, ZeRO or FSDP2) over the data ranks; the
    strategy name picks each step's implementation (`IMPLEMENTATIONS`). A step that shards weights
    by hand records them in `Parallelized.sharded_dims`, the one record of what is sliced where.
    """
    from nanigpt.parallel.ddp import DEFAULT_BUCKET_BYTES

    s = validate_parallelism(
        setting, model.cfg, world_size=dist.get_world_size() if dist.is_initialized() else 1
    )
    ledger = ledger or Ledger(_device(model))
    par = Parallelized(model, s, mesh, ledger, data_rank(mesh), s.data_parallel_size)
    if s.world_size == 1:
        return par
    # label every process group of the mesh, for the ledger's interception of library collectives
    for d in DIMS:
        par.intercept_names[mesh[d].get_group().group_name] = d
    par.intercept_names[dist.group.WORLD.group_name] = "world"
    _sum_router_loads_over_ranks(model)
    tp_impl, data_impl = IMPLEMENTATIONS[s.strategy]
    if s.tp > 1:
        _tensor_parallel(par, tp_impl)
    if s.ep > 1:
        _expert_parallel(par)
    if s.data_parallel_size > 1 and data_impl is not None:
        _data_parallel(par, data_impl, bucket_bytes or DEFAULT_BUCKET_BYTES)
    return par


def _sum_router_loads_over_ranks(model: nn.Module) -> None:
    """Aux-loss-free balancing moves each expert's bias by the load of the whole step, summed over
    every rank (`MoE.update_bias`): each MoE layer's load reduction is an all_reduce over the
    world."""
    from nanigpt.model.moe import MoE

    for module in model.modules():
        if isinstance(module, MoE):
            module.load_reduction = dist.all_reduce


def _tensor_parallel(par: Parallelized, impl: str) -> None:
    """Megatron TP over the `tp` dim: by hand (`tp_manual`) or through DTensor."""
    from nanigpt.parallel.tensor import apply_dtensor_tp, apply_manual_tp

    if impl == "manual":
        sharded = apply_manual_tp(par.model, par.mesh["tp"].get_group(), par.ledger)
        for name, axis in sharded.items():
            par.sharded_dims.setdefault(name, {})["tp"] = axis
    else:  # DTensor parameters carry their own placements
        apply_dtensor_tp(par.model, par.mesh["tp"])
        par.intercepting = True


def _expert_parallel(par: Parallelized) -> None:
    """Experts sliced over the `ep` dim, tokens exchanged by the all-to-all dispatcher."""
    from nanigpt.parallel.expert import apply_ep

    ep_group, _ = _group(par.mesh, ("ep",))
    for name in apply_ep(par.model, ep_group, par.ledger):
        par.sharded_dims.setdefault(name, {})["ep"] = 0


def _data_parallel(par: Parallelized, impl: str, bucket_bytes: int) -> None:
    """Gradients averaged over the data ranks (dp, fsdp and ep) by `impl`. Expert weights, already
    split over ep, are averaged only over their dp (or fsdp) copies."""
    from nanigpt.parallel.ddp import BuiltinDDP, ManualDDP

    model, mesh, ledger, s = par.model, par.mesh, par.ledger, par.setting
    experts = {n for n, dims in par.sharded_dims.items() if "ep" in dims}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if impl == "ddp_manual" and experts:
        named = list(model.named_parameters())
        group, label = _group(mesh, ("dp", "ep"))
        others = [p for n, p in named if n not in experts]
        par.ddp.append(ManualDDP(others, group, label, ledger, bucket_bytes))
        if s.dp > 1:
            dp_group, dp_label = _group(mesh, ("dp",))
            expert_params = [p for n, p in named if n in experts]
            par.ddp.append(ManualDDP(expert_params, dp_group, dp_label, ledger, bucket_bytes))
    elif impl == "ddp_manual":
        group, label = _group(mesh, ("dp",))
        par.ddp.append(ManualDDP(list(model.parameters()), group, label, ledger, bucket_bytes))
        par.expected = {"all_reduce": param_bytes}
    elif impl == "ddp_builtin":
        group, label = _group(mesh, ("dp",))
        par.model = BuiltinDDP(model, group, label, ledger, _device(model), bucket_bytes).module
        par.expected = {"all_reduce": param_bytes}
    elif impl in ("zero1", "zero2"):
        from nanigpt.parallel.zero import ZeroOptimizer

        group, label = _group(mesh, ("fsdp",))
        stage = int(impl[-1])
        par.zero = ZeroOptimizer(
            list(model.parameters()), group, label, ledger, stage=stage, bucket_bytes=bucket_bytes
        )
        par.expected = par.zero.expected_bytes()
    elif impl == "fsdp2":
        _fsdp2(par, experts)
    else:  # pragma: no cover - IMPLEMENTATIONS names no other
        raise ValueError(f"parallelism.strategy={s.strategy!r}: not implemented")


def _fsdp2(par: Parallelized, experts: set[str]) -> None:
    """FSDP2 over `fsdp`; with EP, the experts over `fsdp` and the rest over (fsdp, ep)."""
    from nanigpt.parallel.fsdp import apply_fsdp2, expected_bytes

    if experts:
        fsdp_ep = par.mesh["fsdp", "ep"]._flatten("fsdp_ep")
        par.intercept_names[fsdp_ep.get_group().group_name] = "fsdp_ep"
        apply_fsdp2(par.model, fsdp_ep, expert_mesh=par.mesh["fsdp"])
    else:
        if par.setting.tp == 1:  # the prediction is for plain FSDP2
            par.expected = expected_bytes(par.model, par.setting.fsdp)
        apply_fsdp2(par.model, par.mesh["fsdp"])
    par.intercepting = True
