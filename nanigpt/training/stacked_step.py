"""The training step of K stacked runs with no host synchronisation, eager or captured whole in a
CUDA graph (forward, backward, clipping, AdamW, schedule, metrics).

Serves issue 28 (a sweep at the hardware's speed): at the study's sizes a step is a few hundred
microsecond-scale kernels, so the host's launches and its waits for the device are the step time.
Here nothing in a step waits for the device:
- the data are on the device (`DeviceBatches`: the shard's tokens and every step's window starts,
  the same windows `nanigpt.data.loader.BatchLoader` draws for each replica's seed, gathered by
  indexing on the device);
- the lr comes from a [K, steps] table (`replica_optim.lr_table`) indexed by a step counter that
  lives on the device, as do AdamW's step count and bias corrections;
- the metrics (loss, aux loss, gradient norm, lr; MoE router statistics) go into a device buffer
  [steps, ...] that the host reads late, at evaluation points and at the end.

`StackedStep.step` is the readable reference; `StackedStep.capture` records the same function in a
`torch.cuda.CUDAGraph` (PyTorch's whole-network capture recipe: warm-up on a side stream, grads
set to None before capture so backward allocates them in the graph's pool) and `replay` runs one
step as one launch. The state the warm-up steps change is saved before and restored after, so the
captured run trains the same steps as the eager one (tests/test_stacked.py holds eager equal to
each run alone on the CPU, and captured equal to eager on a GPU). MoE steps are not capturable
(routing sorts a data-dependent number of kept assignments and the loop kernel reads counts on the
host); they run the same step eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nanigpt.data.loader import MASK64
from nanigpt.training.replica_optim import ReplicaAdamW, clip_per_replica_, lr_table
from nanigpt.training.stacked import StackedGPT

METRICS = ("loss", "aux_loss", "grad_norm", "lr")  # rows of StackedStep.metrics, per replica
MOE_METRICS = ("moe_dropped_frac", "moe_router_entropy", "moe_load_cv")

GOLDEN = 0x9E3779B97F4A7C15


def splitmix64_draws(seed: int, n: int) -> np.ndarray:
    """The first n outputs of `nanigpt.data.loader.SplitMix64(seed)`, vectorised: the i-th
    (0-based) state is seed + (i + 1) * golden mod 2^64, then the same mix (Steele et al. 2014)."""
    with np.errstate(over="ignore"):
        state = np.uint64(seed & MASK64) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
        z = state
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Replica:
    """What one stacked run may set apart from the others: its seed (initial weights and data
    order), lr schedule (`nanigpt.training.schedule.lr_at` settings), weight decay and gradient clip."""

    seed: int
    schedule: dict[str, Any]
    weight_decay: float
    grad_clip: float | None

    @classmethod
    def from_run(cls, run: Any) -> Replica:
        """From a `nanigpt.training.config.RunConfig`."""
        t = run.training
        return cls(t.seed, run.lr_schedule, t.weight_decay, t.grad_clip)


class DeviceBatches:
    """Every training batch of K replicas, on the device: `batch(step, micro)` -> x, y [K, B, T].

    Replica k's windows are those `BatchLoader(shard, seq_len, batch_size, seeds[k])` returns from
    its `next_batch()` calls in order (one splitmix64 draw per row, start = draw % (N - seq_len)).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seeds: Sequence[int],
        steps: int,
        grad_accum: int,
        device: torch.device | str,
    ):
        n = len(tokens)
        if n < seq_len + 1:
            raise ValueError(f"a shard of {n} tokens has no window of seq_len={seq_len} + 1")
        span = np.uint64(n - seq_len)
        rows = steps * grad_accum * batch_size
        starts = np.stack(
            [(splitmix64_draws(seed, rows) % span).astype(np.int64) for seed in seeds]
        )
        # [steps, grad_accum, K, B]
        starts = starts.reshape(len(seeds), steps, grad_accum, batch_size).transpose(1, 2, 0, 3)
        self.starts = torch.from_numpy(np.ascontiguousarray(starts)).to(device)
        self.tokens = torch.from_numpy(np.asarray(tokens).astype(np.int32)).to(device)
        self.offsets = torch.arange(seq_len + 1, device=device)
        self.seq_len = seq_len

    def batch(self, step: torch.Tensor, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of device-side `step` (a 0-dim int64 tensor), micro-batch `micro`."""
        starts = self.starts.index_select(0, step.view(1))[0, micro]  # [K, B]
        window = self.tokens[starts[..., None] + self.offsets].long()  # [K, B, T + 1]
        return window[..., :-1], window[..., 1:]


class StackedStep:
    """K runs' optimizer steps on a `StackedGPT`: eager (`step`) or captured (`capture`/`replay`)."""

    def __init__(
        self,
        model: StackedGPT,
        replicas: Sequence[Replica],
        data: DeviceBatches,
        steps: int,
        grad_accum: int = 1,
        autocast: bool | None = None,
        betas: tuple[float, float] = (0.9, 0.95),
    ):
        if len(replicas) != model.K:
            raise ValueError(f"{len(replicas)} replicas for a model of {model.K}")
        self.model, self.data, self.steps, self.grad_accum = model, data, steps, grad_accum
        device = next(model.parameters()).device
        self.device = device
        self.autocast = device.type == "cuda" if autocast is None else autocast
        self.lrs = lr_table([r.schedule for r in replicas], steps, device)  # [K, steps]
        self.weight_decay = torch.tensor([r.weight_decay for r in replicas], device=device)
        clips = [float("inf") if not r.grad_clip else r.grad_clip for r in replicas]
        self.max_norm = torch.tensor(clips, dtype=torch.float64, device=device)
        params = [p for _, p in model.stacked_parameters()]
        # the trainer decays the run's matrices (dim >= 2), i.e. stacked tensors of dim >= 3
        self.optimizer = ReplicaAdamW(params, [p.dim() >= 3 for p in params], betas=betas)
        self.step_index = torch.zeros((), dtype=torch.int64, device=device)
        rows = len(METRICS) + (len(MOE_METRICS) if model.moe_layers else 0)
        self.metrics = torch.zeros(steps, rows, model.K, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    @property
    def capturable(self) -> bool:
        return self.device.type == "cuda" and not self.model.moe_layers

    def _amp(self):
        # no weight-cast cache: a captured graph must not keep casts made outside it (PyTorch's
        # CUDA graphs notes: autocast with cache_enabled=False)
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.autocast, cache_enabled=False
        )

    def step(self) -> None:
        """One optimizer step of every replica, no host sync (the function a graph captures)."""
        model, step = self.model, self.step_index
        lr = self.lrs.index_select(1, step.view(1))[:, 0]  # [K]
        loss_sum = torch.zeros(model.K, device=self.device)
        aux_sum = torch.zeros(model.K, device=self.device)
        moe_sum = None
        for micro in range(self.grad_accum):
            x, y = self.data.batch(step, micro)
            with self._amp():
                out = model(x, y)
                objective = ((out.loss + out.aux_loss) / self.grad_accum).sum()
            objective.backward()  # replicas share no parameter: each gets its own gradient
            loss_sum += out.loss.detach().float()
            aux_sum += out.aux_loss.detach().float()
            if out.moe_stats is not None:
                moe = out.moe_stats.t().float()
                moe_sum = moe if moe_sum is None else moe_sum + moe
        params = self.optimizer.params
        norm = clip_per_replica_([p.grad for p in params], self.max_norm)
        self.optimizer.step(lr, self.weight_decay)
        self.optimizer.zero_grad()
        model.update_router_biases()
        rows = [loss_sum, aux_sum, norm, lr]
        if moe_sum is not None:
            rows.extend(moe_sum / self.grad_accum)
        self.metrics.index_copy_(0, step.view(1), torch.stack(rows).unsqueeze(0))
        step += 1

    # --- CUDA graph ---------------------------------------------------------------------------
    def _state(self) -> list[torch.Tensor]:
        return [
            *(p.data for p in self.optimizer.params),
            *self.optimizer.state_tensors(),
            *self.model.buffers(),
            self.step_index,
            self.metrics,
        ]

    def capture(self, warmup: int = 3) -> None:
        """Record `step` in a CUDA graph; the model's training state is left as it was."""
        if not self.capturable:
            raise ValueError("only dense models on a CUDA device can be captured")
        saved = [t.detach().clone() for t in self._state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t, s in zip(self._state(), saved, strict=True):
                t.copy_(s)
        self.optimizer.zero_grad()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def replay(self) -> None:
        """One step: the captured graph, else the eager step."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()

    def read_metrics(self, upto: int) -> dict[str, np.ndarray]:
        """The first `upto` steps' metrics, {name: [upto, K]} (waits for the device)."""
        names = METRICS + (MOE_METRICS if self.model.moe_layers else ())
        values = self.metrics[:upto].cpu().numpy()
        return {name: values[:, i, :] for i, name in enumerate(names)}

    @torch.no_grad()
    def evaluate(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean validation cross-entropy of each replica [K] over fixed batches (the same for
        every replica, as `nanigpt.training.step.evaluate`'s per run)."""
        model, K = self.model, self.model.K
        was_training = model.training
        model.eval()
        total = torch.zeros(K, dtype=torch.float64, device=self.device)
        for x, y in batches:
            x, y = (t.to(self.device) for t in (x, y))
            with self._amp():
                out = model(x.expand(K, *x.shape), y.expand(K, *y.shape))
            total += out.loss.detach().double()
        if was_training:
            model.train()
        return total / len(batches)
