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

Every rank must build the model with the same seed (the hand-written strategies slice, not
broadcast, the initial weights).
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
from nanigpt.parallel.mesh import DIMS, ParallelSetting, data_rank
from nanigpt.parallel.setting import validate_parallelism  # noqa: F401 (re-exported)


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
    sharded_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)  # param name -> dims
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


def _group(mesh, dims: tuple[str, ...]):
    """(process group, label) for one mesh dim or the flattened product of several."""
    if len(dims) == 1:
        return mesh[dims[0]].get_group(), dims[0]
    label = "_".join(dims)
    return mesh[dims]._flatten(label).get_group(), label


def parallelize(
    model: nn.Module,
    setting: dict[str, Any] | ParallelSetting,
    mesh,
    ledger: Ledger | None = None,
    bucket_bytes: int | None = None,
) -> Parallelized:
    """Apply `setting` to a built (same-seed) model on `mesh`; see the module docstring for use."""
    from nanigpt.parallel.ddp import DEFAULT_BUCKET_BYTES, BuiltinDDP, ManualDDP

    s = validate_parallelism(
        setting, model.cfg, world_size=dist.get_world_size() if dist.is_initialized() else 1
    )
    device = next(model.parameters()).device
    ledger = ledger or Ledger(device)
    bucket_bytes = bucket_bytes or DEFAULT_BUCKET_BYTES
    par = Parallelized(model, s, mesh, ledger, data_rank(mesh), s.data_parallel_size)
    if s.strategy == "single":
        return par
    # label every process group of the mesh, for the ledger's interception of library collectives
    for d in DIMS:
        par.intercept_names[mesh[d].get_group().group_name] = d
    par.intercept_names[dist.group.WORLD.group_name] = "world"
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    if s.strategy == "ddp_manual":
        group, label = _group(mesh, ("dp",))
        par.ddp.append(ManualDDP(list(model.parameters()), group, label, ledger, bucket_bytes))
        par.expected = {"all_reduce": param_bytes}
    elif s.strategy == "ddp_builtin":
        group, label = _group(mesh, ("dp",))
        par.model = BuiltinDDP(model, group, label, ledger, device, bucket_bytes).module
        par.expected = {"all_reduce": param_bytes}
    elif s.strategy in ("zero1", "zero2"):
        from nanigpt.parallel.zero import ZeroOptimizer

        group, label = _group(mesh, ("fsdp",))
        par.zero = ZeroOptimizer(
            list(model.parameters()),
            group,
            label,
            ledger,
            stage=int(s.strategy[-1]),
            bucket_bytes=bucket_bytes,
        )
        par.expected = par.zero.expected_bytes()
    elif s.strategy == "fsdp2":
        from nanigpt.parallel.fsdp import apply_fsdp2, expected_bytes

        par.expected = expected_bytes(model, s.fsdp)
        apply_fsdp2(model, mesh["fsdp"])
        par.intercepting = True
    elif s.strategy in ("tp_manual", "tp_dtensor"):
        from nanigpt.parallel.tensor import apply_dtensor_tp, apply_manual_tp

        names = _tp_sharded_names(model)
        if s.strategy == "tp_manual":
            apply_manual_tp(model, mesh["tp"].get_group(), ledger)
            par.sharded_dims.update({n: ("tp",) for n in names})
        else:
            apply_dtensor_tp(model, mesh["tp"])
            par.intercepting = True
    elif s.strategy == "fsdp2_tp":
        from nanigpt.parallel.fsdp import apply_fsdp2
        from nanigpt.parallel.tensor import apply_dtensor_tp

        apply_dtensor_tp(model, mesh["tp"])
        apply_fsdp2(model, mesh["fsdp"])
        par.intercepting = True
    elif s.strategy in ("ep", "fsdp2_ep"):
        from nanigpt.parallel.expert import apply_ep, is_expert_param

        ep_group, _ = _group(mesh, ("ep",))
        expert_names = [n for n, p in model.named_parameters() if _is_expert_name(model, n)]
        apply_ep(model, ep_group, ledger)
        par.sharded_dims.update({n: ("ep",) for n in expert_names})
        if s.strategy == "ep":
            experts = [p for p in model.parameters() if is_expert_param(p)]
            others = [p for p in model.parameters() if not is_expert_param(p)]
            group, label = _group(mesh, ("dp", "ep"))
            par.ddp.append(ManualDDP(others, group, label, ledger, bucket_bytes))
            if s.dp > 1:
                dp_group, dp_label = _group(mesh, ("dp",))
                par.ddp.append(ManualDDP(experts, dp_group, dp_label, ledger, bucket_bytes))
        else:
            from nanigpt.parallel.fsdp import apply_fsdp2

            fsdp_ep = mesh["fsdp", "ep"]._flatten("fsdp_ep")
            par.intercept_names[fsdp_ep.get_group().group_name] = "fsdp_ep"
            apply_fsdp2(model, fsdp_ep, expert_mesh=mesh["fsdp"])
            par.intercepting = True
    else:  # pragma: no cover - validate_parallelism refused it
        raise ValueError(f"parallelism.strategy={s.strategy!r}: not implemented")
    return par


def _tp_sharded_names(model: nn.Module) -> list[str]:
    names = []
    for i, block in enumerate(model.blocks):
        names += [f"blocks.{i}.attn.{w}.weight" for w in ("wq", "wk", "wv", "wo")]
        if not block.is_moe:
            names += [f"blocks.{i}.mlp.{w}.weight" for w in ("w_gate", "w_up", "w_down")]
    return names


def _is_expert_name(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return (
        len(parts) == 4
        and parts[0] == "blocks"
        and parts[2] == "mlp"
        and parts[3] in ("w_gate", "w_up", "w_down")
        and model.blocks[int(parts[1])].is_moe
    )
