"""Stream a described MLX checkpoint as dense `(name, tensor)` pairs, dequantized on the target device.

One module at a time: its packed codes, scales and biases are read from their shards (memory-mapped),
moved to the device as packed data (~4.5 bits per weight for 4-bit), and dequantized there. Host memory
holds one module's tensors at a time, never a dense copy of the model. With `lazy=True` (what the vLLM loader
asks for) each weight is a `LazyDense`: the rows and whole groups of columns the consumer narrows it to are
all that is read and dequantized, and a weight the consumer never uses (another pipeline stage's layer) costs
nothing. Before a quantized module is dequantized, its scales (and biases) bound its values: where the bound
exceeds what the output dtype holds, the dense tensor is checked and refused if anything overflowed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .buffers import OutputBuffers
from .dequant import Rounding, dequantize_affine
from .dequant_fp import LARGEST_ELEMENT, NVFP4_GLOBAL_DIVISOR, dequantize_fp, non_finite_codes, scale_table
from .errors import MLXCheckpointError
from .format import MLXCheckpoint, QuantizedModule, TensorRef, Weight
from .lazy_dense import LazyDense, Region

Key = int | tuple[int | slice, ...] | None  # the whole tensor, one entry of its leading axis, or a slice
PLAIN_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@dataclass
class LoadStats:
    tensors: int = 0
    bytes_read: int = 0
    bytes_dequantized: int = 0  # dense bytes made from packed codes
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
        self._files.clear()  # a lazy weight made after the stream ended reopens its shard

    def read(self, ref: TensorRef, key: Key = None) -> torch.Tensor:
        """The tensor `ref`, or only `ref[key]` (one expert of a stack, a rank's rows or columns), on the device:
        safetensors reads just those bytes."""
        return self.to_device(self.read_host(ref, key))

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)

    def read_host(self, ref: TensorRef, key: Key = None) -> torch.Tensor:
        """`read`, left in host memory (memory-mapped where safetensors can)."""
        if ref.file not in self._files:
            self._files[ref.file] = self._stack.enter_context(safe_open(ref.file, framework="pt"))
        try:
            f = self._files[ref.file]
            tensor = f.get_tensor(ref.name) if key is None else f.get_slice(ref.name)[key]
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
        return tensor


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
    lazy: bool = False,
    packed: Collection[str] = (),
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(hf_name, dense tensor)` for every weight of `ckpt` (`ckpt.weights`), dequantized on `device`.

    Unquantized tensors (norms) come back in their stored dtype on `device`; the model's weight
    loader casts them as it copies. On the CPU, a dense tensor's memory is reused for a later one once the
    consumer has dropped every reference to it (`buffers.py`), never before. On an accelerator the work is
    queued without waiting for the device, unless `stats.timed` asks for per-phase times. With `lazy`, each
    tensor is a `LazyDense` that reads and dequantizes only the region the consumer narrows it to, and nothing
    of a weight the consumer skips (a tensor-parallel rank's share, a pipeline stage's layers, an expert-parallel
    rank's experts). Modules named in `packed` (4-bit affine linear layers kept packed, `--quantization mlx`) come
    as their stored `.weight` codes (int32), `.scales` and `.biases` instead.
    """
    device = torch.device(device)
    stats = stats if stats is not None else LoadStats(timed=device.type == "cpu")
    buffers = OutputBuffers(buffer_capacity(ckpt, dtype)) if device.type == "cpu" else None
    with ShardReader(device, stats) as reader:
        try:
            for weight in ckpt.weights:
                if packed and weight.name.removesuffix(".weight") in packed:
                    yield from _packed_parts(weight, reader)
                    continue
                make = _region_maker(weight, reader, dtype, rounding, buffers)
                kind = dense_dtype(weight, dtype)
                if lazy and kind is not None:
                    tensor = LazyDense(make, weight.shape, kind, device)
                else:
                    tensor = make(tuple((0, n) for n in weight.shape))
                stats.tensors += 1
                yield weight.name, tensor
        finally:
            if buffers is not None:
                buffers.release()


def _packed_parts(weight: Weight, reader: ShardReader) -> Iterator[tuple[str, torch.Tensor]]:
    """A 4-bit affine module's stored tensors (an expert's: its entry of the stacks), under its Hugging Face name,
    for a layer that keeps them packed."""
    module = weight.source
    if not (isinstance(module, QuantizedModule) and weight.inverse is None
            and module.params.mode == "affine" and module.params.bits == 4 and module.biases is not None):
        raise MLXCheckpointError(
            weight.where(), "was to be kept 4-bit (--quantization mlx) but is not one 4-bit affine weight.",
            "Report this as a vllm-mlx-loader bug; without --quantization mlx the checkpoint loads dense.",
        )
    prefix = weight.name.removesuffix(".weight")
    for part, ref in (("weight", module.weight), ("scales", module.scales), ("biases", module.biases)):
        reader.stats.tensors += 1
        yield f"{prefix}.{part}", _read_plain(ref, weight.index, reader)  # an expert: its entry of the stack


def dense_dtype(weight: Weight, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype `weight` is made in: `dtype` where anything of it is quantized, else its stored float dtype (None
    for another stored dtype, which is made at once rather than described)."""
    if any(w.quantized for w in (weight, *weight.others)):
        return dtype
    return PLAIN_DTYPES.get(weight.source.dtype)


def buffer_capacity(ckpt: MLXCheckpoint, dtype: torch.dtype, limit: int = 1 << 28) -> int:
    """The largest dense module up to `limit` (256 MiB): the layers' projections share buffers, while the
    rare larger tensors (embeddings, lm_head) get their own memory rather than pin 3x their size."""
    sizes = [math.prod(w.shape) * dtype.itemsize for w in ckpt.weights if w.quantized]
    return max((n for n in sizes if n <= limit), default=0)


def _dense(
    weight: Weight, reader: ShardReader, dtype: torch.dtype, rounding: Rounding, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`weight`'s stored tensor (entry `weight.index` of a stack), read or dequantized; no inverse applied."""
    if isinstance(weight.source, TensorRef):
        return _read_plain(weight.source, weight.index, reader)
    lead = () if weight.index is None else (weight.index,)
    return _dequantize(weight.source, lead, reader, dtype, rounding, out=out)


def _read_plain(ref: TensorRef, key: Key, reader: ShardReader) -> torch.Tensor:
    start = time.perf_counter()
    tensor = reader.read(ref, key)
    reader.sync(reader.device)
    reader.stats.read_s += time.perf_counter() - start
    return tensor


def _dequantize(
    module: QuantizedModule, lead: tuple[int, ...], reader: ShardReader, dtype: torch.dtype, rounding: Rounding,
    out: torch.Tensor | None = None, rows: slice = slice(None), cols: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Dense `module` (entry `lead` of a stack): all of it, or rows `rows` and input columns `cols`, which
    must cover whole groups."""
    stats, device, p = reader.stats, reader.device, module.params
    whole = not lead and rows == slice(None) and cols is None
    w_key = s_key = None if whole else (*lead, rows)
    if cols is not None:
        w_key = (*lead, rows, slice(cols[0] * p.bits // 32, cols[1] * p.bits // 32))
        s_key = (*lead, rows, slice(cols[0] // p.group_size, cols[1] // p.group_size))
    start = time.perf_counter()
    weight = reader.read(module.weight, w_key)
    scales = reader.read_host(module.scales, s_key)
    biases = None if module.biases is None else reader.read_host(module.biases, s_key)
    global_scale = _global_scale(module, lead, reader)
    # checked on the host copies, which are small: can the dense values leave the range of `dtype`?
    may_overflow = _largest_value(module, scales, biases, global_scale, dtype) > _largest(dtype, rounding, scales.dtype)
    scales, biases = reader.to_device(scales), None if biases is None else reader.to_device(biases)
    reader.sync(device)
    read_end = time.perf_counter()
    stats.read_s += read_end - start
    if p.mode == "affine":
        dense = dequantize_affine(
            weight, scales, biases, bits=p.bits, group_size=p.group_size, dtype=dtype, rounding=rounding, out=out
        )
    else:
        _refuse_non_finite_codes(module, weight, scales)
        dense = dequantize_fp(weight, scales, mode=p.mode, dtype=dtype, global_scale=global_scale, out=out)
    if may_overflow:  # rare: only then is every value looked at
        _refuse_overflow(module, dense, dtype)
    reader.sync(device)
    stats.dequant_s += time.perf_counter() - read_end
    stats.bytes_dequantized += dense.numel() * dense.element_size()
    return dense


def _largest(dtype: torch.dtype, rounding: Rounding, scales_dtype: torch.dtype) -> float:
    """The largest finite value the dequantization computes in and rounds to (`mlx_cpu` computes in the scales'
    dtype when they are floats)."""
    largest = torch.finfo(dtype).max
    if rounding == "mlx_cpu" and scales_dtype.is_floating_point:
        largest = min(largest, torch.finfo(scales_dtype).max)
    return largest


def _largest_value(
    module: QuantizedModule, scales: torch.Tensor, biases: torch.Tensor | None, global_scale: torch.Tensor | None,
    dtype: torch.dtype,
) -> float:
    """An upper bound of |dense value| from the scales (and biases) alone: the largest code times the largest
    scale (plus the largest bias), the scale as the dequantization rounds it."""
    if scales.numel() == 0:
        return 0.0
    p = module.params
    if p.mode == "affine":
        largest_bias = 0.0 if biases is None else float(biases.abs().max())
        return float(scales.abs().max()) * (2**p.bits - 1) + largest_bias
    codes = scales.view(torch.uint8)
    code = int((codes & 0x7F).max()) if p.mode == "nvfp4" else int(codes.max())  # magnitude grows with the code
    scale = float(scale_table(p.mode, dtype if global_scale is None else torch.float32, torch.device("cpu"))[code])
    factor = 1.0 if global_scale is None else float(global_scale.abs().max()) / NVFP4_GLOBAL_DIVISOR
    return LARGEST_ELEMENT[p.mode] * scale * factor


def _refuse_overflow(module: QuantizedModule, dense: torch.Tensor, dtype: torch.dtype) -> None:
    if _all_finite(dense):
        return
    bad = int((~torch.isfinite(dense)).sum())
    hint = "The checkpoint is damaged: re-download or re-convert it."
    if dtype == torch.float16:
        hint = "float16 holds at most 65504: load it in bfloat16 (--dtype bfloat16, the default)."
    raise MLXCheckpointError(
        module.scales.where(), f"dequantizes to {bad} values that {_DTYPE_NAMES[dtype]} cannot hold (Inf or NaN) "
        f"among {dense.numel()}: its scales are too large for that dtype.", hint,
    )


def _global_scale(module: QuantizedModule, lead: tuple[int, ...], reader: ShardReader) -> torch.Tensor | None:
    """nvfp4's float32 global scale (one value, or one per matrix of a stack: entry `lead`'s, or all of them for a
    whole stack), refused if any is zero."""
    if module.global_scale is None:
        return None
    leading = module.scales.shape[:-2]
    per_matrix = bool(leading) and module.global_scale.shape in (leading, (*leading, 1))
    value = reader.read(module.global_scale).reshape(leading if per_matrix else ())
    if per_matrix and lead:
        value = value[lead]
    if not bool(value.abs().gt(0).all()):
        raise MLXCheckpointError(
            module.global_scale.where(), f"holds {value.tolist()} where non-zero float32 values belong.",
            "The checkpoint is damaged: re-download or re-convert it.",
        )
    return value


def _refuse_non_finite_codes(module: QuantizedModule, weight: torch.Tensor, scales: torch.Tensor) -> None:
    part, count = non_finite_codes(module.params.mode, weight, scales)
    if count:
        ref = module.scales if part == "scales" else module.weight
        what = "scale codes" if part == "scales" else "E4M3 codes"
        raise MLXCheckpointError(
            ref.where(), f"holds {count} {module.params.mode} {what} that decode to NaN or Inf.",
            "The checkpoint is damaged: re-download or re-convert it.",
        )


def _region_maker(
    weight: Weight, reader: ShardReader, dtype: torch.dtype, rounding: Rounding, buffers: OutputBuffers | None,
) -> Callable[[Region], torch.Tensor]:
    """How `weight`'s region is made: a plain tensor's slice as stored; a quantized weight's rows and, where the
    columns start and end on group boundaries, only those groups (otherwise every group of the rows); a weight
    mlx-lm changed, whole and restored, then sliced. An empty region reads nothing."""
    source, lead = weight.source, () if weight.index is None else (weight.index,)
    whole_region = tuple((0, n) for n in weight.shape)

    def make(region: Region) -> torch.Tensor:
        slices = tuple(slice(a, b) for a, b in region)
        if any(a == b for a, b in region):
            return torch.empty(tuple(b - a for a, b in region), dtype=dense_dtype(weight, dtype), device=reader.device)
        if weight.inverse is not None:  # norms, convolutions, split tensors: made whole, then restored
            parts = [_dense(w, reader, dtype, rounding) for w in (weight, *weight.others)]
            restored = weight.inverse.apply(*parts).to(dense_dtype(weight, dtype) or parts[0].dtype)
            return restored if region == whole_region else restored[slices]
        if isinstance(source, TensorRef):
            return _read_plain(source, weight.index if region == whole_region else (*lead, *slices), reader)
        if region == whole_region:
            out = None if buffers is None else buffers.empty(weight.shape, dtype)
            return _dequantize(source, lead, reader, dtype, rounding, out=out)
        if len(region) != 2:  # not a matrix: make it whole
            return _dequantize(source, lead, reader, dtype, rounding)[slices]
        (r0, r1), (c0, c1) = region
        rows, g = slice(r0, r1), source.params.group_size
        if c0 % g == 0 and c1 % g == 0:
            out = None if buffers is None else buffers.empty((r1 - r0, c1 - c0), dtype)
            return _dequantize(source, lead, reader, dtype, rounding, out=out, rows=rows, cols=(c0, c1))
        return _dequantize(source, lead, reader, dtype, rounding, rows=rows)[:, c0:c1]

    return make
