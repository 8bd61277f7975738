"""transformers' model for a config.json, built on the meta device: the names and shapes of what a checkpoint of it
holds (parameters and persistent buffers).

This is how the loader knows which tensors a checkpoint must hold without a table per model (vLLM's GGUF loader
does the same). Tied parameters appear once, under the first name (`model.embed_tokens.weight`).

A config.json is untrusted input, and what transformers builds from it costs time in proportion to its layers
(a Python object per module, even on the meta device: 256 decoder layers took 0.43-0.83 s here, by family) and,
for configs that fill in per-layer lists, to `num_hidden_layers` before any model exists. So before transformers
sees a config: layer counts anywhere in it are at most `MAX_LAYERS`, lists at most `MAX_LIST` long; after, every
size of the language model is a positive integer of at most `MAX_SIZE` (read from transformers' config object, so
sizes a config leaves to its defaults count too). Vision towers are never built: a vision-language model's
language model is built from its text config alone. Mixture-of-experts adapters build the model with a few
experts and name the rest themselves (`build_model(overrides=...)`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from typing import Any

from ..errors import MLXCheckpointError
from .identity import TRANSFORMERS_CLASS, TRANSFORMERS_MODEL_TYPE

NOT_MODEL_FIELDS = ("quantization", "quantization_config")
MAX_SIZE = 1 << 24  # no dimension of a real model comes near
MAX_LAYERS = 256  # the deepest models served have 61-126 layers (Llama 3.1 405B: 126)
MAX_LIST = 4096  # per-layer lists (`layer_types`, `mlp_only_layers`) have one entry per layer at most
MAX_DEPTH = 32  # real configs nest 3 or 4 levels (`text_config.rope_scaling.factor`)
LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layers", "depth")
REQUIRED_SIZES = ("hidden_size", "num_attention_heads", "vocab_size", "num_hidden_layers")
OPTIONAL_SIZES = ("num_key_value_heads", "head_dim", "intermediate_size")
# a vision-language model's language model, built alone: its names under the composite model's
LANGUAGE_MODEL_PREFIX = "model.language_model."


def hf_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """config.json without MLX's quantization entries (transformers would read them as its own)."""
    return {k: v for k, v in config.items() if k not in NOT_MODEL_FIELDS}


def positive_int(value: Any, key: str, where: str, limit: int = MAX_SIZE) -> int:
    if type(value) is not int or not 0 < value <= limit:
        raise MLXCheckpointError(where, f"{key} must be a positive integer of at most {limit}, found {value!r}.")
    return value


def check_bounded(fields: Any, where: str) -> None:
    """Refuse layer counts and lists that would make transformers build without end, and nesting no config has,
    anywhere in the config (walked without recursion: a config nested a thousand deep is refused, not a crash)."""
    pending = [(fields, "", 0)]
    while pending:
        value, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise MLXCheckpointError(where, f"{path.rstrip('.')} is nested {depth} levels deep; configs nest a few.")
        if isinstance(value, dict):
            for key, item in value.items():
                if key in LAYER_KEYS and item is not None:
                    positive_int(item, path + key, where, MAX_LAYERS)
                pending.append((item, f"{path}{key}.", depth + 1))
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                raise MLXCheckpointError(where, f"{path.rstrip('.')} has {len(value)} entries; at most {MAX_LIST} "
                                         "are expected.")
            pending += [(item, path, depth + 1) for item in value]


def build_config(config: dict[str, Any], where: str) -> Any:
    """transformers' config object for an MLX config.json (bounded first: `check_bounded`)."""
    import transformers  # looked up at use: vLLM 0.18 may replace the module object

    fields = hf_config_fields(config)
    check_bounded(fields, where)
    fields = special_floats(fields)
    model_type = fields.pop("model_type", None)
    model_type = TRANSFORMERS_MODEL_TYPE.get(model_type, model_type)
    try:
        return transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as e:  # transformers raises many types for a config it cannot read
        raise MLXCheckpointError(
            where, f"transformers {transformers.__version__} cannot read it as a {model_type!r} config "
            f"({_brief(e)}).", "Check config.json against the model's original one.",
        ) from None


def special_floats(value: Any) -> Any:
    """transformers 5 writes floats JSON has no word for as `{"__float__": "Infinity"}` (Nemotron-H's
    `time_step_limit`); its config classes take them only as floats. (Nesting is bounded: `check_bounded`.)"""
    if isinstance(value, dict):
        if value.keys() == {"__float__"} and value["__float__"] in ("Infinity", "-Infinity", "NaN"):
            return float(value["__float__"].lower().replace("infinity", "inf"))
        return {k: special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [special_floats(v) for v in value]
    return value


def check_sizes(hf_config: Any, where: str) -> None:
    """Refuse sizes no model has before anything is built from them."""
    for key in REQUIRED_SIZES:
        positive_int(config_field(hf_config, key), key, where)
    for key in OPTIONAL_SIZES:
        if config_field(hf_config, key) is not None:
            positive_int(config_field(hf_config, key), key, where)
    per_layer = hf_config.to_dict().get("per_layer_config") if hasattr(hf_config, "per_layer_config") else None
    for layer in per_layer.values() if isinstance(per_layer, dict) else ():  # Gemma 4's sizes that vary by layer
        for key in OPTIONAL_SIZES:
            if isinstance(layer, dict) and layer.get(key) is not None:
                positive_int(layer[key], key, where)
    tied = getattr(hf_config, "tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise MLXCheckpointError(where, f"tie_word_embeddings must be true or false, found {tied!r}.")


def config_field(hf_config: Any, key: str) -> Any:
    """A field of transformers' config, or None; the global value of one that may vary per layer (Gemma 4's
    `head_dim`, which transformers refuses to read globally): its per-layer values are checked beside it."""
    try:
        return getattr(hf_config, key, None)
    except Exception:  # transformers' AmbiguousGlobalPerLayerAttributeError
        return vars(hf_config).get(key)


def language_model_config(hf_config: Any) -> Any:
    """The text config of a vision-language config, tied as the composite model ties (by its own flag)."""
    text = hf_config.get_text_config()
    text.tie_word_embeddings = hf_config.tie_word_embeddings
    return text


def build_model(
    config: dict[str, Any], where: str, *, text_only: bool = False, device: str = "meta",
    overrides: dict[str, Any] | None = None,
) -> Any:
    """transformers' model for `config` on `device`, weights not initialised: the architecture's own class, or with
    `text_only` the causal language model of its text config (names as `language_model_name` maps them)."""
    import torch
    import transformers

    hf_config = build_config({**config, **(overrides or {})}, where)
    if text_only:
        hf_config = language_model_config(hf_config)
    check_sizes(hf_config, where)
    arch = config["architectures"][0]
    try:
        if text_only:
            model_class = _causal_lm_class(hf_config)
        else:
            model_class = getattr(transformers, TRANSFORMERS_CLASS.get(arch, arch))
        # on the meta device initialisation costs nothing, and transformers 5 leaves weights untied without it
        with torch.device(device), contextlib.nullcontext() if device == "meta" else _no_init_weights():
            return model_class(hf_config)
    except Exception as e:  # transformers raises many types for a config it cannot build
        raise MLXCheckpointError(
            where, f"transformers {transformers.__version__} cannot build {arch} from it ({_brief(e)}).",
            "Check config.json against the model's original one.",
        ) from None


def _causal_lm_class(text_config: Any) -> Any:
    """transformers' causal language model for a text config; where it has only the base model (Qwen3-VL's text
    model), that model with a head, named as a causal language model is (`model.*`, `lm_head.weight`)."""
    import torch
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    if type(text_config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(text_config)]
    base = MODEL_MAPPING[type(text_config)]

    class WithHead(torch.nn.Module):
        def __init__(self, config: Any) -> None:
            super().__init__()
            self.config = config
            self.model = base(config)
            self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.tie_weights()

        # what validate's torch reference asks of a causal language model
        def get_decoder(self) -> torch.nn.Module:
            return self.model

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.lm_head

        def tie_weights(self) -> None:
            if self.config.tie_word_embeddings:
                self.lm_head.weight = self.model.get_input_embeddings().weight

    return WithHead


def language_model_name(name: str) -> str:
    """A causal language model's parameter name as the vision-language model that holds it names it."""
    return LANGUAGE_MODEL_PREFIX + name[len("model."):] if name.startswith("model.") else name


def model_shapes(
    config: dict[str, Any], where: str, *, text_only: bool = False, overrides: dict[str, Any] | None = None,
) -> dict[str, tuple[int, ...]]:
    check_bounded(hf_config_fields(config), where)  # before anything walks it (json.dumps recurses)
    key = json.dumps([hf_config_fields(config), overrides], sort_keys=True, default=repr)
    return dict(_model_shapes(key, where, text_only))


@functools.lru_cache(maxsize=8)
def _model_shapes(key: str, where: str, text_only: bool) -> tuple[tuple[str, tuple[int, ...]], ...]:
    config, overrides = json.loads(key)
    model = build_model(config, where, text_only=text_only, overrides=overrides)
    renames = [] if text_only else checkpoint_renames(model)
    rename = language_model_name if text_only else functools.partial(checkpoint_name, renames=renames)
    return tuple((rename(name), tuple(t.shape)) for name, t in stored_tensors(model))


def checkpoint_renames(model: Any) -> list[tuple[str, str, bool]]:
    """transformers 5 renames some checkpoint names as it loads them (`.block_sparse_moe.` -> `.mlp.`, `backbone.` ->
    `model.`); checkpoints, mlx-lm and vLLM keep the originals. Its plain renamings, as (its name, the checkpoint's,
    anchored at the start); renamings by pattern and tensor conversions (fused experts) are left to the adapters."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # transformers 4.x loads checkpoint names as they are
        return []
    try:
        mapping = (get_checkpoint_conversion_mapping(type(model).__name__)
                   or get_checkpoint_conversion_mapping(model.config.model_type) or [])
        pairs = []
        for t in mapping:
            if type(t).__name__ != "WeightRenaming" or len(t.source_patterns) != 1 or len(t.target_patterns) != 1:
                continue
            source, target = t.source_patterns[0], t.target_patterns[0]
            anchored = source.startswith("^")
            literal = source.removeprefix("^").replace("\\.", ".")
            if not re.search(r"[\\*+?()\[\]{}|^$]", literal + target):
                pairs.append((target, literal, anchored))
        return pairs
    except Exception:  # a private API: without it, transformers' own names are expected
        return []


def checkpoint_name(name: str, renames: list[tuple[str, str, bool]]) -> str:
    """A transformers parameter name as checkpoints hold it (`checkpoint_renames`, undone last first)."""
    for target, source, anchored in reversed(renames):
        if not anchored:
            name = name.replace(target, source)
        elif name.startswith(target):
            name = source + name[len(target):]
    return name


def stored_tensors(model: Any) -> list[tuple[str, Any]]:
    """What a checkpoint of `model` holds: its parameters (tied ones once) and persistent buffers (a router's
    `e_score_correction_bias`, Gemma 4's `layer_scalar`), not the buffers it computes (`inv_freq`, `embed_scale`)."""
    tensors = list(model.named_parameters())
    for module_name, module in model.named_modules():
        skip = getattr(module, "_non_persistent_buffers_set", set())
        tensors += [(f"{module_name}.{n}" if module_name else n, b)
                    for n, b in module.named_buffers(recurse=False) if n not in skip and b is not None]
    return tensors


def _brief(error: Exception, limit: int = 300) -> str:
    """An exception of transformers' in one line (some list every model type it knows)."""
    text = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _no_init_weights() -> Any:
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # transformers 4.x
    return no_init_weights()
