"""Vision-language models whose MLX checkpoints hold only the language model (Gemma 3 4B-27B, Qwen3.5, Mistral 3,
Qwen3-VL).

mlx-lm wraps the text model as `language_model` and drops the vision tower and projector: it stores
`language_model.model.*` and `language_model.lm_head.weight` where transformers 5 names the parameters
`model.language_model.*` and `lm_head.weight`. The weights are fed under transformers' names (vLLM's own
mappers take them) and the vision parameters are not expected; vLLM serves such a checkpoint with
`--language-model-only`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

from ..errors import MLXCheckpointError
from ..stored import Entry, Weight
from .base import Adapter

RENAMES = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))
# a vision tower and its projector, as mlx-vlm stores them (mlx-lm drops them) and as transformers names them
VISION_TOWER = (
    "vision_tower.", "vision_model.", "visual.", "multi_modal_projector.", "model.visual.", "model.vision_tower.",
    "model.multi_modal_projector.",
)


class LanguageModelOnlyAdapter(Adapter):
    text_only: ClassVar[bool] = True

    def expected_weights(self, config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
        """The language model's parameters, from its text config alone (the vision tower is never built)."""
        text = config.get("text_config")
        if text is not None and not isinstance(text, dict):
            raise MLXCheckpointError(where, f"text_config must be a JSON object, found {text!r}.")
        return super().expected_weights(config, where)

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return [dataclasses.replace(w, name=hf_name(w.name)) for w in self.stored_weights(entries, config, where)]

    def stored_weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        """The weights under their stored (MLX) names; families whose values mlx-lm changed restore them here."""
        return super().weights(entries, config, where)


def hf_name(name: str) -> str:
    for mlx, hf in RENAMES:
        if name.startswith(mlx):
            return hf + name[len(mlx):]
    return name


class Gemma3VisionLanguageAdapter(LanguageModelOnlyAdapter):
    families: ClassVar[dict[str, str]] = {"gemma3": "Gemma3ForConditionalGeneration"}


# mlx-lm's Mistral 3 (Devstral, Magistral, Mistral Small 3.x, Ministral 3; `llava` is converted by the same module)
# and Qwen3-VL wrappers: the language model's names and values as they are, under `language_model.`
LANGUAGE_MODEL_ONLY_FAMILIES = (
    LanguageModelOnlyAdapter({
        "mistral3": "Mistral3ForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration",
    }),
)
