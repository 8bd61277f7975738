"""Prepare vLLM's engine arguments for an MLX checkpoint, before the model config is built.

An MLX `config.json` carries `quantization_config` without `quant_method`. Plain vLLM then treats the
model as unquantized, but vllm-ascend's ModelSlim config claims any such config on an NPU and model
init fails (docs/compatibility.md). The weights reach the model dense, so the right answer on every
platform is "no quantization config": the hook adds `hf_overrides={"quantization_config": None}` to a
dict (or wraps a callable), and removes the attribute from the built config, which transformers 4.x
cannot serialise while it is None (`hf_compat`). It also checks a local checkpoint up front, so a bad
one fails before any worker starts, and picks the MLX load format for an MLX checkpoint given with the
default `--load-format auto`, as a local directory or a Hugging Face repo id: a quantized one, or a local
unquantized conversion of a family whose conversion renamed or changed tensors (vLLM's default loader would
read MLX's names and values). config.json is read as the loader reads it (`files.read_json`): a link out of the
checkpoint, a FIFO or a file of many MB is refused, never waited on. A vision-language model whose MLX checkpoint
holds only the language model (mlx-lm drops the vision tower) is served with `--language-model-only`. With
`--quantization mlx` (opt-in W4A16) the override is instead the config `quant_config.py` reads: quant_method "mlx"
and one entry per quantized module of the checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from vllm.logger import init_logger

from ..architectures import adapter_for, holds_language_model_only
from ..errors import MLXCheckpointError
from ..files import read_json
from ..format import MLXCheckpoint, read_checkpoint
from ..hf_compat import QUANTIZATION_CONFIG, WithoutQuantizationConfig, WithQuantizationConfig, drop_quantization_config
from ..quantization import is_mlx_config
from ..shards import is_unquantized_mlx_conversion
from ..stored import QuantizedModule
from . import compat
from .loader import LOAD_FORMATS

logger = init_logger("vllm.mlx_loader")
W4A16 = "mlx"  # --quantization mlx: 4-bit affine linear layers stay packed (quant_config.NAME)


def without_quantization_config(overrides: Any) -> Any:
    """The user's `hf_overrides` (a dict, a callable or None) plus "no quantization config".

    A dict stays a dict, because vLLM reads some keys of a dict override elsewhere (`max_model_len`,
    `model_type`); a callable is wrapped.
    """
    if isinstance(overrides, WithoutQuantizationConfig):
        return overrides
    if callable(overrides):
        return WithoutQuantizationConfig(overrides)
    return {**(overrides or {}), QUANTIZATION_CONFIG: None}


def with_w4a16_config(overrides: Any, ckpt: MLXCheckpoint) -> Any:
    """The user's `hf_overrides` plus the quantization config `--quantization mlx` reads: quant_method "mlx" (which
    vllm-ascend's ModelSlim override does not claim) and one entry per quantized linear-shaped module, as the loader
    reads the shards."""
    from .quant_config import NAME, module_entry

    modules = {
        w.name.removesuffix(".weight"): module_entry(w.source.params.bits, w.source.params.group_size,
                                                     w.source.params.mode)
        for w in ckpt.weights
        if isinstance(w.source, QuantizedModule) and w.index is None and w.inverse is None
        and w.name.endswith(".weight")
    }
    tied = not any(w.name.endswith("lm_head.weight") for w in ckpt.weights)
    value = {"quant_method": NAME, "modules": modules, "tied": tied, "experts": expert_entries(ckpt)}
    if isinstance(overrides, WithoutQuantizationConfig):
        overrides = overrides.user
    if callable(overrides):
        return WithQuantizationConfig(value, overrides)
    return {**(overrides or {}), QUANTIZATION_CONFIG: value}


_EXPERT_WEIGHT = re.compile(r"(.+\.experts)\.(\d+)\.([^.]+)\.weight")


def expert_entries(ckpt: MLXCheckpoint) -> dict[str, dict[str, Any]]:
    """One entry per mixture-of-experts layer whose experts are stack entries of quantized modules: the prefix of
    the experts' names -> their bits, group size and mode (mode "mixed" where they differ), projections and count."""
    from .quant_config import module_entry

    kinds: dict[str, set[tuple[int, int, str]]] = {}
    projections: dict[str, dict[str, None]] = {}
    counts: dict[str, int] = {}
    for w in ckpt.weights:
        m = _EXPERT_WEIGHT.fullmatch(w.name)
        if m is None:
            continue
        prefix, e, proj = m.group(1), int(m.group(2)), m.group(3)
        packable = isinstance(w.source, QuantizedModule) and w.index is not None and w.inverse is None
        params = w.source.params if packable else None
        kinds.setdefault(prefix, set()).add(
            (params.bits, params.group_size, params.mode) if params else (0, 0, "unquantized"))
        projections.setdefault(prefix, {})[proj] = None
        counts[prefix] = max(counts.get(prefix, 0), e + 1)
    entries = {}
    for prefix, kind in kinds.items():
        bits, group_size, mode = kind.pop() if len(kind) == 1 else (0, 0, "mixed")
        entries[prefix] = {**module_entry(bits, group_size, mode), "projections": list(projections[prefix]),
                           "count": counts[prefix]}
    return entries


def local_checkpoint(model: str, local: Path | None, revision: str | None) -> Path:
    """The checkpoint's directory on disk; a Hugging Face repo id is downloaded first (the loader would anyway)."""
    if local is not None:
        return local
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, revision=revision, allow_patterns=["*.json", "*.safetensors"]))


def model_config_json(model: str, revision: str | None) -> tuple[dict[str, Any] | None, Path | None]:
    """(config.json, the local directory holding the checkpoint) of a local directory or a Hugging Face repo id
    (from the cache, or the hub unless offline, as vLLM itself reads it). Read as the loader reads it: inside the
    directory (or the cache's blobs), a regular file, capped in size (`files.read_json`). (None, None) where
    there is none or it cannot be read: vLLM then reports its own error."""
    try:
        if os.path.isdir(model):
            path = Path(model) / "config.json"
        else:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json", revision=revision)  # no network round trip
            path = Path(cached if isinstance(cached, str) else hf_hub_download(model, "config.json", revision=revision))
        return read_json(path, path.parent), path.parent
    except Exception:  # no such repo, offline without a cached copy, not JSON: not ours to report
        return None, None


def needs_mlx_loader(config: dict[str, Any], directory: Path | None) -> bool:
    """An MLX-quantized checkpoint, or an unquantized MLX conversion of a family whose conversion renamed or
    changed tensors (vLLM's default loader would read MLX's names and values)."""
    if is_mlx_config(config):
        return True
    if directory is None:
        return False
    try:
        adapter = adapter_for(config, str(directory / "config.json"))
    except MLXCheckpointError:
        return False
    return not adapter.stores_hf_layout and is_unquantized_mlx_conversion(directory, config)


def prepare_engine_args(args: Any) -> None:
    """Adjust `EngineArgs` in place for an MLX checkpoint; leave any other model alone."""
    model = args.model if isinstance(args.model, str) else None
    local = Path(model) if model is not None and os.path.isdir(model) else None
    config, directory = None, None
    if args.load_format in ("auto", *LOAD_FORMATS) and model is not None:
        config, directory = model_config_json(model, getattr(args, "revision", None))
    if args.load_format == "auto" and config is not None and needs_mlx_loader(config, directory):
        logger.info("%s is an MLX checkpoint: using --load-format %s", model, LOAD_FORMATS[0])
        args.load_format = LOAD_FORMATS[0]
    w4a16 = getattr(args, "quantization", None) == W4A16
    if args.load_format not in LOAD_FORMATS:
        if w4a16:
            raise MLXCheckpointError(
                str(model), "--quantization mlx keeps an MLX checkpoint's 4-bit weights packed, and this is not an "
                f"MLX checkpoint (or --load-format {args.load_format} was asked for).",
                "Drop --quantization mlx, or pass an MLX checkpoint with --load-format mlx-4bit.",
            )
        return
    if w4a16:
        ckpt = read_checkpoint(local_checkpoint(model, local, getattr(args, "revision", None)))
        args.hf_overrides = with_w4a16_config(args.hf_overrides, ckpt)
    else:
        if local is not None:
            read_checkpoint(local)  # raises MLXCheckpointError naming the file and tensor
        args.hf_overrides = without_quantization_config(args.hf_overrides)
    if config is not None and holds_language_model_only(config) and not getattr(args, "language_model_only", True):
        # mlx-lm dropped the vision tower: without the flag vLLM would build it and ask for an image processor
        logger.info("%s holds only the language model of %s: serving it with --language-model-only",
                    model, config["architectures"][0])
        args.language_model_only = True


def finish_model_config(args: Any, model_config: Any) -> None:
    if args.load_format in LOAD_FORMATS and getattr(args, "quantization", None) != W4A16:
        drop_quantization_config(model_config.hf_config)


def install() -> None:
    """Have vLLM run `prepare_engine_args` before it builds a model config, and `finish_model_config` after
    (idempotent)."""
    compat.wrap_create_model_config(prepare_engine_args, finish_model_config)
