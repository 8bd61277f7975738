"""MLX itself as the independent reference: greedy generation in float32 with mlx-lm (needs `mlx`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each chosen token


def greedy_float32(model_dir: str | Path, prompts: list[list[int]], max_tokens: int) -> list[Generation]:
    """Greedy-decode each prompt (token ids) with mlx-lm's model, scales and activations in float32."""
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(model_dir))
    model.set_dtype(mx.float32)  # floating tensors only: packed codes stay, scales/biases become float32
    results = []
    for prompt in prompts:
        tokens, logprobs = list(prompt), []
        for _ in range(max_tokens):
            logits = model(mx.array([tokens]))[0, -1].astype(mx.float32)
            logp = logits - mx.logsumexp(logits)
            token = int(mx.argmax(logp).item())
            tokens.append(token)
            logprobs.append(float(logp[token].item()))
        results.append(Generation(tokens[len(prompt):], logprobs))
    return results
