"""MLX itself as the independent reference, in float32 with mlx-lm (needs `mlx`; any platform).

mlx-lm runs its own quantized layers on the packed codes: scales, biases and activations in float32.
Nothing of this package's dequantization is shared, so a packing or bit-order bug shows here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each chosen token


def load_float32(model_dir: str | Path) -> Any:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir))  # no tokenizer: callers pass token ids
    model.set_dtype(mx.float32)  # floating tensors only: packed codes stay, scales/biases become float32
    return model


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
    the output layer block by block, as mlx-lm's own `Model.__call__` applies it."""
    import mlx.core as mx

    lm = getattr(model, "language_model", model)  # mlx-lm wraps vision-language models' text model (Qwen3.5)
    hidden = lm.model(mx.array([sequence[:-1]]))[0]
    tied = getattr(lm.args, "tie_word_embeddings", False) or not hasattr(lm, "lm_head")
    head = lm.model.embed_tokens.as_linear if tied else lm.lm_head
    for start in range(0, hidden.shape[0], rows):
        yield torch.from_numpy(np.array(head(hidden[start:start + rows]).astype(mx.float32)))
