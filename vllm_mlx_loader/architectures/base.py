"""What every adapter does, and the description of one dense weight the model is fed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MLXCheckpointError
from ..stored import Entry, QuantizedModule
from .meta_model import model_shapes

if TYPE_CHECKING:
    import torch

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


class Adapter:
    """A dense architecture whose MLX names are the Hugging Face names (mlx-lm's `sanitize` only drops a tied
    `lm_head`). Families that rename or stack tensors override `expected_weights` and `weights`."""

    # model type (config.json's `model_type`) -> the architecture served for it: the pair decides the family, as
    # mlx-lm's choice of module (and so of `sanitize`) was made by the model type (`identity.py`)
    families: ClassVar[dict[str, str]] = {}
    # False where mlx-lm's conversion renames, restacks or changes tensors: vLLM's default loader cannot read even
    # an unquantized conversion of such a family, so `--load-format auto` gives it to this loader
    stores_hf_layout: ClassVar[bool] = False
    # True for a vision-language model whose MLX checkpoints hold the language model alone: transformers builds
    # that from the text config (`meta_model.build_model(text_only=True)`), never the vision tower
    text_only: ClassVar[bool] = False

    def __init__(self, families: dict[str, str] | None = None) -> None:
        """An adapter serving `families` (default: the class's own)."""
        if families is not None:
            self.families = families

    def expected_weights(self, config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
        """Every dense weight the checkpoint must hold, with its shape: the parameters of transformers' own
        model for this config, built on the meta device (no memory, no hand-written table)."""
        return model_shapes(config, where, text_only=self.text_only)

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        """The dense weights to feed the model, from the checkpoint's stored entries."""
        return [Weight(e.name, e) for e in entries]
