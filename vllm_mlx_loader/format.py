"""Read an MLX checkpoint directory into plain, frozen descriptions; no tensor data, no device.

From the files on disk to the weights the model is fed, top to bottom: config.json (`files`) and what it says
about quantization (`quantization`); the shards and their headers (`shards`); the quantized modules assembled
from their parts (`modules`); the family's adapter, which names the dense weights the model needs and how the
stored entries become them (`architectures`); then every weight's dense shape checked against the model's.
Everything is cross-checked before any tensor is read. docs/format.md describes the format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .architectures import adapter_for
from .architectures.vision_language import VISION_TOWER
from .errors import MLXCheckpointError
from .files import read_config
from .modules import PARTS, plain, quantized_module
from .quantization import quantization_config
from .shards import is_unquantized_mlx_conversion, list_shards, missing_shard_hint, read_headers
from .stored import Entry, QuantizedModule, QuantParams, TensorRef, Weight

__all__ = ["Entry", "MLXCheckpoint", "QuantParams", "QuantizedModule", "TensorRef", "Weight", "read_checkpoint"]

logger = logging.getLogger("vllm.mlx_loader")  # vLLM's logging configuration covers it; no vLLM import here


@dataclass(frozen=True)
class MLXCheckpoint:
    directory: Path
    config: dict[str, Any]
    architecture: str
    shards: tuple[Path, ...]
    entries: tuple[Entry, ...]  # what the shards store, in shard order
    weights: tuple[Weight, ...]  # what the model is fed, one per dense weight, lm_head last

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def quantized(self) -> tuple[QuantizedModule, ...]:
        return tuple(e for e in self.entries if isinstance(e, QuantizedModule))


def read_checkpoint(directory: str | Path) -> MLXCheckpoint:
    """Describe the MLX checkpoint in `directory`, or raise MLXCheckpointError naming what is wrong."""
    directory = Path(directory)
    config = read_config(directory)
    config_where = str(directory / "config.json")
    quant = quantization_config(config, config_where, is_unquantized_mlx_conversion(directory, config))
    adapter = adapter_for(config, config_where)
    expected = adapter.expected_weights(config, config_where)
    shards = list_shards(directory)
    tensors = read_headers(shards)

    prefixes = {n[: -len(".scales")] for n in tensors if n.endswith(".scales")}
    if prefixes and "quantization" not in config:  # an unquantized conversion has nothing quantized
        raise MLXCheckpointError(
            tensors[f"{min(prefixes)}.scales"].where(), "holds quantization scales, but config.json has no "
            "'quantization' entry.", "The config and the tensors disagree: re-convert the checkpoint.",
        )
    entries: list[Entry] = []
    for name, ref in tensors.items():
        prefix, _, leaf = name.rpartition(".")
        if prefix in prefixes:
            if leaf == "weight":
                entries.append(quantized_module(prefix, tensors, quant))
            elif leaf not in PARTS:
                entries.append(plain(ref))
        elif leaf == "biases" and f"{prefix}.weight" in tensors and tensors[f"{prefix}.weight"].dtype == "U32":
            raise MLXCheckpointError(
                ref.where(), f"is present but {prefix}.scales is missing.",
                "The checkpoint is incomplete: re-download or re-convert it.",
            )
        else:
            entries.append(plain(ref))
    for prefix in sorted(prefixes):
        if f"{prefix}.weight" not in tensors:
            raise MLXCheckpointError(
                tensors[f"{prefix}.scales"].where(), f"has no packed {prefix}.weight beside it.",
                "The checkpoint is incomplete: re-download or re-convert it.",
            )
    entries = _language_model_entries(entries, adapter.text_only, str(directory))
    weights = adapter.weights(entries, config, config_where)
    for weight in weights:
        _check_dense_shape(weight, expected)
    missing = sorted(set(expected) - {w.name for w in weights})
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise MLXCheckpointError(
            str(directory), f"the shards lack weights that {config['architectures'][0]} needs: {shown}.",
            missing_shard_hint(directory) + "The checkpoint is incomplete: re-download or re-convert it.",
        )
    # Shards list `lm_head` right before `model.embed_tokens`: the two largest tensors. Whoever consumes the
    # stream (vLLM's loading loop, our generator) still holds one while the next is made, so keep them apart.
    weights.sort(key=lambda w: w.name.startswith("lm_head."))
    return MLXCheckpoint(directory, config, config["architectures"][0], shards, tuple(entries), tuple(weights))


def _language_model_entries(entries: list[Entry], text_only: bool, where: str) -> list[Entry]:
    """mlx-vlm's conversions keep the vision tower (mlx-lm's drop it): for a family served as its language model
    alone the tower is skipped, never read; for any other it is refused by name."""
    tower = [e for e in entries if e.name.startswith(VISION_TOWER)]
    if tower and not text_only:
        raise MLXCheckpointError(
            _entry_where(tower[0]), "belongs to a vision tower (mlx-vlm keeps it), which this family's model has not.",
            "Serve a conversion by mlx_lm.convert, which keeps the language model alone.",
        )
    if tower:
        logger.info("%s: skipping %d vision-tower tensors (an mlx-vlm conversion); serving the language model",
                    where, len(tower))
    return [e for e in entries if not e.name.startswith(VISION_TOWER)]


def _entry_where(entry: Entry) -> str:
    return (entry.weight if isinstance(entry, QuantizedModule) else entry).where()


def _check_dense_shape(weight: Weight, expected: dict[str, tuple[int, ...]]) -> None:
    where, name, shape = weight.where(), weight.name, weight.shape
    module = weight.source if isinstance(weight.source, QuantizedModule) else None
    want = expected.get(name)
    if want is None:
        raise MLXCheckpointError(
            where, f"{name!r} is not a weight of the model config.json describes.",
            "Is this the right config.json for these shards?",
        )
    if tuple(shape) == want:
        return
    hint = "Check that config.json belongs to these shards."
    if module is not None:
        p = module.params
        w_cols, s_cols = module.weight.shape[-1], module.scales.shape[-1]
        hint = (
            f"Dequantized with bits={p.bits}, group_size={p.group_size} (from config.json) the packed tensors "
            f"give {list(shape)}."
        )
        if (w_cols * 32) % want[-1] == 0 and want[-1] % s_cols == 0:
            hint += (
                f" The shapes fit bits={w_cols * 32 // want[-1]}, group_size={want[-1] // s_cols}: "
                "config.json's quantization entry does not match the tensors."
            )
    raise MLXCheckpointError(where, f"expected dense shape {list(want)} from config.json, found {list(shape)}.", hint)


