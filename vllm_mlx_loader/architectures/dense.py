"""Dense decoder-only families whose MLX names are the Hugging Face names (mlx-lm's `sanitize` for each only
drops a tied `lm_head`, or nothing). Qwen2's Linear `.bias` tensors sit beside the quantization `.biases`."""

from __future__ import annotations

from typing import ClassVar

from .base import Adapter


class DenseAdapter(Adapter):
    stores_hf_layout: ClassVar[bool] = True
    architectures = (
        "Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Gemma3ForCausalLM",
    )
