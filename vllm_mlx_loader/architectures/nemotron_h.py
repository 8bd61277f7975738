"""Nemotron-H / Nemotron 3 Nano: Mamba-2, attention and mixture-of-experts layers under `backbone.` (the checkpoints'
own prefix). mlx-lm stacks each layer's experts (`mixer.experts.{e}.{up,down}_proj`) as `mixer.switch_mlp.{fc1,fc2}`,
moves the Mamba `conv1d` weights to MLX's layout (`conv.py` moves them back) and drops multi-token prediction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .conv import restore_conv
from .moe import StackedExpertsAdapter


class NemotronHAdapter(StackedExpertsAdapter):
    families: ClassVar[dict[str, str]] = {"nemotron_h": "NemotronHForCausalLM"}
    block = "mixer"
    num_experts_key = "n_routed_experts"
    expert_names: ClassVar[dict[str, str]] = {"fc1": "up_proj", "fc2": "down_proj"}
    down = "fc2"

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return restore_conv(super().weights(entries, config, where))
