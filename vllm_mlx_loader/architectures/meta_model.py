"""The parameters of transformers' model for a config.json, built on the meta device: names and shapes only.

This is how the loader knows which weights a checkpoint must hold without a table per model (vLLM's GGUF
loader does the same). Tied parameters appear once, under the first name (`model.embed_tokens.weight`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..errors import MLXCheckpointError

NOT_MODEL_FIELDS = ("quantization", "quantization_config")


def hf_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """config.json without MLX's quantization entries (transformers would read them as its own)."""
    return {k: v for k, v in config.items() if k not in NOT_MODEL_FIELDS}


def model_shapes(config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    return dict(_model_shapes(json.dumps(hf_config_fields(config), sort_keys=True), where))


@functools.lru_cache(maxsize=8)
def _model_shapes(config_json: str, where: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import torch
    import transformers  # looked up at use: vLLM 0.18 may replace the module object

    fields = json.loads(config_json)
    arch = fields["architectures"][0]
    try:
        model_class = getattr(transformers, arch)
        hf_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device("meta"):
            model = model_class(hf_config)
    except Exception as e:  # transformers raises many types for a config it cannot build
        raise MLXCheckpointError(
            where, f"transformers {transformers.__version__} cannot build {arch} from it ({type(e).__name__}: {e}).",
            "Check config.json against the model's original one.",
        ) from None
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
