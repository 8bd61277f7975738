"""Granite-MoE (Granite 3.x MoE): the checkpoints hold each layer's experts fused, `block_sparse_moe.input_linear`
`[experts, 2 * inter, hidden]` (gate rows, then up rows) and `output_linear`; mlx-lm splits `input_linear` into
`block_sparse_moe.switch_mlp.{gate,up}_proj` and renames `output_linear` (joined back: `fused_experts.py`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from ..stored import Entry, Inverse, Weight, missing_partner
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
    """Granite 4.0 H: Mamba-2 layers whose `conv1d` mlx-lm moved to MLX's layout (`conv.py`), and either Granite-MoE's
    experts beside a shared MLP stored as it is (Tiny, Small), or the shared MLP alone (the dense Micro, 1B, 350M),
    whose fused `shared_mlp.input_linear` mlx-lm split and renamed to `mlp.{gate,up}_proj` (joined back here) and
    `output_linear` to `mlp.down_proj`."""

    families: ClassVar[dict[str, str]] = {"granitemoehybrid": "GraniteMoeHybridForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return restore_conv(_join_shared_mlp(super().weights(entries, config, where)))


_DENSE_MLP = re.compile(r"(model\.layers\.\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight")
JOIN_ROWS = Inverse("shared_mlp.input_linear from gate_proj and up_proj (rows)", lambda g, u: torch.cat([g, u], dim=0),
                    lambda g, u: (g[0] + u[0], *g[1:]))


def _join_shared_mlp(weights: list[Weight]) -> list[Weight]:
    out, halves = [], {}
    for w in weights:
        m = _DENSE_MLP.fullmatch(w.name)
        if m is None:
            out.append(w)
        elif m.group(2) == "down_proj":
            out.append(dataclasses.replace(w, name=f"{m.group(1)}.shared_mlp.output_linear.weight"))
        else:
            halves[m.groups()] = w
    for (layer, proj), w in sorted(halves.items()):
        other = "up_proj" if proj == "gate_proj" else "gate_proj"
        partner = halves.get((layer, other))
        if partner is None:
            raise missing_partner(w, f"{layer}.mlp.{other}.weight", "gate_proj and up_proj (shared_mlp.input_linear)")
        if proj == "gate_proj":
            out.append(dataclasses.replace(w, name=f"{layer}.shared_mlp.input_linear.weight", inverse=JOIN_ROWS,
                                           others=(partner,)))
    return out
