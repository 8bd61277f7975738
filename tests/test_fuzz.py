"""Fuzzing the config parsing and the checkpoint-structure checks: whatever the input, the loader either
reads it or raises MLXCheckpointError, never another exception type (time-bounded for CI)."""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import shutil
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_mlx_loader.architectures import adapter_for
from vllm_mlx_loader.architectures.meta_model import MAX_LAYERS, MAX_LIST, MAX_SIZE
from vllm_mlx_loader.architectures.moe import MAX_EXPERT_MATRICES, MAX_EXPERTS
from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.quantization import module_params
from vllm_mlx_loader.weights import iter_dense_weights

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
QUANT_KEYS = st.sampled_from(["group_size", "bits", "mode", "model.layers.0.mlp.up_proj", "lm_head"])
MODES = st.sampled_from(["mxfp4", "nvfp4", "mxfp8", "affine"])
# floats and booleans that equal the integers MLX allows (32.0 == 32, True == 1), bare and in per-module entries
LOOKALIKES = st.sampled_from([32.0, 4.0, 16.0, 64.0, 8.0, True])
QUANT_VALUES = json_values | LOOKALIKES | MODES | st.fixed_dictionaries(
    {"mode": MODES}, optional={"group_size": LOOKALIKES | st.sampled_from([16, 32, 64]),
                               "bits": LOOKALIKES | st.sampled_from([4, 8])},
)


@pytest.fixture(scope="module")
def source(checkpoints) -> Path:
    return checkpoints["q4g64"]


def fresh_copy(source: Path) -> Path:
    path = Path(tempfile.mkdtemp(prefix="fuzz-")) / "model"
    shutil.copytree(source, path, ignore=shutil.ignore_patterns(".stamp"))
    return path


def load_or_refuse(path: Path) -> None:
    try:
        for _ in iter_dense_weights(read_checkpoint(path), "cpu"):
            pass
    except MLXCheckpointError:
        pass
    finally:
        shutil.rmtree(path.parent)


@FUZZ
@given(quant=st.dictionaries(QUANT_KEYS | st.text(max_size=6), QUANT_VALUES, max_size=6))
def test_module_params_accepts_or_refuses_cleanly(quant) -> None:
    for path in ("lm_head", "model.layers.0.mlp.up_proj"):
        try:
            params = module_params(quant, path, "here")
        except MLXCheckpointError:
            continue
        if params is None:
            continue
        # types first: a set equates 32.0 with 32 and True with 1, which then fail where they slice tensors
        assert type(params.bits) is int and type(params.group_size) is int, params
        assert (params.bits in (1, 2, 3, 4, 5, 6, 8) and params.group_size in (32, 64, 128)) or (
            (params.mode, params.group_size, params.bits) in {("mxfp4", 32, 4), ("mxfp8", 32, 8), ("nvfp4", 16, 4)})


@FUZZ
@given(
    key=st.sampled_from(["hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
                         "intermediate_size", "num_hidden_layers", "tie_word_embeddings", "architectures",
                         "quantization", "quantization_config"]),
    value=json_values,
)
def test_config_fields_fuzzed(source, key, value) -> None:
    path = fresh_copy(source)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    load_or_refuse(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=4))
def test_shard_header_bytes_fuzzed(source, flips) -> None:
    path = fresh_copy(source)
    shard = path / "model.safetensors"
    data = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    for position, value in flips:
        data[position % (8 + n)] = value  # the length field and the JSON header
    shard.write_bytes(bytes(data))
    load_or_refuse(path)


# --- hostile config.json: bounded work before any tensor is read ------------------------------------------------
# one real config per adapter kind (the fixtures'), each made hostile by the fuzz
FAMILIES = ("q4g64", "gemma3", "qwen3_moe", "mixtral", "qwen3_next", "qwen3_5", "gemma3_vlm", "deepseek_v3", "gpt_oss")
SIZE_KEYS = (
    "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
    "num_hidden_layers", "moe_intermediate_size", "num_experts", "num_local_experts", "n_routed_experts",
    "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace", "decoder_sparse_step", "layer_types",
    "mlp_only_layers", "max_position_embeddings", "tie_word_embeddings", "linear_num_value_heads", "kv_lora_rank",
    "depth", "model_type", "architectures",
)
EDGES = st.sampled_from([
    0, -1, 1, 3, 64, MAX_LAYERS, MAX_LAYERS + 1, MAX_EXPERTS, MAX_EXPERTS + 1, MAX_SIZE, MAX_SIZE + 1, 2**31, 2**62,
    32.0, 1e300, True, None, "8", [], {},
])
LONG_LISTS = st.sampled_from([MAX_LIST, MAX_LIST + 1, 1 << 20]).map(lambda n: ["full_attention"] * n)
CPU_SECONDS = 2.0  # the worst accepted configs take 0.43-0.83 s here (README); slack for a slower CI machine


@pytest.fixture(scope="module")
def family_configs(checkpoints) -> dict[str, dict]:
    return {f: json.loads((checkpoints[f] / "config.json").read_text()) for f in FAMILIES}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_configs_are_refused_or_accepted_within_bounded_time(family_configs, data) -> None:
    """Whatever sizes, layer and expert counts, lists and vision or text configs a config.json claims, the front end
    (the architecture, then the weights it expects, built by transformers on the meta device) accepts or refuses
    it with MLXCheckpointError, within a bounded CPU time."""
    config = copy.deepcopy(family_configs[data.draw(st.sampled_from(FAMILIES))])
    for _ in range(data.draw(st.integers(1, 4))):
        scope = data.draw(st.sampled_from(["", "", "text_config", "vision_config"]))
        target = config.setdefault(scope, {}) if scope else config
        if isinstance(target, dict):
            target[data.draw(st.sampled_from(SIZE_KEYS))] = data.draw(EDGES | LONG_LISTS | json_values)
    start = time.process_time()
    with contextlib.suppress(MLXCheckpointError):
        adapter_for(config, "config.json").expected_weights(config, "config.json")
    assert time.process_time() - start <= CPU_SECONDS


@pytest.mark.parametrize("family", ["q4g64", "qwen3_moe", "qwen3_next", "deepseek_v3", "gemma3_vlm"])
def test_the_largest_configs_accepted_are_built_in_bounded_time_and_memory(family, family_configs) -> None:
    """At the bounds (`MAX_LAYERS` layers, `MAX_EXPERT_MATRICES` experts in all, `MAX_SIZE` sizes) the config is
    accepted, within bounded CPU time and a bounded rise of the process's peak memory."""
    config = copy.deepcopy(family_configs[family])
    text = config.get("text_config", config)
    text.pop("layer_types", None)
    text.update(num_hidden_layers=MAX_LAYERS, hidden_size=MAX_SIZE, intermediate_size=MAX_SIZE, vocab_size=MAX_SIZE)
    if family == "qwen3_moe":  # every layer holds experts: the most expert matrices allowed
        text.update(num_experts=MAX_EXPERT_MATRICES // MAX_LAYERS, num_local_experts=MAX_EXPERT_MATRICES // MAX_LAYERS)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    expected = adapter_for(config, "config.json").expected_weights(config, "config.json")
    assert time.process_time() - start <= CPU_SECONDS
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before <= 300 << 10  # KiB: 300 MiB
    assert any(f".{MAX_LAYERS - 1}." in name for name in expected)
