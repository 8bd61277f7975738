"""Qwen3.5 / Qwen3.6 (dense): a vision-language model whose MLX checkpoints hold only the language model
(`vision_language.py`), with gated DeltaNet layers whose values mlx-lm changed (`gated_delta.py`). The
inverses are decided on the stored names, as mlx-lm's suffix test saw them (`language_model.model.norm`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .fused_experts import FusedExperts
from .gated_delta import undo_sanitize
from .vision_language import LanguageModelOnlyAdapter


class Qwen3_5Adapter(LanguageModelOnlyAdapter):
    families: ClassVar[dict[str, str]] = {"qwen3_5": "Qwen3_5ForConditionalGeneration"}

    def stored_weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return undo_sanitize(super().stored_weights(entries, config, where))


class Qwen3_5MoeAdapter(Qwen3_5Adapter):
    """Qwen3.5 / Qwen3.6 MoE (35B-A3B, 122B-A10B): Qwen3.5's changes, and experts mlx-lm split out of the
    checkpoints' fused `gate_up_proj` (`fused_experts.py`)."""

    families: ClassVar[dict[str, str]] = {"qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}

    def stored_weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return FusedExperts().join(super().stored_weights(entries, config, where))
