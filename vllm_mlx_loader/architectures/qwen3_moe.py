"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B): experts stacked under `mlp.switch_mlp`; mlx-lm's
recipe keeps the router `mlp.gate` at 8 bits (a per-module entry in config.json). `mlp_only_layers` and
`decoder_sparse_step` layers stay dense, as transformers' model says."""

from __future__ import annotations

from typing import ClassVar

from .moe import StackedExpertsAdapter


class Qwen3MoeAdapter(StackedExpertsAdapter):
    families: ClassVar[dict[str, str]] = {"qwen3_moe": "Qwen3MoeForCausalLM"}
