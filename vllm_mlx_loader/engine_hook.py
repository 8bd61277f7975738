"""Prepare vLLM's engine arguments for an MLX checkpoint, before the model config is built.

An MLX `config.json` carries `quantization_config` without `quant_method`. Plain vLLM then treats the
model as unquantized, but vllm-ascend's ModelSlim config claims any such config on an NPU and model
init fails (../shared/vllm-notes.md §2). The weights reach the model dense, so the right answer on
every platform is "no quantization": the hook adds `hf_overrides={"quantization_config": None}`.
It also checks a local checkpoint up front, so a bad one fails before any worker starts, and picks
the MLX load format for an MLX checkpoint given with the default `--load-format auto`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from vllm.logger import init_logger

from .format import is_mlx_checkpoint, read_checkpoint
from .loader import LOAD_FORMATS

logger = init_logger("vllm.mlx_loader")

_SENTINEL = "_vllm_mlx_loader_hook"


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
    if callable(args.hf_overrides):
        logger.warning(
            "hf_overrides is a function; vllm-mlx-loader cannot add quantization_config=None to it. "
            "On Ascend, make it set quantization_config to None for MLX checkpoints."
        )
        return
    args.hf_overrides = {**(args.hf_overrides or {}), "quantization_config": None}


def install() -> None:
    """Wrap `EngineArgs.create_model_config` once (idempotent)."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, _SENTINEL, False):
        return

    @functools.wraps(original)
    def create_model_config(self: EngineArgs):  # type: ignore[no-untyped-def]
        prepare_engine_args(self)
        return original(self)

    setattr(create_model_config, _SENTINEL, True)
    EngineArgs.create_model_config = create_model_config  # type: ignore[method-assign]
