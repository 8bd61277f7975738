"""Every served model type, proven without an engine: a tiny random-initialised transformers model converted by the
real `mlx_lm.convert` (4-bit, group size 32; examples/tiny_families.py) streams back as the Hugging Face checkpoint:
names exactly the source's, plain tensors bit for bit, quantized ones exactly `mx.dequantize` of what MLX stored
(after the inverse, where mlx-lm changed values) and close to the source (a swapped name cannot pass). Identity is
by (model type, architecture): pairs not on the allowlist are refused, naming the model type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny_families
import torch
from conftest import REPO, to_torch
from safetensors.torch import load_file

from vllm_mlx_loader.architectures import ADAPTERS, SERVED, adapter_for
from vllm_mlx_loader.architectures.dense import DenseAdapter
from vllm_mlx_loader.architectures.identity import MLX_LM_ARCHITECTURE_REMAPPING, MLX_LM_MODEL_REMAPPING
from vllm_mlx_loader.architectures.vision_language import hf_name
from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import iter_dense_weights

mx = pytest.importorskip("mlx.core")

FAMILY_ROOT = REPO / ".cache" / "families"
# model types with a fixture of their own in tests/test_architectures.py (trained, compared in vLLM too)
VISION = ("vision_tower.", "multi_modal_projector.", "model.visual.", "model.vision_tower.",
          "model.multi_modal_projector.")
TRAINED = {"qwen3_moe", "mixtral", "qwen3_next", "qwen3_5", "gemma3", "deepseek_v3", "gpt_oss"}


@pytest.fixture(scope="module")
def family(request) -> Path:
    return tiny_families.build_family(FAMILY_ROOT, request.param)


def dequantized_by_mlx(weight, shards: dict) -> torch.Tensor:
    """What MLX computes for a weight: `mx.dequantize` of the stored codes (one expert's slice of a stack)."""
    if not weight.quantized:
        dense = shards[weight.source.name]
    else:
        m, p = weight.source, weight.source.params
        parts = [shards[t.name] for t in m.parts]
        dense = mx.dequantize(*parts[:2], *parts[2:3], group_size=p.group_size, bits=p.bits, mode=p.mode)
    dense = to_torch(dense[weight.index] if weight.index is not None else dense).to(torch.bfloat16)
    if weight.inverse is not None:
        dense = weight.inverse.apply(dense, *(dequantized_by_mlx(o, shards) for o in weight.others))
    return dense


@pytest.mark.parametrize("family", sorted(tiny_families.FAMILIES), indirect=True)
def test_family_streams_the_hugging_face_checkpoint(family: Path) -> None:
    config = json.loads((family / "mlx" / "config.json").read_text())
    ckpt = read_checkpoint(family / "mlx")
    assert adapter_for(config, "config.json") is SERVED[config["model_type"], ckpt.architecture]
    # a vision-language model's language model, under transformers' names (the vision tower mlx-lm dropped)
    source = load_file(family / "hf" / "model.safetensors")
    source = {hf_name(n): t for n, t in source.items() if not n.startswith(VISION)}
    shards = {}
    for shard in ckpt.shards:
        shards.update(mx.load(str(shard)))
    plain = dict(iter_dense_weights(ckpt, "cpu", torch.float32))
    exact = dict(iter_dense_weights(ckpt, "cpu", torch.bfloat16, rounding="mlx_cpu"))
    tied = {"lm_head.weight"} if ckpt.config.get("tie_word_embeddings") else set()
    assert set(exact) == set(source) - tied
    quantized = {w.name: w for w in ckpt.weights if w.quantized or any(o.quantized for o in w.others)}
    assert len(quantized) >= 7  # attention and MLP projections at least
    for name, tensor in exact.items():
        if name in quantized:
            assert torch.equal(tensor, dequantized_by_mlx(quantized[name], shards)), name
            want = source[name].float()
            if want.any():  # (transformers initialises some routers to zeros)
                cosine = torch.nn.functional.cosine_similarity(tensor.float().flatten(), want.flatten(), 0)
                assert cosine > 0.97, (name, float(cosine))
            else:
                assert not tensor.any(), name
        else:
            assert torch.equal(plain[name], source[name].float()), name


@pytest.mark.parametrize("family", sorted(tiny_families.FAMILIES), indirect=True)
def test_unquantized_conversion_streams_the_hugging_face_checkpoint(family: Path) -> None:
    """mlx_lm.convert without quantization renames, restacks and changes values as it does with: the same inverses
    give the source back, every tensor bit for bit."""
    ckpt = read_checkpoint(family / "mlx-bf16")
    source = load_file(family / "hf" / "model.safetensors")
    source = {hf_name(n): t for n, t in source.items() if not n.startswith(VISION)}
    streamed = dict(iter_dense_weights(ckpt, "cpu", torch.bfloat16))
    tied = {"lm_head.weight"} if ckpt.config.get("tie_word_embeddings") else set()
    assert set(streamed) == set(source) - tied
    for name, tensor in streamed.items():
        assert torch.equal(tensor, source[name].to(torch.bfloat16)), name


def test_every_served_model_type_has_a_proof() -> None:
    """A model type on the allowlist without a checkpoint converted by mlx_lm is a claim without a test."""
    assert {tiny_families.model_type_of(f) for f in tiny_families.FAMILIES} | TRAINED == {t for t, _ in SERVED}


def test_mlx_lm_remapping_is_mlx_lms() -> None:
    from mlx_lm import utils

    assert utils.MODEL_REMAPPING == MLX_LM_MODEL_REMAPPING
    assert utils.MODEL_ARCHITECTURE_REMAPPING == MLX_LM_ARCHITECTURE_REMAPPING


def test_each_pair_has_one_adapter() -> None:
    pairs = [pair for adapter in ADAPTERS for pair in adapter.families.items()]
    assert len(pairs) == len(set(pairs)) == len(SERVED)


@pytest.mark.parametrize(("model_type", "architecture", "reason"), [
    ("ernie4_5_moe", "Ernie4_5_MoeForCausalLM", "drops the router's e_score_correction_bias"),
    ("qwen3_next", "Qwen3ForCausalLM", "with its 'qwen3_next' module"),  # same names, values mlx-lm changed
    ("falcon_h1", "LlamaForCausalLM", "with its 'falcon_h1' module"),
    ("phixtral", "PhiForCausalLM", "vLLM does not serve"),
    ("mamba2", "Mamba2ForCausalLM", "no MLX-to-vLLM mapping"),
    (None, "Qwen3ForCausalLM", "has no model_type"),
])
def test_pairs_off_the_allowlist_are_refused_by_model_type(model_type, architecture, reason, tmp_path) -> None:
    src = tiny_families.build_family(FAMILY_ROOT, "qwen3") / "mlx"
    shutil.copytree(src, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config.update(model_type=model_type, architectures=[architecture])
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MLXCheckpointError, match=reason):
        read_checkpoint(tmp_path / "ckpt")


def test_dense_families_store_no_stacks() -> None:
    """The generic adapter feeds stored names as they are: no family on it may be one mlx-lm restacks."""
    for model_type in DenseAdapter.families:
        names = load_file(tiny_families.build_family(FAMILY_ROOT, model_type) / "mlx" / "model.safetensors")
        assert not any(".switch_" in n or n.startswith("language_model.") for n in names), model_type


def test_readme_lists_every_model_type_as_the_code_serves_it() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_types_table", REPO / "scripts" / "model_types_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = (REPO / "README.md").read_text()
    assert script.readme_with_table(readme) == readme, "run scripts/model_types_table.py --write"
    assert len(script.mlx_lm_model_types()) == 138


MLX_VLM = REPO / "tests" / "data" / "mlx_vlm_mistral3"  # the real mlx-vlm's output, vision tower kept (README there)


def test_an_mlx_vlm_conversion_serves_its_language_model(caplog) -> None:
    with caplog.at_level("INFO", logger="vllm.mlx_loader"):
        ckpt = read_checkpoint(MLX_VLM)
    assert "skipping 15 vision-tower tensors (an mlx-vlm conversion)" in caplog.text
    assert adapter_for(ckpt.config, "config.json").text_only
    shards = mx.load(str(ckpt.shards[0]))
    exact = dict(iter_dense_weights(ckpt, "cpu", torch.bfloat16, rounding="mlx_cpu"))
    stored = {hf_name(n[: -len(".scales")] + ".weight") for n in shards if n.endswith(".scales")}
    stored |= {hf_name(n) for n in shards if not n.endswith((".scales", ".biases")) and not n.startswith(VISION)}
    assert set(exact) == stored and not any(n.startswith(VISION) for n in exact)
    for weight in ckpt.weights:
        assert torch.equal(exact[weight.name], dequantized_by_mlx(weight, shards)), weight.name


def test_a_vision_tower_beside_a_text_model_is_refused(tmp_path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "ckpt"
    shutil.copytree(tiny_families.build_family(FAMILY_ROOT, "qwen3") / "mlx", path)
    (path / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file({"vision_tower.patch_conv.weight": np.zeros((4, 4), np.float32)}, str(path / "model-vision.safetensors"))
    with pytest.raises(MLXCheckpointError, match=r"vision_tower.patch_conv.weight.*belongs to a vision tower "
                       r"\(mlx-vlm keeps it\)"):
        read_checkpoint(path)
