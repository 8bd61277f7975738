"""Fuzzing the config parsing and the checkpoint-structure checks: whatever the input, the loader either
reads it or raises MLXCheckpointError, never another exception type (time-bounded for CI)."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.format import module_params, read_checkpoint
from vllm_mlx_loader.weights import iter_dense_weights

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
QUANT_KEYS = st.sampled_from(["group_size", "bits", "mode", "model.layers.0.mlp.up_proj", "lm_head"])


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
@given(quant=st.dictionaries(QUANT_KEYS | st.text(max_size=6), json_values, max_size=6))
def test_module_params_accepts_or_refuses_cleanly(quant) -> None:
    for path in ("lm_head", "model.layers.0.mlp.up_proj"):
        try:
            params = module_params(quant, path, "here")
        except MLXCheckpointError:
            continue
        assert params is None or (params.bits in (1, 2, 3, 4, 5, 6, 8) and params.group_size in (32, 64, 128)) or (
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
