"""Gemma 4 (E2B/E4B, 31B, 26B-A4B): mlx-lm stores the names and values of the checkpoints but for the experts of
the mixture-of-experts model, which the checkpoints hold fused (`experts.gate_up_proj`) and mlx-lm splits into
`experts.switch_glu.{gate,up,down}_proj` (joined back: `fused_experts.py`). It drops the key/value projections of
KV-shared layers, which neither transformers' model nor vLLM's has. The vision-language models hold the language
model alone (`vision_language.py`); `gemma4_unified` is converted by the same module."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .base import Adapter
from .fused_experts import FusedExperts
from .vision_language import LanguageModelOnlyAdapter

EXPERTS = FusedExperts(stack="experts.switch_glu", experts="experts")


class Gemma4TextAdapter(Adapter):
    families: ClassVar[dict[str, str]] = {"gemma4_text": "Gemma4ForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return EXPERTS.join(super().weights(entries, config, where))


class Gemma4Adapter(LanguageModelOnlyAdapter):
    families: ClassVar[dict[str, str]] = {"gemma4": "Gemma4ForConditionalGeneration"}

    def stored_weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return EXPERTS.join(super().stored_weights(entries, config, where))
