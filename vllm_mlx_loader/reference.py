"""The float32 CPU reference: transformers' own model class on weights dequantized from the checkpoint.

It shares the dequantization with the device path (float32 math, no rounding here), so it isolates
what the device computes; a dequantization bug common to both is for the MLX column to catch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch import nn

from .errors import MLXCheckpointError
from .format import MLXCheckpoint
from .weights import iter_dense_weights


def reference_bytes(ckpt: MLXCheckpoint) -> int:
    """Host memory the float32 reference model needs (weights only)."""
    return sum(math.prod(e.shape) for e in ckpt.entries) * 4


def available_bytes() -> int:
    try:
        import psutil
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.virtual_memory().available)


def check_memory(ckpt: MLXCheckpoint, headroom: float = 1.15) -> None:
    need, have = reference_bytes(ckpt) * headroom, available_bytes()
    if need > have:
        raise MLXCheckpointError(
            str(ckpt.directory),
            f"the float32 CPU reference needs about {need / 2**30:.1f} GiB of host memory, "
            f"{have / 2**30:.1f} GiB is available.",
            "Run on a host with more memory, or pass --no-torch-reference to compare against MLX only.",
        )


def check_reference_can_load(ckpt: MLXCheckpoint) -> None:
    """Refuse, before any work, a checkpoint whose dense names transformers' model lacks (transformers 5 fuses
    MoE experts into 3-D parameters)."""
    import transformers

    from .architectures import adapter_for
    from .architectures.meta_model import model_shapes

    where = str(ckpt.directory / "config.json")
    params = model_shapes(ckpt.config, where, text_only=adapter_for(ckpt.config, where).text_only)
    unplaced = sorted(w.name for w in ckpt.weights if w.name not in params)
    if unplaced:
        raise MLXCheckpointError(
            str(ckpt.directory),
            f"the float32 torch reference cannot place {unplaced[0]!r} ({len(unplaced)} weights in all): "
            f"transformers {transformers.__version__}'s {ckpt.architecture} has no such parameter.",
            "Pass --no-torch-reference: the MLX column is the independent reference for this model.",
        )


def load_reference(ckpt: MLXCheckpoint) -> nn.Module:
    """Build the architecture's transformers model in float32 and fill it with dequantized weights (for a
    vision-language model whose checkpoint holds the language model alone, that language model: text-only
    logits need nothing else)."""
    from .architectures import adapter_for
    from .architectures.meta_model import build_model, language_model_name

    where = str(ckpt.directory / "config.json")
    adapter = adapter_for(ckpt.config, where)
    model = build_model(ckpt.config, where, text_only=adapter.text_only, device="cpu")
    model.float().eval()
    expected = adapter.expected_weights(ckpt.config, where)
    rename = language_model_name if adapter.text_only else str
    params = {rename(name): p for name, p in model.named_parameters()}
    written = set()
    # one dense tensor at a time: peak memory is the model plus one weight
    for name, tensor in iter_dense_weights(ckpt, "cpu", torch.float32):
        with torch.no_grad():
            params[name].copy_(tensor)
        written.add(name)
    if model.config.tie_word_embeddings:
        model.tie_weights()
        written.add("lm_head.weight")
    missing = sorted((set(params) & set(expected)) - written)
    if missing:
        raise MLXCheckpointError(str(ckpt.directory), f"the reference model has unwritten parameters: {missing}.")
    return model


@torch.inference_mode()
def reference_logit_blocks(model: nn.Module, sequence: list[int], rows: int) -> Iterator[torch.Tensor]:
    """Float32 logits of `sequence` (row i predicts token i + 1), `rows` positions at a time: the hidden states
    of the whole sequence once, the output layer block by block, so `[len, vocab]` is never held at once."""
    hidden = model.get_decoder()(input_ids=torch.tensor([sequence[:-1]])).last_hidden_state[0]
    head = model.get_output_embeddings()
    for start in range(0, hidden.shape[0], rows):
        yield head(hidden[start:start + rows]).float()
