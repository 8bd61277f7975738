"""Architecture adapters: which checkpoints each family serves, the dense weights it must hold, and how
MLX's stored names and tensors become what the vLLM model's own `load_weights` takes.

One file per family. A dense architecture whose MLX names are the Hugging Face names needs only a line in
`dense.py`; a family whose mlx-lm `sanitize` renames or stacks tensors gets its own adapter file, and one whose
`sanitize` changes values attaches the inverse to the weights it changed (`base.Inverse`).
"""

from __future__ import annotations

from typing import Any

from ..errors import MLXCheckpointError
from .base import Adapter, Weight
from .deepseek_v3 import DeepseekV3Adapter
from .dense import DenseAdapter
from .gpt_oss import GptOssAdapter
from .mixtral import MixtralAdapter
from .qwen3_5 import Qwen3_5Adapter
from .qwen3_moe import Qwen3MoeAdapter
from .qwen3_next import Qwen3NextAdapter
from .vision_language import Gemma3VisionLanguageAdapter

ADAPTERS: tuple[Adapter, ...] = (
    DenseAdapter(), Qwen3MoeAdapter(), MixtralAdapter(), Qwen3NextAdapter(), Qwen3_5Adapter(),
    Gemma3VisionLanguageAdapter(), DeepseekV3Adapter(), GptOssAdapter(),
)
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(a for adapter in ADAPTERS for a in adapter.architectures)

__all__ = [
    "ADAPTERS", "SUPPORTED_ARCHITECTURES", "Adapter", "Weight", "adapter_for", "architecture",
    "holds_language_model_only",
]


def architecture(config: dict[str, Any], where: str) -> str:
    """Return the checkpoint's architecture, or raise if no adapter serves it."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else archs
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES:
        raise MLXCheckpointError(
            where,
            f"architecture {arch!r} has no MLX-to-vLLM mapping in vllm-mlx-loader "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}).",
            "Open an issue with the checkpoint's config.json; see the README's support table for what is served.",
        )
    return arch


def adapter_for(config: dict[str, Any], where: str) -> Adapter:
    arch = architecture(config, where)
    return next(a for a in ADAPTERS if arch in a.architectures)


def holds_language_model_only(config: dict[str, Any]) -> bool:
    """True for a vision-language architecture whose MLX checkpoints hold the language model alone."""
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs else None
    return any(arch in a.architectures for a in ADAPTERS if a.text_only)
