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
from .reference_placement import Placement, plan
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


def reference_plan(ckpt: MLXCheckpoint) -> dict[str, Placement] | str:
    """Where each streamed weight goes in transformers' model for this checkpoint (built on the meta device: no
    memory), or why transformers' model cannot take them (then the torch column is skipped, saying so)."""
    from .architectures.meta_model import build_model

    where = str(ckpt.directory / "config.json")
    try:
        model = build_model(ckpt.config, where, text_only=_text_only(ckpt))
    except MLXCheckpointError as e:
        return f"transformers cannot build it ({e.problem})"
    return _plan(ckpt, model, _model_tensors(model, _text_only(ckpt)))


def _text_only(ckpt: MLXCheckpoint) -> bool:
    from .architectures import adapter_for

    return adapter_for(ckpt.config, str(ckpt.directory / "config.json")).text_only


def _model_tensors(model: nn.Module, text_only: bool) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers (a router's `e_score_correction_bias`), by the names the
    streamed weights carry (a vision-language checkpoint's for a language model built alone)."""
    from .architectures.meta_model import language_model_name, stored_tensors

    rename = language_model_name if text_only else str
    tensors = {rename(name): t for name, t in stored_tensors(model)}
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # tied: made from the embeddings, never streamed
    return tensors


def _plan(ckpt: MLXCheckpoint, model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, Placement] | str:
    import transformers

    placed = plan(((w.name, w.shape) for w in ckpt.weights), model, {n: tuple(t.shape) for n, t in tensors.items()},
                  ckpt.config.get("model_type", ""))
    if isinstance(placed, str):
        return f"transformers {transformers.__version__}'s {ckpt.architecture}: {placed}"
    unwritten = sorted(set(tensors) - {p.param for p in placed.values()})
    if unwritten:
        return (f"transformers {transformers.__version__}'s {ckpt.architecture} has tensors the checkpoint does not "
                f"fill: {', '.join(unwritten[:4])}{', ...' if len(unwritten) > 4 else ''}")
    return placed


def load_reference(ckpt: MLXCheckpoint) -> nn.Module:
    """Build the architecture's transformers model in float32 and fill it with dequantized weights (for a
    vision-language model whose checkpoint holds the language model alone, that language model: text-only
    logits need nothing else). Experts transformers 5 fuses are written slice by slice (`reference_placement`)."""
    from .architectures.meta_model import build_model

    where = str(ckpt.directory / "config.json")
    text_only = _text_only(ckpt)
    model = build_model(ckpt.config, where, text_only=text_only, device="cpu")
    model.float().eval()
    tensors = _model_tensors(model, text_only)
    placed = _plan(ckpt, model, tensors)
    if isinstance(placed, str):
        raise MLXCheckpointError(str(ckpt.directory), f"the float32 torch reference cannot take it: {placed}.")
    # one dense tensor at a time: peak memory is the model plus one weight
    for name, tensor in iter_dense_weights(ckpt, "cpu", torch.float32):
        with torch.no_grad():
            placed[name].fill(tensors[placed[name].param], tensor)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


@torch.inference_mode()
def reference_logit_blocks(model: nn.Module, sequence: list[int], rows: int) -> Iterator[torch.Tensor]:
    """Float32 logits of `sequence` (row i predicts token i + 1), `rows` positions at a time: the hidden states
    of the whole sequence once, then the model's own `forward` per block of them, so that what it does after its
    output layer (Gemma 2's soft-capping, Cohere's `logit_scale`, Granite's `logits_scaling`) is transformers' own,
    and `[len, vocab]` is never held at once."""
    import dataclasses

    decoder = model.get_decoder()
    output = decoder(input_ids=torch.tensor([sequence[:-1]]))  # its own output type (MoE decoders add fields)
    hidden = output.last_hidden_state
    if type(model).forward is nn.Module.forward:  # a head alone (`WithHead`)
        for start in range(0, hidden.shape[1], rows):
            yield model.get_output_embeddings()(hidden[0, start:start + rows]).float()
        return
    cls = type(decoder)
    original = cls.forward
    try:
        for start in range(0, hidden.shape[1], rows):
            block = hidden[:, start:start + rows]
            made = dataclasses.replace(output, last_hidden_state=block)
            cls.forward = lambda self, *args, _made=made, **kwargs: _made
            yield model(input_ids=torch.zeros(block.shape[:2], dtype=torch.long)).logits[0].float()
    finally:
        cls.forward = original
