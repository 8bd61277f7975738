"""What config.json says about quantization: whether this is an MLX checkpoint at all, and each module's mode,
bits and group size (a per-module entry `quantization[P]`, a dict or `false`, overrides the global one; a module
the config does not name is inferred from its tensors as mlx-lm 0.32 does)."""

from __future__ import annotations

from typing import Any

from .errors import MLXCheckpointError
from .stored import AFFINE_BITS, MODE_DEFAULTS, QuantParams, TensorRef

GROUP_SIZES = (32, 64, 128)
_GLOBAL_KEYS = ("group_size", "bits", "mode")


def quantization_config(config: dict[str, Any], where: str, written_by_mlx: bool = False) -> dict[str, Any]:
    """The MLX quantization dict of a config.json, or an error saying why this is no MLX checkpoint. An
    unquantized conversion (`written_by_mlx`: its shards say so, and config.json has no quantization) gets {}."""
    hf = config.get("quantization_config")
    if isinstance(hf, dict) and hf.get("quant_method"):
        raise MLXCheckpointError(
            where,
            f"is not an MLX checkpoint: quantization_config.quant_method is {hf['quant_method']!r} "
            "(MLX writes no quant_method).",
            "Drop `--load-format mlx-4bit` and let vLLM pick its own loader.",
        )
    quant = config.get("quantization")
    if quant is None and isinstance(hf, dict):
        raise MLXCheckpointError(
            where,
            "is not an MLX checkpoint: it has a 'quantization_config' without 'quant_method' but no "
            "'quantization' entry, which is what mlx-lm writes and reads.",
            "If mlx_lm.convert made it, copy its quantization_config to a 'quantization' entry.",
        )
    if quant is None and written_by_mlx:
        return {}
    if not isinstance(quant, dict):
        raise MLXCheckpointError(
            where,
            "is not an MLX-quantized checkpoint: config.json has no 'quantization' entry.",
            "For a BF16/FP16 checkpoint drop `--load-format mlx-4bit` (vLLM's default loader reads it).",
        )
    return quant


def is_mlx_config(config: dict[str, Any]) -> bool:
    """mlx-lm's rule: a checkpoint is MLX-quantized when config.json has a `quantization` entry."""
    return isinstance(config.get("quantization"), dict)


def module_params(quant: dict[str, Any], path: str, where: str) -> QuantParams | None:
    """Quantization parameters of module `path`, or None where the config marks it unquantized."""
    entry = quant.get(path)
    if entry is False:
        return None
    if isinstance(entry, dict):
        spec, source = entry, f"config.json quantization[{path!r}]"
    elif entry is None:
        spec, source = {k: quant.get(k) for k in _GLOBAL_KEYS}, "config.json quantization"
    else:
        raise MLXCheckpointError(
            where, f"config.json quantization[{path!r}] must be an object or false, found {entry!r}."
        )
    mode = spec.get("mode") or "affine"  # a missing mode means affine, even under a global fp mode
    if not isinstance(mode, str) or mode not in MODE_DEFAULTS:
        raise MLXCheckpointError(
            where, f"{source} has unknown mode {mode!r} (MLX modes: {', '.join(MODE_DEFAULTS)})."
        )
    default_gs, default_bits = MODE_DEFAULTS[mode]
    bits = default_bits if spec.get("bits") is None else spec["bits"]
    group_size = default_gs if spec.get("group_size") is None else spec["group_size"]
    # `type(...) is int`: 32.0 == 32 (and True == 1) would pass a set membership test, then fail in slicing
    if mode != "affine":  # each float mode has exactly one (group_size, bits)
        if type(group_size) is not int or type(bits) is not int or (group_size, bits) != (default_gs, default_bits):
            raise MLXCheckpointError(
                where, f"{source} has group_size={group_size!r}, bits={bits!r}; MLX's {mode} has only "
                f"group_size={default_gs}, bits={default_bits} (integers).",
            )
        return QuantParams(mode, bits, group_size)
    if type(bits) is not int or bits not in AFFINE_BITS:
        raise MLXCheckpointError(where, f"{source} has bits={bits!r}; MLX affine bits are {AFFINE_BITS}.")
    if type(group_size) is not int or group_size not in GROUP_SIZES:
        raise MLXCheckpointError(where, f"{source} has group_size={group_size!r}; MLX group sizes are {GROUP_SIZES}.")
    return QuantParams(mode, bits, group_size)


def inferred_fp_params(weight: TensorRef, scales: TensorRef) -> QuantParams | None:
    """mlx-lm 0.32's rule for a module config.json does not name: U8 scales mean a float mode, told apart by
    its one (bits, group_size) from the packed and scale columns; None where no float mode fits."""
    for mode in ("nvfp4", "mxfp4", "mxfp8"):
        group_size, bits = MODE_DEFAULTS[mode]
        if scales.dtype == "U8" and weight.shape[-1] * 32 == scales.shape[-1] * group_size * bits:
            return QuantParams(mode, bits, group_size)
    return None
