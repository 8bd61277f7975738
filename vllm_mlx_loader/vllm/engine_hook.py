"""Prepare vLLM's engine arguments for an MLX checkpoint, before the model config is built.

An MLX `config.json` carries `quantization_config` without `quant_method`. Plain vLLM then treats the
model as unquantized, but vllm-ascend's ModelSlim config claims any such config on an NPU and model
init fails (docs/compatibility.md). The weights reach the model dense, so the right answer on every
platform is "no quantization config": the hook adds `hf_overrides={"quantization_config": None}` to a
dict (or wraps a callable), and removes the attribute from the built config, which transformers 4.x
cannot serialise while it is None (`hf_compat`). It also checks a local checkpoint up front, so a bad
one fails before any worker starts, and picks the MLX load format for an MLX checkpoint given with the
default `--load-format auto`, as a local directory or a Hugging Face repo id. A vision-language model whose MLX
checkpoint holds only the language model (mlx-lm drops the vision tower) is served with `--language-model-only`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from vllm.logger import init_logger

from ..architectures import holds_language_model_only
from ..format import is_mlx_config, read_checkpoint
from ..hf_compat import QUANTIZATION_CONFIG, WithoutQuantizationConfig, drop_quantization_config
from .loader import LOAD_FORMATS

logger = init_logger("vllm.mlx_loader")

_SENTINEL = "_vllm_mlx_loader_hook"


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


def model_config_json(model: str, revision: str | None) -> dict[str, Any] | None:
    """config.json of a local directory or a Hugging Face repo id (from the cache, or the hub unless offline,
    as vLLM itself reads it); None where there is none or it cannot be read: vLLM then reports its own error."""
    try:
        if os.path.isdir(model):
            path = Path(model) / "config.json"
        else:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json", revision=revision)  # no network round trip
            path = Path(cached if isinstance(cached, str) else hf_hub_download(model, "config.json", revision=revision))
        config = json.loads(path.read_text())
    except Exception:  # no such repo, offline without a cached copy, not JSON: not ours to report
        return None
    return config if isinstance(config, dict) else None


def prepare_engine_args(args: Any) -> None:
    """Adjust `EngineArgs` in place for an MLX checkpoint; leave any other model alone."""
    model = args.model if isinstance(args.model, str) else None
    local = Path(model) if model is not None and os.path.isdir(model) else None
    config = None
    if args.load_format in ("auto", *LOAD_FORMATS) and model is not None:
        config = model_config_json(model, getattr(args, "revision", None))
    if args.load_format == "auto" and config is not None and is_mlx_config(config):
        logger.info("%s is an MLX-quantized checkpoint: using --load-format %s", model, LOAD_FORMATS[0])
        args.load_format = LOAD_FORMATS[0]
    if args.load_format not in LOAD_FORMATS:
        return
    if local is not None:
        read_checkpoint(local)  # raises MLXCheckpointError naming the file and tensor
    args.hf_overrides = without_quantization_config(args.hf_overrides)
    if config is not None and holds_language_model_only(config) and not getattr(args, "language_model_only", True):
        # mlx-lm dropped the vision tower: without the flag vLLM would build it and ask for an image processor
        logger.info("%s holds only the language model of %s: serving it with --language-model-only",
                    model, config["architectures"][0])
        args.language_model_only = True


def install() -> None:
    """Wrap `EngineArgs.create_model_config` once (idempotent)."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, _SENTINEL, False):
        return

    @functools.wraps(original)
    def create_model_config(self: EngineArgs):  # type: ignore[no-untyped-def]
        prepare_engine_args(self)
        model_config = original(self)
        if self.load_format in LOAD_FORMATS:
            drop_quantization_config(model_config.hf_config)
        return model_config

    setattr(create_model_config, _SENTINEL, True)
    EngineArgs.create_model_config = create_model_config  # type: ignore[method-assign]
