"""Reading real mlx_lm.convert output, and the errors for checkpoints the loader must refuse."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.format import QuantizedModule, QuantParams, read_checkpoint


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".stamp"))
    return dst


def edit_config(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


def edit_tensors(path: Path, edit) -> None:
    shard = path / "model.safetensors"
    with safe_open(shard, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    edit(tensors)
    save_file(tensors, shard, metadata=metadata)


def test_reads_every_module_with_its_bits_and_group_size(checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints["q4g128"])
    quantized = {m.path: m for m in ckpt.quantized}
    # every linear (7 per layer x 4) plus embed_tokens and lm_head
    assert len(quantized) == 4 * 7 + 2
    assert {(m.params.bits, m.params.group_size) for m in quantized.values()} == {(4, 128)}
    assert quantized["model.embed_tokens"].shape == (1024, 256)
    assert quantized["model.layers.0.mlp.down_proj"].shape == (256, 512)
    plain = [e.name for e in ckpt.entries if not isinstance(e, QuantizedModule)]
    assert "model.norm.weight" in plain and all("norm" in n for n in plain)


def test_mixed_recipe_uses_per_module_entries(checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints["mixed_3_6"])
    bits = {m.path: m.params.bits for m in ckpt.quantized}
    # mlx-lm's mixed_3_6 rule for 4 layers: v_proj/down_proj of layers 2 and 3, and lm_head, get 6 bits
    six = {p for p, b in bits.items() if b == 6}
    assert six == {
        "lm_head", "model.layers.2.self_attn.v_proj", "model.layers.2.mlp.down_proj",
        "model.layers.3.self_attn.v_proj", "model.layers.3.mlp.down_proj",
    }
    assert {b for p, b in bits.items() if p not in six} == {3}
    assert {m.params.group_size for m in ckpt.quantized} == {64}  # "group_size": null means 64


def test_tied_checkpoint_has_no_lm_head(checkpoints) -> None:
    names = [e.name for e in read_checkpoint(checkpoints["tied"]).weights]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names


def test_the_two_largest_tensors_are_not_streamed_back_to_back(checkpoints) -> None:
    # safetensors sorts names, so lm_head comes right before model.embed_tokens; a consumer holds one while
    # the next is made, which on an 8B model would put both (2.4 GB in BF16) in device memory at once
    names = [e.name for e in read_checkpoint(checkpoints["q4g64"]).weights]
    assert names[-1] == "lm_head.weight" and names[0] == "model.embed_tokens.weight"
    assert sorted(names) == sorted(set(names))


def test_stale_index_is_ignored(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00009.safetensors"}})
    )
    assert len(read_checkpoint(path).quantized) == 30


def test_tensors_of_one_module_may_sit_in_different_shards(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    shard = path / "model.safetensors"
    with safe_open(shard, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    moved = {k: tensors.pop(k) for k in ["lm_head.scales", "model.layers.1.mlp.up_proj.biases"]}
    shard.unlink()
    save_file(tensors, path / "model-00001-of-00002.safetensors", metadata={"format": "mlx"})
    save_file(moved, path / "model-00002-of-00002.safetensors", metadata={"format": "mlx"})
    ckpt = read_checkpoint(path)
    lm_head = next(m for m in ckpt.quantized if m.path == "lm_head")
    assert lm_head.scales.file.name == "model-00002-of-00002.safetensors"
    assert lm_head.weight.file.name == "model-00001-of-00002.safetensors"


# --- errors: each names the file, the tensor, expected vs found, and what to do ------------------


def test_plain_bf16_checkpoint_is_refused(bf16_source) -> None:
    with pytest.raises(
        MLXCheckpointError,
        match=r"config\.json: is not an MLX-quantized checkpoint: .*no 'quantization'.*drop `--load-format mlx-4bit`",
    ):
        read_checkpoint(bf16_source)


def test_other_quant_method_is_refused(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    edit_config(path, lambda c: c["quantization_config"].update(quant_method="awq"))
    with pytest.raises(MLXCheckpointError, match=r"not an MLX checkpoint: quantization_config.quant_method is 'awq'"):
        read_checkpoint(path)


@pytest.mark.parametrize("variant", ["mxfp4", "mxfp8", "nvfp4", "mixed_modes"])
def test_float_modes_and_per_layer_modes_are_read(checkpoints, variant) -> None:
    ckpt = read_checkpoint(checkpoints[variant])
    modes = {m.path: m.params.mode for m in ckpt.quantized}
    if variant != "mixed_modes":
        assert set(modes.values()) == {variant} and all(m.biases is None for m in ckpt.quantized)
        return
    # one mode per layer kind, from a quant_predicate (tiny_qwen3.mixed_modes_predicate)
    assert modes["model.layers.0.mlp.up_proj"] == "mxfp4" and modes["model.layers.0.self_attn.q_proj"] == "affine"
    assert modes["model.embed_tokens"] == "nvfp4" and modes["lm_head"] == "mxfp8"


def test_an_unnamed_module_s_float_mode_is_inferred_from_its_u8_scales(checkpoints, tmp_path) -> None:
    """mlx-lm 0.32 infers the mode of a module config.json does not name: U8 scales and the packed columns."""
    path = copy_checkpoint(checkpoints["mixed_modes"], tmp_path / "m")
    edit_config(path, lambda c: c["quantization"].pop("model.layers.0.mlp.up_proj"))  # global entry: affine 4-bit
    modes = {m.path: m.params for m in read_checkpoint(path).quantized}
    assert modes["model.layers.0.mlp.up_proj"] == QuantParams("mxfp4", 4, 32)


def test_unknown_mode_is_named(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    edit_config(path, lambda c: c["quantization"].update({"model.layers.0.mlp.up_proj": {"mode": "int4x"}}))
    with pytest.raises(MLXCheckpointError, match=r"model.layers.0.mlp.up_proj.scales': config.json "
                       r"quantization\['model.layers.0.mlp.up_proj'\] has unknown mode 'int4x'"):
        read_checkpoint(path)


@pytest.mark.parametrize("leaf", ["scales", "biases"])
def test_missing_scales_or_biases_is_named(checkpoints, tmp_path, leaf) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    edit_tensors(path, lambda t: t.pop(f"model.layers.2.self_attn.k_proj.{leaf}"))
    expected = {
        "scales": r"tensor 'model.layers.2.self_attn.k_proj.biases': is present but "
                  r"model.layers.2.self_attn.k_proj.scales is missing. The checkpoint is incomplete",
        "biases": r"tensor 'model.layers.2.self_attn.k_proj.scales': is affine-quantized but "
                  r"model.layers.2.self_attn.k_proj.biases is missing",
    }[leaf]
    with pytest.raises(MLXCheckpointError, match=re.escape(str(path / "model.safetensors")) + ": " + expected):
        read_checkpoint(path)


def test_config_bits_that_contradict_the_shapes(checkpoints, tmp_path) -> None:
    # an 8-bit g32 checkpoint whose config claims 4-bit g64: the packed shapes alone cannot tell
    path = copy_checkpoint(checkpoints["q8g32"], tmp_path / "m")
    edit_config(path, lambda c: [c[k].update(bits=4, group_size=64) for k in ("quantization", "quantization_config")])
    with pytest.raises(MLXCheckpointError, match=r"tensor 'lm_head.weight': expected dense shape \[1024, 256\] from "
                       r"config.json, found \[1024, 512\]\. .* The shapes fit bits=8, group_size=32"):
        read_checkpoint(path)


def test_packed_columns_that_do_not_fit_the_bits(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    override = {"model.layers.1.mlp.gate_proj": {"bits": 3, "group_size": 64}}
    edit_config(path, lambda c: c["quantization"].update(override))
    with pytest.raises(MLXCheckpointError, match=r"tensor 'model.layers.1.mlp.gate_proj.weight': expected 24 packed "
                       r"columns for 256 inputs at bits=3 \(group_size=64, 4 scale columns\), found 32"):
        read_checkpoint(path)


def test_config_marking_a_quantized_module_false(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    edit_config(path, lambda c: c["quantization"].update({"lm_head": False}))
    with pytest.raises(MLXCheckpointError, match=r"tensor 'lm_head.scales': exists, but config.json "
                       r"quantization\['lm_head'\] is false"):
        read_checkpoint(path)


def test_missing_linear_is_named_before_loading(checkpoints, tmp_path) -> None:
    # vLLM 0.32's own check lets a missing q_proj pass (qkv_proj is "loaded" by k and v)
    path = copy_checkpoint(checkpoints["q4g64"], tmp_path / "m")
    names = [f"model.layers.1.self_attn.q_proj.{leaf}" for leaf in ("weight", "scales", "biases")]
    edit_tensors(path, lambda t: [t.pop(n) for n in names])
    with pytest.raises(MLXCheckpointError, match=r"the shards lack weights that Qwen3ForCausalLM needs: "
                       r"model.layers.1.self_attn.q_proj.weight\. The checkpoint is incomplete"):
        read_checkpoint(path)


def test_tensor_the_model_does_not_have_is_named(checkpoints, tmp_path) -> None:
    path = copy_checkpoint(checkpoints["tied"], tmp_path / "m")
    extra = {"model.layers.9.input_layernorm.weight": torch.ones(256, dtype=torch.bfloat16)}
    edit_tensors(path, lambda t: t.update(extra))
    with pytest.raises(MLXCheckpointError, match=r"tensor 'model.layers.9.input_layernorm.weight': "
                       r"'model.layers.9.input_layernorm.weight' is not a weight of the model config.json describes"):
        read_checkpoint(path)


# google/gemma-3-4b-it's config.json as published (and as mlx-community's conversions keep it): the text config
# leaves the head counts, head size and vocabulary to Gemma3TextConfig's defaults
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
    "quantization": {"group_size": 64, "bits": 4},
}


@pytest.mark.vllm
def test_sizes_a_config_leaves_to_the_defaults_are_the_defaults() -> None:
    """Gemma 3's published configs name no head counts or vocabulary: transformers' defaults apply, as they do in
    vLLM, and the expected weights have the real model's shapes (the vision tower is never built)."""
    from vllm_mlx_loader.architectures import adapter_for

    expected = adapter_for(GEMMA3_4B, "config.json").expected_weights(GEMMA3_4B, "config.json")
    assert expected["model.language_model.embed_tokens.weight"] == (262208, 2560)
    assert expected["model.language_model.layers.33.self_attn.q_proj.weight"] == (8 * 256, 2560)
    assert expected["model.language_model.layers.33.self_attn.k_proj.weight"] == (4 * 256, 2560)
    assert "lm_head.weight" not in expected and not any("vision" in n for n in expected)  # tied; no tower
