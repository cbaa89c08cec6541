"""Checkpoints written by Rust on a background thread: the training loop waits only for a snapshot.

Serves the Rust track's checkpointing question (issue 20): how long does saving a checkpoint block
training, against the synchronous reference `torch_format.save` (torch.save + sha256)?
Here Python copies every tensor of the payload into one contiguous staging buffer (pinned host
memory when the tensors live on a GPU) and hands it to `nanigpt_rs.save_checkpoint`, which writes,
hashes, fsyncs and renames the file on its own thread with the GIL released.

File format (`checkpoint.safetensors`): the safetensors layout (https://github.com/huggingface/safetensors),
so `safetensors.safe_open` reads every tensor; details and the hash in `rust/src/checkpoint.rs`.
`__metadata__` holds `nanigpt_xxh3_128` (the file's hash), `nanigpt_format` ("1") and
`nanigpt_skeleton`: the payload as JSON with each tensor replaced by `{"__tensor__": name}`
(dicts with non-string keys as `{"__items__": [[k, v], ...]}`, tuples as `{"__tuple__": [...]}`,
bytes as `{"__bytes__": name}` over a uint8 tensor). Tensor names are the payload's key paths
joined with "/" (e.g. `model/blocks.0.attn.qkv.weight`, `optimizer/state/3/exp_avg`).
Tensors are laid out by element size, largest first, so each one is naturally aligned.

`load` verifies the hash in Rust before building any tensor and raises `CheckpointError` naming
the file on a foreign, truncated or corrupt file; `mmap=True` maps the file (copy-on-write)
instead of reading it.
"""

from __future__ import annotations

import json
import logging
import mmap as mmap_module
import os
from pathlib import Path
from typing import Any

import torch

import nanigpt_rs
from nanigpt.training.checkpoint.torch_format import FORMAT, CheckpointError

SKELETON_KEY = "nanigpt_skeleton"
FORMAT_KEY = "nanigpt_format"
RESERVED = ("__tensor__", "__items__", "__tuple__", "__bytes__")

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}
log = logging.getLogger(__name__)


# --- the payload as a JSON skeleton plus named tensors -------------------------------------------


def flatten(payload: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `payload` into a JSON-able skeleton and its tensors by name (key paths)."""
    tensors: dict[str, torch.Tensor] = {}

    def name_for(path: str) -> str:
        name, n = path or "tensor", 1
        while name in tensors:
            name, n = f"{path}#{n}", n + 1
        return name

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.dtype not in DTYPES:
                raise TypeError(f"checkpoint: tensor {path} has unsupported dtype {obj.dtype}")
            name = name_for(path)
            tensors[name] = obj
            return {"__tensor__": name}
        if isinstance(obj, bytes | bytearray):
            name = name_for(path)
            data = bytearray(obj)
            tensors[name] = (
                torch.frombuffer(data, dtype=torch.uint8)
                if data
                else torch.empty(0, dtype=torch.uint8)
            )
            return {"__bytes__": name}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj) and not any(k in obj for k in RESERVED):
                return {k: walk(v, f"{path}/{k}" if path else k) for k, v in obj.items()}
            return {"__items__": [[k, walk(v, f"{path}/{k}")] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(
            f"checkpoint: {path} is a {type(obj).__name__}, which the rust format does not store"
        )

    return walk(payload, ""), tensors


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__bytes__" in skeleton:
        return tensors[skeleton["__bytes__"]].numpy().tobytes()
    if "__tuple__" in skeleton:
        return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
    if "__items__" in skeleton:
        return {k: unflatten(v, tensors) for k, v in skeleton["__items__"]}
    return {k: unflatten(v, tensors) for k, v in skeleton.items()}


# --- writing ---------------------------------------------------------------------------------------


def layout(tensors: dict[str, torch.Tensor]) -> tuple[list[tuple], int]:
    """(name, dtype, shape, begin, end) per tensor, largest element size first; total bytes."""
    order = sorted(tensors, key=lambda n: -tensors[n].element_size())
    entries, at = [], 0
    for name in order:
        t = tensors[name]
        n = t.numel() * t.element_size()
        entries.append((name, DTYPES[t.dtype], list(t.shape), at, at + n))
        at += n
    return entries, at


class Writer:
    """Checkpoints written on a Rust thread; at most one in flight, its staging buffer reused.

    `save` blocks for the snapshot (the copy of every tensor into the staging buffer) and returns
    the handle (`.wait()` -> bytes, raises OSError naming the file; `.done()`); the next `save`
    first waits for the previous write."""

    def __init__(self) -> None:
        self._staging: torch.Tensor | None = None
        self.pending: Any = None

    def wait(self) -> int | None:
        """Block until the write in flight (if any) is durable; raise its error."""
        if self.pending is None:
            return None
        pending, self.pending = self.pending, None
        try:
            return pending.wait()
        except OSError as e:
            raise CheckpointError(str(e)) from None

    def finish(self) -> None:
        """Wait for the write in flight without raising (for `finally:`; a failed write was
        never renamed, so the previous checkpoint stands)."""
        try:
            self.wait()
        except CheckpointError as e:
            log.warning(str(e))

    def _buffer(self, nbytes: int, pinned: bool) -> torch.Tensor:
        staging = self._staging
        if staging is None or staging.numel() < nbytes or staging.is_pinned() != pinned:
            staging = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pinned)
            self._staging = staging
        return staging[:nbytes]

    def save(self, path: str | os.PathLike, payload: dict[str, Any]) -> Any:
        self.wait()
        skeleton, tensors = flatten({"format": FORMAT, **payload})
        entries, nbytes = layout(tensors)
        on_gpu = any(t.device.type == "cuda" for t in tensors.values())
        flat = self._buffer(nbytes, pinned=on_gpu)
        host = []  # CPU tensors: one memcpy each in Rust, GIL released
        for name, _, _, begin, end in entries:
            t = tensors[name].detach()
            if end == begin:
                continue
            if t.device.type == "cpu":
                host.append((t.contiguous().reshape(-1).view(torch.uint8).numpy(), begin))
            else:  # device -> pinned host, asynchronous, then one synchronize
                flat[begin:end].view(t.dtype).copy_(t.reshape(-1), non_blocking=True)
        nanigpt_rs.copy_into(flat.numpy(), host)
        if on_gpu:
            torch.cuda.synchronize()
        metadata = [
            (FORMAT_KEY, str(FORMAT)),
            (SKELETON_KEY, json.dumps(skeleton, separators=(",", ":"))),
        ]
        self.pending = nanigpt_rs.save_checkpoint(str(path), entries, metadata, flat.numpy())
        return self.pending


def save(path: str | os.PathLike, payload: dict[str, Any]) -> int:
    """Write synchronously (snapshot + background write + wait); returns the file size."""
    return Writer().save(path, payload).wait()


# --- reading ---------------------------------------------------------------------------------------


def _read(path: Path, use_mmap: bool) -> Any:
    with open(path, "rb") as f:
        if use_mmap:
            if os.fstat(f.fileno()).st_size == 0:
                return b""
            return mmap_module.mmap(f.fileno(), 0, access=mmap_module.ACCESS_COPY)
        buf = bytearray(os.fstat(f.fileno()).st_size)
        f.readinto(buf)
        return buf


def load(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Verify (layout, xxh3-128) and read a checkpoint onto the CPU; tensors share the file's
    buffer (a private copy-on-write map with `mmap=True`)."""
    path = Path(path)
    buf = _read(path, mmap)
    try:
        header_text, start = nanigpt_rs.verify_checkpoint(buf, str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    header = json.loads(header_text)
    meta = header.pop("__metadata__")
    if meta.get(FORMAT_KEY) != str(FORMAT) or SKELETON_KEY not in meta:
        raise CheckpointError(f"checkpoint {path}: unknown payload format; expected {FORMAT}")
    tensors = {}
    for name, info in header.items():
        dtype = TORCH_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        if end == begin:
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=end - begin, offset=start + begin)
        tensors[name] = raw.view(dtype).reshape(info["shape"])
    return unflatten(json.loads(meta[SKELETON_KEY]), tensors)
