"""Qwen3-Next (Qwen3-Next-80B-A3B): gated DeltaNet and full-attention layers, experts stacked under
`mlp.switch_mlp` beside a shared expert. mlx-lm's conversion also shifted the norms and moved the `conv1d`
axis (`gated_delta.py` undoes both) and dropped the multi-token-prediction (`mtp.`) weights, which vLLM
does not need for plain decoding."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .gated_delta import undo_sanitize
from .moe import StackedExpertsAdapter


class Qwen3NextAdapter(StackedExpertsAdapter):
    families: ClassVar[dict[str, str]] = {"qwen3_next": "Qwen3NextForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return undo_sanitize(super().weights(entries, config, where))
