"""MLX itself as the independent reference, in float32 with mlx-lm (needs `mlx`; any platform).

mlx-lm runs its own quantized layers on the packed codes: scales, biases and activations in float32.
Nothing of this package's dequantization is shared, so a packing or bit-order bug shows here.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each chosen token


def load_float32(model_dir: str | Path, log: Callable[[str], None] | None = None) -> Any:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir))  # no tokenizer: callers pass token ids
    model.set_dtype(mx.float32)  # floating tensors only: packed codes stay, scales/biases become float32
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if honour_yarn_truncate(model, config) and log is not None:
        log("mlx-lm truncates YaRN's correction range though config.json says \"truncate\": false (gpt-oss); "
            "the MLX reference uses it untruncated, as transformers and vLLM do")
    return model


def honour_yarn_truncate(model: Any, config: dict[str, Any]) -> int:
    """Give mlx-lm's YaRN rotary embeddings the frequencies of an untruncated correction range where the config
    asks for one (`rope_scaling.truncate: false`, as gpt-oss's); return how many were changed.

    mlx-lm 0.32's `YarnRoPE` rounds the range's ends (floor / ceil) whatever the config says, while transformers
    and vLLM follow `truncate`. On gpt-oss the rounded range shifts a few frequencies enough to move logits by more
    than 1 at a few hundred tokens (measured on the test fixture: up to 1.4 at 200 tokens, 5.5 at ~1,000; 1e-5
    once untruncated), which is not the model's computation.
    """
    from mlx_lm.models.rope_utils import YarnRoPE

    text = config.get("text_config") or config
    scaling = text.get("rope_scaling") or config.get("rope_scaling") or {}
    if scaling.get("truncate", True) is not False or scaling.get("rope_type", scaling.get("type")) != "yarn":
        return 0
    if "truncate" in inspect.signature(YarnRoPE.__init__).parameters:  # an mlx-lm that reads it itself
        return 0
    ropes = [m for _, m in model.named_modules() if isinstance(m, YarnRoPE)]
    base = text.get("rope_theta", config.get("rope_theta"))
    for rope in ropes:
        rope._freqs = _untruncated_yarn_freqs(rope.dims, base, scaling)
    return len(ropes)


def _untruncated_yarn_freqs(dims: int, base: float, scaling: dict[str, Any]) -> Any:
    """YaRN's frequencies (mlx-lm's `YarnRoPE` formula) with the correction range's ends left unrounded."""
    import mlx.core as mx

    factor, original = scaling["factor"], scaling.get("original_max_position_embeddings", 4096)

    def correction_dim(rotations: float) -> float:
        return dims * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(correction_dim(scaling.get("beta_fast", 32)), 0)
    high = min(correction_dim(scaling.get("beta_slow", 1)), dims - 1)
    ramp = mx.clip((mx.arange(dims // 2, dtype=mx.float32) - low) / max(high - low, 0.001), 0, 1)
    extra = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    inter = factor * extra
    keep = 1.0 - ramp
    return (inter * extra) / (inter * keep + extra * (1 - keep))


def _logits(model: Any, tokens: list[int]) -> Any:
    import mlx.core as mx

    return model(mx.array([tokens]))[0].astype(mx.float32)


def greedy_float32(model_dir: str | Path, prompts: list[list[int]], max_tokens: int) -> list[Generation]:
    """Greedy-decode each prompt (token ids) with MLX in float32."""
    import mlx.core as mx

    model = load_float32(model_dir)
    results = []
    for prompt in prompts:
        tokens, logprobs = list(prompt), []
        for _ in range(max_tokens):
            logits = _logits(model, tokens)[-1]
            logp = logits - mx.logsumexp(logits)
            token = int(mx.argmax(logp).item())
            tokens.append(token)
            logprobs.append(float(logp[token].item()))
        results.append(Generation(tokens[len(prompt):], logprobs))
    return results


def logit_blocks(model: Any, sequence: list[int], rows: int) -> Iterator[torch.Tensor]:
    """Float32 logits of `sequence` (row i predicts token i + 1), `rows` positions at a time: the backbone once,
    then the model's own `__call__` per block of hidden states, so that what it does after its output layer
    (Gemma 2/4's soft-capping, Cohere's `logit_scale`, Granite's `logits_scaling`) is MLX's own, and `[len, vocab]`
    is never held at once."""
    import mlx.core as mx

    lm = getattr(model, "language_model", model)  # mlx-lm wraps vision-language models' text model (Qwen3.5)
    backbone = next(lm[n] for n in BACKBONES if n in lm)
    cls = type(backbone)
    hidden = backbone(mx.array([sequence[:-1]]), **_required_nones(cls.__call__))
    original = cls.__call__
    try:
        for start in range(0, hidden.shape[1], rows):
            block = hidden[:, start:start + rows]
            cls.__call__ = lambda self, *args, _block=block, **kwargs: _block  # the model's head on this block
            logits = lm(mx.zeros(block.shape[:2], dtype=mx.int32))[0].astype(mx.float32)
            yield torch.from_numpy(np.array(logits))
    finally:
        cls.__call__ = original


# where mlx-lm's models keep their decoder stack (Nemotron-H: `backbone`)
BACKBONES = ("model", "backbone", "transformer")


def _required_nones(call: Callable[..., Any]) -> dict[str, None]:
    """None for each parameter after the inputs that a backbone's `__call__` requires (Phi's and StableLM's `cache`)."""
    params = list(inspect.signature(call).parameters.values())[2:]
    return {p.name: None for p in params if p.default is p.empty
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
