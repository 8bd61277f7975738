"""The stored parts of an MLX checkpoint, as shard headers describe them (plain tensors and quantized modules), and
the dense weights the model is fed, made from them. Descriptions only: no tensor data, no vLLM."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MLXCheckpointError

if TYPE_CHECKING:
    import torch

# Each MLX mode's (group_size, bits) when a config leaves them out; each float mode has only this one pair.
AFFINE_BITS = (1, 2, 3, 4, 5, 6, 8)  # what MLX's affine mode writes
MODE_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "mxfp8": (32, 8), "nvfp4": (16, 4)}
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
                "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


@dataclass(frozen=True)
class TensorRef:
    """One tensor of one shard, as its header describes it."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _DTYPE_BYTES.get(self.dtype, 1) * math.prod(self.shape)

    def where(self) -> str:
        return f"{self.file}: tensor {self.name!r}"


@dataclass(frozen=True)
class QuantParams:
    mode: str
    bits: int
    group_size: int


@dataclass(frozen=True)
class QuantizedModule:
    """A quantized module `path`: packed `weight`, `scales`, (affine) `biases` and (nvfp4, optional) a float32
    `global_scale` (one value, or one per expert of a stack), maybe in different shards."""

    path: str
    params: QuantParams
    weight: TensorRef
    scales: TensorRef
    biases: TensorRef | None  # affine only
    global_scale: TensorRef | None = None  # nvfp4 only

    @property
    def name(self) -> str:
        """The dense weight's name, as the Hugging Face model (and vLLM) calls it."""
        return f"{self.path}.weight"

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.weight.shape[:-1], self.scales.shape[-1] * self.params.group_size)

    @property
    def parts(self) -> tuple[TensorRef, ...]:
        return tuple(t for t in (self.weight, self.scales, self.biases, self.global_scale) if t is not None)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.parts)


Entry = QuantizedModule | TensorRef


def _same_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape


@dataclass(frozen=True)
class Inverse:
    """Undoes a change of values (not only of names) that mlx-lm's `sanitize` made when it converted the
    Hugging Face checkpoint, so that the model gets the Hugging Face tensor back. `apply` and `shape` take
    the weight's dense tensor (shape), then those of its `others`, in order."""

    description: str
    apply: Callable[..., torch.Tensor]
    shape: Callable[..., tuple[int, ...]] = _same_shape


@dataclass(frozen=True)
class Weight:
    """One dense weight as the vLLM model's `load_weights` (and the Hugging Face checkpoint) names it, made
    from a stored tensor or quantized module, or from one entry of its leading axis (one expert of a stack),
    and `inverse` applied where mlx-lm changed its values (with `others`, where mlx-lm split one tensor)."""

    name: str
    source: Entry
    index: int | None = None
    inverse: Inverse | None = None
    others: tuple[Weight, ...] = ()

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return tuple(self.source.shape[1:] if self.index is not None else self.source.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.inverse is None:
            return self.stored_shape
        return tuple(self.inverse.shape(self.stored_shape, *(o.shape for o in self.others)))

    @property
    def nbytes(self) -> int:
        own = self.source.nbytes // self.source.shape[0] if self.index is not None else self.source.nbytes
        return own + sum(o.nbytes for o in self.others)

    @property
    def quantized(self) -> bool:
        return isinstance(self.source, QuantizedModule)

    def where(self) -> str:
        ref = self.source.weight if isinstance(self.source, QuantizedModule) else self.source
        return ref.where() + (f" [{self.index}]" if self.index is not None else "")


def missing_partner(weight: Weight, partner: str, what: str) -> MLXCheckpointError:
    """The error for one part of a tensor mlx-lm split, found without the part it must be joined with."""
    return MLXCheckpointError(
        weight.where(), f"has no {partner} beside it: {what} belong together.",
        "The checkpoint is incomplete: re-download or re-convert it.",
    )



def global_scale_shapes(scales_shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The shapes an nvfp4 global scale may have beside scales of `scales_shape` (`[..., rows, groups]`): one value
    for the whole tensor (a matrix, or a stack quantized in one `mx.quantize` call), or one per matrix of a stack
    (mlx-lm's `global_scale=True` on expert stacks: `[experts]`)."""
    leading = tuple(scales_shape[:-2])
    return {(), (1,)} | ({leading, (*leading, 1)} if leading else set())


def describe_global_scale_shapes(scales_shape: tuple[int, ...]) -> str:
    leading = list(scales_shape[:-2])
    return "[] (one value)" + (f" or {leading} (one per matrix)" if leading else "")
