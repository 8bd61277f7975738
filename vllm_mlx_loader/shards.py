"""The weight shards of a checkpoint directory and what their headers say: which files mlx-lm loads as weights
(its own glob; the index is never trusted), every tensor's name, dtype and shape, and who wrote them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors import safe_open

from .errors import MLXCheckpointError
from .files import MAX_INDEX_BYTES, check_inside, read_json
from .stored import TensorRef

logger = logging.getLogger("vllm.mlx_loader")  # vLLM's logging configuration covers it; no vLLM import here

SHARD_GLOB = "model*.safetensors"  # mlx-lm's own: `adapters.safetensors` (LoRA) and others are not weights
INDEX = "model.safetensors.index.json"


def list_shards(directory: Path) -> tuple[Path, ...]:
    # The index is never read (it may be stale or copied from another repository): the files on disk are
    # the truth, so an index cannot point the loader at other files.
    shards = tuple(sorted(directory.glob(SHARD_GLOB)))
    ignored = sorted(p.name for p in directory.glob("*.safetensors") if p not in shards)
    if not shards:
        found = f" (found only {', '.join(ignored)}, which mlx-lm does not load as weights)" if ignored else ""
        raise MLXCheckpointError(str(directory), f"has a config.json but no {SHARD_GLOB} weight files{found}.")
    if ignored:
        logger.info("%s: ignoring %s (not %s: mlx-lm does not load it as weights either)",
                    directory, ", ".join(ignored), SHARD_GLOB)
    for shard in shards:
        check_inside(shard, directory)
    return shards


def read_headers(shards: tuple[Path, ...]) -> dict[str, TensorRef]:
    tensors: dict[str, TensorRef] = {}
    for shard in shards:
        try:
            with safe_open(shard, framework="pt") as f:
                for name in f.keys():
                    view = f.get_slice(name)
                    ref = TensorRef(name, shard, view.get_dtype(), tuple(view.get_shape()))
                    if 0 in ref.shape:
                        raise MLXCheckpointError(ref.where(), f"has zero elements (shape {list(ref.shape)}).",
                                                 "The checkpoint is damaged: re-download or re-convert it.")
                    if name in tensors:
                        raise MLXCheckpointError(
                            str(shard), f"tensor {name!r} is also in {tensors[name].file.name}.",
                            "Remove the stray shard: each tensor must be stored once.",
                        )
                    tensors[name] = ref
        except MLXCheckpointError:
            raise
        except Exception as e:  # safetensors raises its own types for a damaged header
            raise MLXCheckpointError(
                str(shard), f"is not a readable safetensors file ({type(e).__name__}: {e}).",
                "Re-download or re-convert this shard.",
            ) from None
    return tensors


def is_unquantized_mlx_conversion(directory: Path, config: dict[str, Any]) -> bool:
    """An MLX conversion without quantization (`mlx_lm.convert` without `-q`, or with `-d`): config.json has no
    quantization entries and every shard says `"format": "mlx"`, as MLX's safetensors writer marks them."""
    if "quantization" in config or "quantization_config" in config:
        return False
    try:
        return written_by_mlx(list_shards(directory))
    except MLXCheckpointError:
        return False


def written_by_mlx(shards: tuple[Path, ...]) -> bool:
    try:
        for shard in shards:
            with safe_open(shard, framework="pt") as f:
                if (f.metadata() or {}).get("format") != "mlx":
                    return False
    except Exception:  # a damaged header: read_headers names it, if it gets that far
        return False
    return True


def missing_shard_hint(directory: Path) -> str:
    """Name the shards the index expects but the directory lacks (the index is only read for this hint, checked and
    capped as config.json is; its names are only compared with the directory's, never opened)."""
    path = directory / INDEX
    if not path.exists():
        return ""
    try:
        weight_map = read_json(path, directory, MAX_INDEX_BYTES).get("weight_map")
    except MLXCheckpointError:
        return ""
    if not isinstance(weight_map, dict):
        return ""
    present = {p.name for p in directory.glob(SHARD_GLOB)}
    absent = sorted({Path(f).name for f in weight_map.values() if isinstance(f, str)} - present)
    return f"{INDEX} names {', '.join(absent)}, not in the directory. " if absent else ""
