"""LFM2 / LFM2-MoE (Liquid): short-convolution and attention layers. mlx-lm moves each `conv.conv` weight to MLX's
layout (`conv.py` moves it back); for LFM2-MoE it also renames every `w1/w2/w3` to `gate_proj/down_proj/up_proj` and
stacks the experts under `feed_forward.switch_mlp` (the dense layers' projections are renamed back here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Weight
from .base import Adapter
from .conv import restore_conv
from .moe import StackedExpertsAdapter

CONV = "conv.conv.weight"


class Lfm2Adapter(Adapter):
    families: ClassVar[dict[str, str]] = {"lfm2": "Lfm2ForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return restore_conv(super().weights(entries, config, where), CONV)


class Lfm2MoeAdapter(StackedExpertsAdapter):
    families: ClassVar[dict[str, str]] = {"lfm2_moe": "Lfm2MoeForCausalLM"}
    block = "feed_forward"
    expert_names: ClassVar[dict[str, str]] = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
    stored_renames: ClassVar[dict[str, str]] = {
        f".feed_forward.{mlx}.weight": f".feed_forward.{hf}.weight" for mlx, hf in expert_names.items()
    }

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return restore_conv(super().weights(entries, config, where), CONV)
