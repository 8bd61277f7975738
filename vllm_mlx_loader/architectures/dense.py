"""Decoder-only families whose MLX names and values are the Hugging Face checkpoint's: mlx-lm's `sanitize` for each
drops at most a tied `lm_head`, rotary `inv_freq` buffers or multi-token-prediction layers. Which tensors each must
hold comes from transformers' model, so a family is one line here, with its proof in tests/test_families.py.
Qwen2's Linear `.bias` tensors sit beside the quantization `.biases`."""

from __future__ import annotations

from typing import ClassVar

from .base import Adapter


class DenseAdapter(Adapter):
    stores_hf_layout: ClassVar[bool] = True
    families: ClassVar[dict[str, str]] = {
        "qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
        "mistral": "MistralForCausalLM", "gemma3_text": "Gemma3ForCausalLM",
        "cohere": "CohereForCausalLM", "cohere2": "Cohere2ForCausalLM", "ernie4_5": "Ernie4_5ForCausalLM",
        "exaone4": "Exaone4ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
        "glm": "GlmForCausalLM", "glm4": "Glm4ForCausalLM", "granite": "GraniteForCausalLM",
        "helium": "HeliumForCausalLM", "hunyuan_v1_dense": "HunYuanDenseV1ForCausalLM",
"ministral3": "Ministral3ForCausalLM", "nemotron": "NemotronForCausalLM",
        "olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM", "phi": "PhiForCausalLM", "phi3": "Phi3ForCausalLM",
        "seed_oss": "SeedOssForCausalLM", "smollm3": "SmolLM3ForCausalLM", "stablelm": "StableLmForCausalLM",
        "starcoder2": "Starcoder2ForCausalLM",
    }
