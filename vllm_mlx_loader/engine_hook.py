"""Prepare vLLM's engine arguments for an MLX checkpoint, before the model config is built.

An MLX `config.json` carries `quantization_config` without `quant_method`. Plain vLLM then treats the
model as unquantized, but vllm-ascend's ModelSlim config claims any such config on an NPU and model
init fails (docs/compatibility.md). The weights reach the model dense, so the right answer on every
platform is "no quantization config": the hook adds `hf_overrides={"quantization_config": None}` to a
dict (or wraps a callable), and removes the attribute from the built config, which transformers 4.x
cannot serialise while it is None (`hf_compat`). It also checks a local checkpoint up front, so a bad
one fails before any worker starts, and picks the MLX load format for an MLX checkpoint given with the
default `--load-format auto`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from vllm.logger import init_logger

from .format import is_mlx_checkpoint, read_checkpoint
from .hf_compat import QUANTIZATION_CONFIG, WithoutQuantizationConfig, drop_quantization_config
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


def prepare_engine_args(args: Any) -> None:
    """Adjust `EngineArgs` in place for an MLX checkpoint; leave any other model alone."""
    local = Path(args.model) if isinstance(args.model, str) and os.path.isdir(args.model) else None
    if args.load_format == "auto" and local is not None and is_mlx_checkpoint(local):
        logger.info("%s is an MLX-quantized checkpoint: using --load-format %s", local, LOAD_FORMATS[0])
        args.load_format = LOAD_FORMATS[0]
    if args.load_format not in LOAD_FORMATS:
        return
    if local is not None:
        read_checkpoint(local)  # raises MLXCheckpointError naming the file and tensor
    args.hf_overrides = without_quantization_config(args.hf_overrides)


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
