"""Mixtral: the Hugging Face experts are `block_sparse_moe.experts.{e}.w1/w2/w3` (gate, down, up); mlx-lm
stacks them as `block_sparse_moe.switch_mlp.{gate,down,up}_proj`."""

from __future__ import annotations

from typing import ClassVar

from .moe import StackedExpertsAdapter


class MixtralAdapter(StackedExpertsAdapter):
    families: ClassVar[dict[str, str]] = {"mixtral": "MixtralForCausalLM"}
    block = "block_sparse_moe"
    num_experts_key = "num_local_experts"
    expert_size_key = "intermediate_size"
    expert_names: ClassVar[dict[str, str]] = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
