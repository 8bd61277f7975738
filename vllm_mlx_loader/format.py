"""Read an MLX checkpoint directory into plain, frozen descriptions; no tensor data, no device.

A module `P` is quantized iff `P.scales` exists (mlx-lm's own rule); its parameters come from
`config["quantization"]` (or `quantization_config`), where a per-module entry `config["quantization"][P]`
(a dict, or `false`) overrides the global one. Everything is cross-checked against the tensor shapes
and the model's sizes before any tensor is read. docs/format.md describes the format.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from .architectures import Weight, adapter_for
from .architectures.vision_language import VISION_TOWER
from .errors import MLXCheckpointError
from .files import MAX_INDEX_BYTES, check_inside, read_config, read_json
from .stored import (
    MODE_DEFAULTS,
    Entry,
    QuantizedModule,
    QuantParams,
    TensorRef,
    describe_global_scale_shapes,
    global_scale_shapes,
)

__all__ = ["Entry", "MLXCheckpoint", "QuantParams", "QuantizedModule", "TensorRef", "Weight", "read_checkpoint"]

logger = logging.getLogger("vllm.mlx_loader")  # vLLM's logging configuration covers it; no vLLM import here

AFFINE_BITS = (1, 2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
FLOAT_DTYPES = ("BF16", "F16", "F32")
_GLOBAL_KEYS = ("group_size", "bits", "mode")
PARTS = ("scales", "biases", "global_scale")  # what sits beside a quantized module's packed weight
SHARD_GLOB = "model*.safetensors"  # mlx-lm's own: `adapters.safetensors` (LoRA) and others are not weights
INDEX = "model.safetensors.index.json"


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
                entries.append(_quantized_module(prefix, tensors, quant))
            elif leaf not in PARTS:
                entries.append(_plain(ref))
        elif leaf == "biases" and f"{prefix}.weight" in tensors and tensors[f"{prefix}.weight"].dtype == "U32":
            raise MLXCheckpointError(
                ref.where(), f"is present but {prefix}.scales is missing.",
                "The checkpoint is incomplete: re-download or re-convert it.",
            )
        else:
            entries.append(_plain(ref))
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
            _missing_shard_hint(directory) + "The checkpoint is incomplete: re-download or re-convert it.",
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


def _missing_shard_hint(directory: Path) -> str:
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


def _plain(ref: TensorRef) -> TensorRef:
    if ref.dtype == "U32":
        raise MLXCheckpointError(
            ref.where(), f"holds packed U32 codes but {ref.name.rpartition('.')[0]}.scales is missing.",
            "The checkpoint is incomplete: re-download or re-convert it.",
        )
    return ref


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


def inferred_fp_params(weight: TensorRef, scales: TensorRef) -> QuantParams | None:
    """mlx-lm 0.32's rule for a module config.json does not name: U8 scales mean a float mode, told apart by
    its one (bits, group_size) from the packed and scale columns; None where no float mode fits."""
    for mode in ("nvfp4", "mxfp4", "mxfp8"):
        group_size, bits = MODE_DEFAULTS[mode]
        if scales.dtype == "U8" and weight.shape[-1] * 32 == scales.shape[-1] * group_size * bits:
            return QuantParams(mode, bits, group_size)
    return None


def _quantized_module(path: str, tensors: dict[str, TensorRef], quant: dict[str, Any]) -> QuantizedModule:
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
    if scales.dtype not in FLOAT_DTYPES:
        hint = "U8 scales belong to the mxfp4/mxfp8/nvfp4 modes, not affine." if scales.dtype == "U8" else ""
        raise MLXCheckpointError(
            scales.where(), f"expected affine scales of dtype {'/'.join(FLOAT_DTYPES)}, found {scales.dtype}.", hint
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
