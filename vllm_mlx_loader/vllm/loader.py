"""The vLLM side: a `BaseModelLoader` that feeds dequantized MLX weights to the model's own `load_weights`.

vLLM's model class keeps doing what it does for a BF16 checkpoint (tensor-parallel sharding, fused
qkv / gate_up parameters); this loader only changes where the dense tensors come from. Under tensor
The tensors are `LazyDense`: the model's weight loaders narrow them to the rank's part as usual, and only
that part is read and dequantized; the weights of layers another pipeline stage holds are never made.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm
from vllm.config import ModelConfig
from vllm.config.load import LoadConfig
from vllm.logger import init_logger
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.weight_utils import download_weights_from_hf, enable_tqdm

from ..dequant import ROUNDINGS, Rounding
from ..errors import MLXCheckpointError
from ..format import read_checkpoint
from ..weights import LoadStats, iter_dense_weights, synchronize
from . import compat

logger = init_logger("vllm.mlx_loader")

LOAD_FORMATS = ("mlx-4bit", "mlx")
EXTRA_CONFIG_KEYS = ("rounding", "timing")
VISION_MODULES = ("visual", "vision_tower")  # vLLM's names for a vision encoder


def parse_extra_config(extra: dict | None) -> tuple[Rounding, bool]:
    """Check `--model-loader-extra-config` before anything is loaded; return the rounding mode and whether
    to time reading and dequantizing apart (on accelerators that waits for the device after every tensor)."""
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(EXTRA_CONFIG_KEYS))
    if unknown:
        raise MLXCheckpointError(
            "--model-loader-extra-config", f"unknown keys {unknown} for the MLX loader.",
            f"Allowed keys: {list(EXTRA_CONFIG_KEYS)}.",
        )
    rounding = extra.get("rounding", "fused")
    if rounding not in ROUNDINGS:
        raise MLXCheckpointError(
            "--model-loader-extra-config", f"rounding={rounding!r} is not one of {list(ROUNDINGS)}.",
            "'fused' (float32 math, one rounding) is the default; 'mlx_cpu' matches mx.dequantize bit for bit.",
        )
    timing = extra.get("timing", False)
    if not isinstance(timing, bool):
        raise MLXCheckpointError("--model-loader-extra-config", f"timing={timing!r} is not true or false.")
    return rounding, timing


class MLXModelLoader(BaseModelLoader):
    """Loads MLX-quantized checkpoints (`--load-format mlx-4bit` or `mlx`) as dense weights."""

    def __init__(self, load_config: LoadConfig) -> None:
        super().__init__(load_config)
        self.rounding, self.timing = parse_extra_config(load_config.model_loader_extra_config)

    def _model_dir(self, model_config: ModelConfig) -> Path:
        if os.path.isdir(model_config.model):
            return Path(model_config.model)
        return Path(
            download_weights_from_hf(
                model_config.model, self.load_config.download_dir,
                allow_patterns=["*.safetensors", "*.json"], revision=model_config.revision,
            )
        )

    def download_model(self, model_config: ModelConfig) -> None:
        self._model_dir(model_config)

    @staticmethod
    def _packed_modules(model: nn.Module) -> set[str]:
        """The checkpoint modules `--quantization mlx` keeps 4-bit (none without it), its decisions logged once per
        class of layer."""
        from .linear_method import decisions

        counts, packed = decisions(model)
        for label, count in sorted(counts.items(), key=lambda item: -item[1]):
            logger.info("--quantization mlx: %d %s", count, label)
        return packed

    def load_weights(self, model: nn.Module, model_config: ModelConfig) -> None:
        start = time.perf_counter()
        ckpt = read_checkpoint(self._model_dir(model_config))
        device = next(model.parameters()).device
        stats = LoadStats(timed=self.timing or device.type == "cpu")
        packed = self._packed_modules(model)
        # lazy: each weight is made only as far as the model's loaders use it (a tensor-parallel rank's share, its
        # pipeline stage's layers, its expert-parallel rank's experts), and not at all where they skip it
        weights = iter_dense_weights(ckpt, device, model_config.dtype, self.rounding, stats, lazy=True, packed=packed)
        progress = tqdm(
            weights, total=len(ckpt.weights) + 2 * len(packed), desc="Loading MLX checkpoint",
            bar_format=compat.bar_format(),
            disable=not enable_tqdm(self.load_config.use_tqdm_on_load),
        )
        loaded = model.load_weights(progress)
        check_all_loaded(model, loaded, ckpt.directory)
        synchronize(device)  # once per load, so that the total is the device's work too
        phases = (
            f"reading {stats.read_s:.2f} s, dequantizing {stats.dequant_s:.2f} s, " if stats.timed
            else "reading and dequantizing overlapped (timing=true splits them), "
        )
        rank = compat.parallel_rank_description()
        logger.info(
            "Loaded MLX checkpoint (%d tensors, %d quantized, %.1f MB read from %d shard(s), %.1f MB dequantized) "
            "on %s%s: %stotal %.2f s",
            stats.tensors, len(ckpt.quantized), stats.bytes_read / 1e6, len(ckpt.shards),
            stats.bytes_dequantized / 1e6, device, rank, phases, time.perf_counter() - start,
        )


def check_all_loaded(model: nn.Module, loaded: set[str] | None, directory: Path) -> None:
    """Raise unless every parameter of `model` was written (vLLM 0.32 lets missing linears pass)."""
    if loaded is None:
        raise MLXCheckpointError(
            str(directory), f"{type(model).__name__}.load_weights did not report which parameters it loaded.",
            "vllm-mlx-loader cannot check this model for completeness; see the README's support table.",
        )
    missing = sorted({name for name, _ in model.named_parameters()} - set(loaded))
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        hint = "The checkpoint is incomplete or belongs to another model: re-download or re-convert it."
        if all(name.split(".")[0] in VISION_MODULES for name in missing):
            hint = (
                "mlx-lm keeps only the language model of a vision-language model (Qwen3.5): "
                "pass --language-model-only (LLM(..., language_model_only=True))."
            )
        raise MLXCheckpointError(str(directory), f"the checkpoint left model parameters uninitialised: {shown}.", hint)


def _is_registered() -> bool:
    return all(compat.registered_loader(f) is MLXModelLoader for f in LOAD_FORMATS)


def register_loader() -> None:
    from vllm.model_executor.model_loader import register_model_loader

    if _is_registered():
        return
    for load_format in LOAD_FORMATS:
        register_model_loader(load_format)(MLXModelLoader)

