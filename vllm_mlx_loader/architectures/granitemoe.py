"""Granite-MoE (Granite 3.x MoE): the checkpoints hold each layer's experts fused, `block_sparse_moe.input_linear`
`[experts, 2 * inter, hidden]` (gate rows, then up rows) and `output_linear`; mlx-lm splits `input_linear` into
`block_sparse_moe.switch_mlp.{gate,up}_proj` and renames `output_linear` (joined back: `fused_experts.py`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .base import Adapter
from .conv import restore_conv
from .fused_experts import FusedExperts

EXPERTS = FusedExperts(stack="block_sparse_moe.switch_mlp", experts="block_sparse_moe", gate_up="input_linear.weight",
                       down="output_linear.weight")


class GraniteMoeAdapter(Adapter):
    families: ClassVar[dict[str, str]] = {"granitemoe": "GraniteMoeForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return EXPERTS.join(super().weights(entries, config, where))


class GraniteMoeHybridAdapter(GraniteMoeAdapter):
    """Granite 4.0 H (Tiny, Small): Granite-MoE's experts beside a shared MLP (stored as it is), and Mamba-2 layers
    whose `conv1d` mlx-lm moved to MLX's layout (`conv.py`). The dense Granite 4.0 H models, whose shared MLP mlx-lm
    renames to `mlp.{gate,up,down}_proj`, are refused by those names."""

    families: ClassVar[dict[str, str]] = {"granitemoehybrid": "GraniteMoeHybridForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return restore_conv(super().weights(entries, config, where))
