"""Stream a described MLX checkpoint as dense `(name, tensor)` pairs, dequantized on the target device.

One module at a time: its packed codes, scales and biases are read from their shards (memory-mapped),
moved to the device as packed data (~4.5 bits per weight for 4-bit), and dequantized there. Host memory
holds one module's tensors at a time, never a dense copy of the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .buffers import OutputBuffers
from .dequant import Rounding, dequantize_affine
from .errors import MLXCheckpointError
from .format import MLXCheckpoint, QuantizedModule, TensorRef, Weight


@dataclass
class LoadStats:
    tensors: int = 0
    bytes_read: int = 0
    read_s: float = 0.0
    dequant_s: float = 0.0
    timed: bool = True  # False: on an accelerator, read_s and dequant_s are queueing times, not work


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


class ShardReader:
    """Reads tensors from a checkpoint's shards (each opened once, memory-mapped) onto a device."""

    def __init__(self, device: torch.device, stats: LoadStats) -> None:
        self.device = device
        self.stats = stats
        # waiting for the device after every tensor only to time it would stall its queue
        self.sync = synchronize if stats.timed else lambda device: None
        self._stack = ExitStack()
        self._files: dict[Path, Any] = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def read(self, ref: TensorRef, index: int | None = None) -> torch.Tensor:
        """The tensor `ref`, or only entry `index` of its leading axis (one expert of a stack)."""
        if ref.file not in self._files:
            self._files[ref.file] = self._stack.enter_context(safe_open(ref.file, framework="pt"))
        try:
            f = self._files[ref.file]
            tensor = f.get_tensor(ref.name) if index is None else f.get_slice(ref.name)[index]
        except Exception as e:
            raise MLXCheckpointError(
                ref.where(), f"could not be read ({type(e).__name__}: {e}).",
                "The shard is damaged or truncated: re-download or re-convert it.",
            ) from None
        if tensor.dtype == torch.uint32:
            tensor = tensor.view(torch.int32)  # torch has almost no uint32 ops, torch_npu none
        elif tensor.is_floating_point() and not _all_finite(tensor):
            bad = int((~torch.isfinite(tensor)).sum())
            raise MLXCheckpointError(
                ref.where(), f"holds {bad} non-finite values (NaN or Inf) among {tensor.numel()}.",
                "The checkpoint is damaged: re-download or re-convert it.",
            )
        self.stats.bytes_read += tensor.numel() * tensor.element_size()
        return tensor.to(self.device)


def _all_finite(tensor: torch.Tensor) -> bool:
    # A float32 sum is NaN/Inf iff some value is (or the sum overflows: then look value by value);
    # 14x faster than isfinite().all() on scales here.
    return bool(torch.isfinite(tensor.sum(dtype=torch.float32))) or bool(torch.isfinite(tensor).all())


def iter_dense_weights(
    ckpt: MLXCheckpoint,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    rounding: Rounding = "fused",
    stats: LoadStats | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, dense tensor)` for every weight of `ckpt` (`ckpt.weights`), dequantized on `device`.

    Unquantized tensors (norms) come back in their stored dtype on `device`; the model's weight
    loader casts them as it copies. On the CPU, a dense tensor's memory is reused for a later one once the
    consumer has dropped every reference to it (`buffers.py`), never before. On an accelerator the work is
    queued without waiting for the device, unless `stats.timed` asks for per-phase times.
    """
    device = torch.device(device)
    stats = stats if stats is not None else LoadStats(timed=device.type == "cpu")
    buffers = OutputBuffers(buffer_capacity(ckpt, dtype)) if device.type == "cpu" else None
    with ShardReader(device, stats) as reader:
        try:
            for weight in ckpt.weights:
                start = time.perf_counter()
                if isinstance(weight.source, TensorRef):
                    tensor = reader.read(weight.source, weight.index)
                    reader.sync(device)
                    stats.read_s += time.perf_counter() - start
                else:
                    out = None if buffers is None else buffers.empty(weight.shape, dtype)
                    tensor = _dequantize(weight, reader, dtype, rounding, out)
                stats.tensors += 1
                yield weight.name, tensor
        finally:
            if buffers is not None:
                buffers.release()


def buffer_capacity(ckpt: MLXCheckpoint, dtype: torch.dtype, limit: int = 1 << 28) -> int:
    """The largest dense module up to `limit` (256 MiB): the layers' projections share buffers, while the
    rare larger tensors (embeddings, lm_head) get their own memory rather than pin 3x their size."""
    sizes = [math.prod(w.shape) * dtype.itemsize for w in ckpt.weights if w.quantized]
    return max((n for n in sizes if n <= limit), default=0)


def _dequantize(
    target: Weight, reader: ShardReader, dtype: torch.dtype, rounding: Rounding, out: torch.Tensor | None,
) -> torch.Tensor:
    stats, device, module = reader.stats, reader.device, target.source
    assert isinstance(module, QuantizedModule)
    start = time.perf_counter()
    weight, scales, biases = (reader.read(t, target.index) for t in (module.weight, module.scales, module.biases))
    reader.sync(device)
    read_end = time.perf_counter()
    stats.read_s += read_end - start
    p = module.params
    dense = dequantize_affine(
        weight, scales, biases, bits=p.bits, group_size=p.group_size, dtype=dtype, rounding=rounding, out=out
    )
    reader.sync(device)
    stats.dequant_s += time.perf_counter() - read_end
    return dense
