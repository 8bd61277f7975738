"""Qwen3-VL-MoE (Qwen3-VL-30B-A3B, 235B-A22B): a vision-language model whose MLX checkpoints hold the language
model alone (`vision_language.py`), with experts the checkpoints store fused and transposed and mlx-lm split
(`fused_experts.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .fused_experts import FusedExperts
from .vision_language import LanguageModelOnlyAdapter

EXPERTS = FusedExperts(transposed=True)


class Qwen3VLMoeAdapter(LanguageModelOnlyAdapter):
    families: ClassVar[dict[str, str]] = {"qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"}

    def expected_weights(self, config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
        return EXPERTS.checkpoint_shapes(super().expected_weights(config, where))

    def stored_weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return EXPERTS.join(super().stored_weights(entries, config, where))
