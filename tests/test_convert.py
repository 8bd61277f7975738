"""`python -m vllm_mlx_loader.convert`: MLX -> Hugging Face BF16 without MLX, checked against mlx_lm.convert -d."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import mlx_lm_convert, unstacked
from safetensors import safe_open
from safetensors.torch import save_file

from vllm_mlx_loader.convert import convert, main
from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.shard_writer import ShardWriter

CONVERTED = ("q4g64", "mixed_3_6", "mxfp4", "mxfp8", "nvfp4", "mixed_modes", "qwen3_moe")
# families whose values mlx-lm's sanitize changed: `mlx_lm.convert -d` writes MLX's layout, not Hugging Face's
RESTORED = ("qwen3_next", "qwen3_5", "deepseek_v3", "gpt_oss")
LOGIT_TOLERANCE = 1e-3  # float32 on both sides, the same weights: only the order of float operations differs


def tree_digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def read_all(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


@pytest.fixture(scope="module")
def mlx_dequantized(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """`mlx_lm.convert -d` of some variants: the competitor's output, and our bit-exactness oracle."""
    out = {}
    for variant in CONVERTED:
        dst = tmp_path_factory.mktemp("mlx-d") / variant
        out[variant] = mlx_lm_convert(checkpoints[variant], dst, "-d")
    return out


@pytest.mark.parametrize("variant", CONVERTED)
def test_bit_identical_to_mlx_lm_convert_dequantize(variant, checkpoints, mlx_dequantized, tmp_path) -> None:
    src = checkpoints[variant]
    before = tree_digest(src)
    dst = convert(src, tmp_path / "hf", rounding="mlx_cpu", progress=False)
    ours, theirs = read_all(dst), unstacked(read_all(mlx_dequantized[variant]))
    assert set(ours) == set(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == torch.bfloat16, name
        assert torch.equal(ours[name], theirs[name]), name
    config = json.loads((dst / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    assert (dst / "tokenizer.json").is_file() and (dst / "generation_config.json").is_file()
    assert tree_digest(src) == before  # the source is only read


def test_sharded_output_has_a_correct_index(checkpoints, tmp_path) -> None:
    dst = convert(checkpoints["tied"], tmp_path / "hf", max_shard_bytes=400_000, progress=False)
    shards = sorted(p.name for p in dst.glob("*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    tensors = 0
    for shard in shards:
        with safe_open(dst / shard, framework="pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == shard
                tensors += f.get_tensor(name).nbytes
    assert index["metadata"]["total_size"] == tensors
    assert len(index["weight_map"]) == 4 * 11 + 2 and "lm_head.weight" not in index["weight_map"]  # tied


def test_output_loads_in_transformers_and_greedy_text_equals_mlx(checkpoints, tmp_path) -> None:
    from conftest import mlx_answer
    from transformers import AutoModelForCausalLM

    from vllm_mlx_loader.hf_compat import load_tokenizer

    dst = convert(checkpoints["tied"], tmp_path / "hf", progress=False)
    model = AutoModelForCausalLM.from_pretrained(dst)
    tok = load_tokenizer(dst)
    ids = tok("The capital of Spain is", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    expected, _ = mlx_answer(checkpoints["tied"], tok, ids[0].tolist(), 3)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == expected


@pytest.mark.parametrize("variant", RESTORED)
def test_restored_families_load_in_transformers_and_compute_mlx_float32_logits(
    variant, checkpoints, tokenizer, tmp_path
) -> None:
    """Qwen3-Next and Qwen3.5: the norms mlx-lm shifted by +1, the moved conv1d axis and (Qwen3.5) the
    `language_model.` prefix are undone; DeepSeek-V3: `kv_b_proj` is put back together; gpt-oss: gate and up are
    interleaved back into `gate_up_proj` and the expert stacks transposed. So transformers' own
    model computes what MLX computes (the float32 torch reference of `validate` too, where transformers 5 can
    hold the experts). `mlx_lm.convert -d` keeps MLX's layout and names."""
    import transformers
    from conftest import PROMPTS

    from vllm_mlx_loader.format import read_checkpoint
    from vllm_mlx_loader.mlx_reference import load_float32, logit_blocks
    from vllm_mlx_loader.reference import load_reference, reference_logit_blocks
    from vllm_mlx_loader.shards import is_unquantized_mlx_conversion
    from vllm_mlx_loader.weights import iter_dense_weights

    # float32 output: MLX's dequantized values exactly, so a router near-tie cannot pick other experts than MLX's
    # (BF16 output did once on gpt-oss: 0.93 at one row, from one fixture build to the next)
    dst = convert(checkpoints[variant], tmp_path / "hf", dtype="float32", progress=False)
    arch = json.loads((dst / "config.json").read_text())["architectures"][0]
    models = [getattr(transformers, arch).from_pretrained(dst, dtype=torch.float32).eval()]
    if variant in ("qwen3_5", "gpt_oss"):  # transformers 5 fuses Qwen3-Next's experts: no torch reference for it
        models.append(load_reference(read_checkpoint(checkpoints[variant])))
    mlx_model = load_float32(checkpoints[variant])
    # and one of 200 tokens: gpt-oss's YaRN differs from mlx-lm's own (truncate: false) only past ~100 positions,
    # by 1.4 at 200 tokens
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS] + [tokenizer(" ".join(PROMPTS * 12))["input_ids"][:200]]
    for prompt, ids in zip([*PROMPTS, "200 tokens"], sequences, strict=True):
        (want,) = logit_blocks(mlx_model, [*ids, 0], len(ids))
        for model in models:
            (got,) = reference_logit_blocks(model, [*ids, 0], len(ids))
            assert torch.equal(got.argmax(-1), want.argmax(-1)), (type(model).__name__, prompt)
            assert (got - want).abs().max() < LOGIT_TOLERANCE, (type(model).__name__, prompt)

    theirs = tmp_path / "mlx-d"
    mlx_lm_convert(checkpoints[variant], theirs, "-d")
    # that output is an unquantized MLX conversion in MLX's layout: the loader reads it through the same inverses,
    # and gets what it makes of the quantized checkpoint with mx.dequantize's rounding, bit for bit
    assert is_unquantized_mlx_conversion(theirs, json.loads((theirs / "config.json").read_text()))
    if variant == "deepseek_v3":  # mlx-lm 0.32.2's -d leaves embed_q / unembed_out packed, and drops the config entry
        with pytest.raises(MLXCheckpointError, match=r"embed_q.scales': holds quantization scales, but config.json "
                           r"has no 'quantization' entry"):
            read_checkpoint(theirs)
    else:
        from_dequantized = dict(iter_dense_weights(read_checkpoint(theirs), "cpu"))
        for name, tensor in iter_dense_weights(read_checkpoint(checkpoints[variant]), "cpu", rounding="mlx_cpu"):
            assert torch.equal(from_dequantized.pop(name), tensor), name
        assert not from_dequantized
    ours, mlx_d = read_all(dst), read_all(theirs)
    if variant == "deepseek_v3":
        assert any(".embed_q." in n for n in mlx_d) and not any(".kv_b_proj." in n for n in mlx_d)
        assert "model.layers.1.self_attn.kv_b_proj.weight" in ours
        return
    if variant == "gpt_oss":  # mlx-lm's split halves, [experts, out, in]: transformers cannot load them
        assert mlx_d["model.layers.1.mlp.experts.gate_proj.weight"].shape == (4, 128, 128)
        assert ours["model.layers.1.mlp.experts.gate_up_proj"].shape == (4, 128, 256)
        return
    conv = next(n for n in ours if n.endswith("conv1d.weight"))
    assert ours[conv].shape[1] == 1 and all(t.shape[-1] == 1 for n, t in mlx_d.items() if "conv1d" in n)
    if variant == "qwen3_5":
        assert all(n.startswith("language_model.") for n in mlx_d) and "lm_head.weight" in ours


@pytest.mark.engine
@pytest.mark.reference_vllm_only
def test_output_loads_in_stock_vllm(checkpoints, tmp_path, tokenizer) -> None:
    from conftest import llm_here, mlx_answer, shutdown
    from vllm import SamplingParams

    dst = convert(checkpoints["q4g128"], tmp_path / "hf", progress=False)
    prompt = tokenizer("The capital of Peru is")["input_ids"]
    llm = llm_here(dst)  # the default loader: a plain BF16 checkpoint
    try:
        assert llm.llm_engine.vllm_config.load_config.load_format == "auto"
        out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    finally:
        shutdown(llm)
    assert out[0].outputs[0].text == mlx_answer(checkpoints["q4g128"], tokenizer, prompt, 3)[0]


def test_copies_only_regular_files_inside_the_checkpoint_and_names_the_rest(checkpoints, tmp_path, caplog) -> None:
    """A checkpoint from the internet may link a file of the user's (`~/.ssh/id_rsa`) into itself: the output, which
    the user may publish, must not carry it. Links inside the checkpoint are followed (the Hugging Face cache is
    made of them)."""
    src = tmp_path / "src"
    shutil.copytree(checkpoints["q4g64"], src, ignore=shutil.ignore_patterns(".stamp"))
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    os.symlink(secret, src / "notes.txt")
    (src / "special_tokens_v2.json").write_text("{}")
    os.symlink("special_tokens_v2.json", src / "special_tokens_map.json")
    os.mkfifo(src / "pipe")
    (src / "cache").mkdir()
    dst = convert(src, tmp_path / "hf", progress=False)
    assert not (dst / "notes.txt").exists() and not (dst / "pipe").exists() and not (dst / "cache").exists()
    linked = dst / "special_tokens_map.json"
    assert linked.read_text() == "{}" and not linked.is_symlink()
    assert (dst / "tokenizer.json").is_file()
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert f"notes.txt: a link to {secret}, outside the checkpoint" in warnings
    assert "pipe: not a regular file" in warnings and "cache: a directory" in warnings


def test_refuses_to_overwrite_without_force(checkpoints, tmp_path, capsys) -> None:
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main([str(checkpoints["q4g64"]), str(dst)]) == 2
    assert "hf: already exists. Delete it, choose another path, or pass --force" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    assert main([str(checkpoints["q4g64"]), str(dst), "--force"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_refuses_a_destination_inside_the_source(checkpoints, capsys) -> None:
    src = checkpoints["q4g64"]
    assert main([str(src), str(src / "out")]) == 2
    assert "overlaps the source" in capsys.readouterr().err
    assert not (src / "out").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupted_conversion_leaves_nothing(checkpoints, tmp_path, monkeypatch, failure) -> None:
    src = checkpoints["q4g64"]
    before = tree_digest(src)
    written = []
    real_write = ShardWriter.write

    def write_then_fail(self, name, tensor):
        if written and self.path != written[-1]:  # the first tensor of the second shard
            raise failure("interrupted")
        real_write(self, name, tensor)
        written.append(self.path)

    monkeypatch.setattr(ShardWriter, "write", write_then_fail)
    with pytest.raises(failure):
        convert(src, tmp_path / "out" / "hf", max_shard_bytes=400_000, progress=False)
    assert len(set(written)) == 1  # it had written a whole shard before the failure
    assert list((tmp_path / "out").iterdir()) == []
    assert tree_digest(src) == before


def test_bad_source_exits_2_and_writes_nothing(bf16_source, tmp_path, capsys) -> None:
    assert main([str(bf16_source), str(tmp_path / "hf")]) == 2
    assert "is not an MLX-quantized checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_tensor_found_mid_conversion_leaves_nothing(checkpoints, tmp_path) -> None:
    src = tmp_path / "src"
    shutil.copytree(checkpoints["q4g64"], src)
    with safe_open(src / "model.safetensors", framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["model.norm.weight"] = tensors["model.norm.weight"].clone()
    tensors["model.norm.weight"][3] = float("nan")  # the last tensors MLX writes, after several shards
    save_file(tensors, src / "model.safetensors", metadata={"format": "mlx"})
    with pytest.raises(MLXCheckpointError, match=r"tensor 'model.norm.weight': holds 1 non-finite values"):
        convert(src, tmp_path / "out" / "hf", max_shard_bytes=400_000, progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_the_streaming_shard_writer_writes_what_safetensors_reads(tmp_path) -> None:
    tensors = {"b.weight": torch.randn(3, 5).bfloat16(), "a.weight": torch.randn(7).bfloat16()}
    layout = [(k, tuple(v.shape)) for k, v in tensors.items()]
    with ShardWriter(tmp_path / "x.safetensors", layout, torch.bfloat16) as w:
        for k, v in tensors.items():
            w.write(k, v)
    with safe_open(tmp_path / "x.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"} and sorted(f.keys()) == ["a.weight", "b.weight"]
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v)
    with ShardWriter(tmp_path / "y.safetensors", layout, torch.bfloat16) as w:
        with pytest.raises(ValueError, match=r"got 'a.weight', expected 'b.weight'"):
            w.write("a.weight", tensors["a.weight"])
        with pytest.raises(ValueError, match=r"'b.weight' is torch.float32 \(3, 5\), expected torch.bfloat16"):
            w.write("b.weight", tensors["b.weight"].float())
        w.write("b.weight", tensors["b.weight"])
        with pytest.raises(ValueError, match="1 tensors were never written"):
            w.close()
