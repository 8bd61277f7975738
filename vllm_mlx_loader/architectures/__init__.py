"""Architecture adapters: which checkpoints each family serves, the dense weights it must hold, and how
MLX's stored names and tensors become what the vLLM model's own `load_weights` takes.

One file per family. A dense architecture whose MLX names are the Hugging Face names needs only a line in
`dense.py`; a family whose mlx-lm `sanitize` renames or stacks tensors gets its own adapter file, and one whose
`sanitize` changes values attaches the inverse to the weights it changed (`stored.Inverse`).
"""

from __future__ import annotations

from typing import Any

from ..stored import Weight
from .apertus import ApertusAdapter
from .base import Adapter
from .deepseek_v3 import DeepseekV3Adapter
from .dense import DenseAdapter
from .gemma4 import Gemma4Adapter, Gemma4TextAdapter
from .gpt_oss import GptOssAdapter
from .granitemoe import GraniteMoeAdapter, GraniteMoeHybridAdapter
from .identity import identity, refusal
from .lfm2 import Lfm2Adapter, Lfm2MoeAdapter
from .mixtral import MixtralAdapter
from .moe import STACKED_EXPERT_FAMILIES
from .nemotron_h import NemotronHAdapter
from .qwen3_5 import Qwen3_5Adapter, Qwen3_5MoeAdapter
from .qwen3_moe import Qwen3MoeAdapter
from .qwen3_next import Qwen3NextAdapter
from .qwen3_vl_moe import Qwen3VLMoeAdapter
from .vision_language import LANGUAGE_MODEL_ONLY_FAMILIES, Gemma3VisionLanguageAdapter

ADAPTERS: tuple[Adapter, ...] = (
    DenseAdapter(), Qwen3MoeAdapter(), MixtralAdapter(), Qwen3NextAdapter(), Qwen3_5Adapter(),
    Gemma3VisionLanguageAdapter(), DeepseekV3Adapter(), GptOssAdapter(), *STACKED_EXPERT_FAMILIES,
    *LANGUAGE_MODEL_ONLY_FAMILIES, Qwen3_5MoeAdapter(), Qwen3VLMoeAdapter(), Gemma4TextAdapter(), Gemma4Adapter(),
    NemotronHAdapter(), ApertusAdapter(), GraniteMoeAdapter(), GraniteMoeHybridAdapter(), Lfm2Adapter(),
    Lfm2MoeAdapter(),
)
# (model type, architecture) -> its adapter: the allowlist
SERVED: dict[tuple[str, str], Adapter] = {pair: a for a in ADAPTERS for pair in a.families.items()}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(dict.fromkeys(arch for _, arch in SERVED))

__all__ = [
    "ADAPTERS", "SERVED", "SUPPORTED_ARCHITECTURES", "Adapter", "Weight", "adapter_for", "holds_language_model_only",
]


def adapter_for(config: dict[str, Any], where: str) -> Adapter:
    """The adapter serving this checkpoint's (model type, architecture), or raise naming why it is refused."""
    pair = identity(config)
    adapter = SERVED.get(pair) if all(isinstance(x, str) for x in pair) else None
    if adapter is None:
        raise refusal(config, where, list(SERVED))
    return adapter


def holds_language_model_only(config: dict[str, Any]) -> bool:
    """True for a vision-language architecture whose MLX checkpoints hold the language model alone."""
    pair = identity(config)
    adapter = SERVED.get(pair) if all(isinstance(x, str) for x in pair) else None
    return adapter is not None and adapter.text_only
