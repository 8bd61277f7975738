"""Quantized modules assembled from their stored parts: a module `P` is quantized iff `P.scales` exists (mlx-lm's
own rule); its packed `weight`, `scales`, `biases` (affine) and `global_scale` (nvfp4) are checked against each
other and against the module's quantization parameters before any tensor is read."""

from __future__ import annotations

from typing import Any

from .errors import MLXCheckpointError
from .quantization import inferred_fp_params, module_params
from .stored import QuantizedModule, QuantParams, TensorRef, describe_global_scale_shapes, global_scale_shapes

SCALE_DTYPES = ("BF16", "F16", "F32")  # affine scales and biases, as safetensors names them
PARTS = ("scales", "biases", "global_scale")  # what sits beside a quantized module's packed weight


def quantized_module(path: str, tensors: dict[str, TensorRef], quant: dict[str, Any]) -> QuantizedModule:
    weight, scales = tensors[f"{path}.weight"], tensors[f"{path}.scales"]
    biases, global_scale = tensors.get(f"{path}.biases"), tensors.get(f"{path}.global_scale")
    params = module_params(quant, path, scales.where())
    if params is None:
        raise MLXCheckpointError(
            scales.where(), f"exists, but config.json quantization[{path!r}] is false (unquantized).",
            "The config and the tensors disagree: re-convert the checkpoint.",
        )
    if path not in quant and params.mode == "affine" and scales.dtype == "U8" and biases is None:
        params = inferred_fp_params(weight, scales) or params  # as mlx-lm 0.32 infers it
    if weight.dtype != "U32":
        raise MLXCheckpointError(weight.where(), f"expected packed codes of dtype U32, found {weight.dtype}.")
    if len(weight.shape) < 2 or weight.shape[:-1] != scales.shape[:-1]:
        raise MLXCheckpointError(
            weight.where(),
            f"expected shape [{', '.join(map(str, scales.shape[:-1]))}, ...] to match {path}.scales "
            f"{list(scales.shape)}, found {list(weight.shape)}.",
        )
    if global_scale is not None and params.mode != "nvfp4":
        raise MLXCheckpointError(
            global_scale.where(), f"is a global scale, which only nvfp4 has, not {params.mode}."
        )
    if params.mode == "affine":
        _check_affine_parts(path, scales, biases)
    else:
        _check_fp_parts(path, params, scales, biases, global_scale, quant.get(path))
    module = QuantizedModule(path, params, weight, scales, biases, global_scale)
    in_features = module.shape[-1]
    if weight.shape[-1] * 32 != in_features * params.bits:
        raise MLXCheckpointError(
            weight.where(),
            f"expected {in_features * params.bits / 32:g} packed columns for {in_features} inputs at "
            f"bits={params.bits} (group_size={params.group_size}, {scales.shape[-1]} scale columns), "
            f"found {weight.shape[-1]}.",
            "config.json's quantization entry does not match the tensors.",
        )
    return module


def _check_affine_parts(path: str, scales: TensorRef, biases: TensorRef | None) -> None:
    if scales.dtype not in SCALE_DTYPES:
        hint = "U8 scales belong to the mxfp4/mxfp8/nvfp4 modes, not affine." if scales.dtype == "U8" else ""
        raise MLXCheckpointError(
            scales.where(), f"expected affine scales of dtype {'/'.join(SCALE_DTYPES)}, found {scales.dtype}.", hint
        )
    if biases is None:
        raise MLXCheckpointError(
            scales.where(), f"is affine-quantized but {path}.biases is missing.",
            "The checkpoint is incomplete: re-download or re-convert it.",
        )
    if biases.dtype != scales.dtype or biases.shape != scales.shape:
        raise MLXCheckpointError(
            biases.where(),
            f"expected dtype {scales.dtype} and shape {list(scales.shape)} (as {path}.scales), "
            f"found {biases.dtype} {list(biases.shape)}.",
        )


def _check_fp_parts(
    path: str, params: QuantParams, scales: TensorRef, biases: TensorRef | None, global_scale: TensorRef | None,
    entry: Any,
) -> None:
    mode = params.mode
    if scales.dtype != "U8":
        raise MLXCheckpointError(
            scales.where(), f"expected {mode} scales of dtype U8 ({'E4M3' if mode == 'nvfp4' else 'E8M0'} codes), "
            f"found {scales.dtype}.",
            "Float scales belong to the affine mode: config.json's mode does not match the tensors.",
        )
    if biases is not None:
        raise MLXCheckpointError(biases.where(), f"is present, but {mode} has no biases (only affine does).")
    wants_global = isinstance(entry, dict) and entry.get("global_scale") is True
    if global_scale is None:
        if wants_global:
            raise MLXCheckpointError(
                scales.where(), f"config.json says {path} has a global scale, but {path}.global_scale is missing.",
                "The checkpoint is incomplete: re-download or re-convert it.",
            )
        return
    if global_scale.dtype != "F32" or global_scale.shape not in global_scale_shapes(scales.shape):
        raise MLXCheckpointError(
            global_scale.where(),
            f"expected a float32 global scale of shape {describe_global_scale_shapes(scales.shape)}, "
            f"found {global_scale.dtype} {list(global_scale.shape)}.",
        )


def plain(ref: TensorRef) -> TensorRef:
    if ref.dtype == "U32":
        raise MLXCheckpointError(
            ref.where(), f"holds packed U32 codes but {ref.name.rpartition('.')[0]}.scales is missing.",
            "The checkpoint is incomplete: re-download or re-convert it.",
        )
    return ref
