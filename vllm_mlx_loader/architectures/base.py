"""What every adapter does: the families it serves, the weights they must hold, and how stored entries become them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .meta_model import model_shapes


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
