"""What every adapter does, and the description of one dense weight the model is fed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MLXCheckpointError
from ..stored import Entry, QuantizedModule
from .meta_model import model_shapes

if TYPE_CHECKING:
    import torch

_MAX_SIZE = 1 << 24  # no dimension of a real model comes near; bounds what a hostile config can make us build
_MAX_LAYERS = 4096


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


def size(config: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if type(value) is not int or not 0 < value <= _MAX_SIZE:
        raise MLXCheckpointError(where, f"{key} must be a positive integer, found {value!r}.")
    return value


def check_sizes(config: dict[str, Any], where: str) -> None:
    """Refuse sizes no model has before transformers builds anything from them."""
    for key in ("hidden_size", "num_attention_heads", "vocab_size", "num_hidden_layers"):
        size(config, key, where)
    for key in ("num_key_value_heads", "head_dim", "intermediate_size"):
        if config.get(key) is not None:
            size(config, key, where)
    layers = config["num_hidden_layers"]
    if layers > _MAX_LAYERS:
        raise MLXCheckpointError(where, f"num_hidden_layers must be at most {_MAX_LAYERS}, found {layers}.")
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise MLXCheckpointError(where, f"tie_word_embeddings must be true or false, found {tied!r}.")


class Adapter:
    """A dense architecture whose MLX names are the Hugging Face names (mlx-lm's `sanitize` only drops a tied
    `lm_head`). Families that rename or stack tensors override `expected_weights` and `weights`."""

    architectures: tuple[str, ...] = ()

    def expected_weights(self, config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
        """Every dense weight the checkpoint must hold, with its shape: the parameters of transformers' own
        model for this config, built on the meta device (no memory, no hand-written table)."""
        check_sizes(config, where)
        return model_shapes(config, where)

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        """The dense weights to feed the model, from the checkpoint's stored entries."""
        return [Weight(e.name, e) for e in entries]
