"""Every architecture the adapters serve, on tiny models trained with transformers and converted by the real
`mlx_lm.convert` (greedy parity with MLX in vLLM is `test_engine.py`'s, for every fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, tiny_qwen3, to_torch
from safetensors.torch import load_file, save_file

from vllm_mlx_loader.architectures import SUPPORTED_ARCHITECTURES
from vllm_mlx_loader.dequant import dequantize_affine
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import LoadStats, ShardReader, iter_dense_weights

mx = pytest.importorskip("mlx.core")

ARCHITECTURES = {
    "q4g64": "Qwen3ForCausalLM", "tied": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM",
    "llama_tied": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM", "qwen3_next": "Qwen3NextForCausalLM",
    "qwen3_5": "Qwen3_5ForConditionalGeneration", "gemma3_vlm": "Gemma3ForConditionalGeneration",
    "deepseek_v3": "DeepseekV3ForCausalLM", "gpt_oss": "GptOssForCausalLM",
}
MOE = ("qwen3_moe", "mixtral", "qwen3_next", "deepseek_v3")
# mlx-lm keeps Qwen routers at 8 bits; DeepSeek's router is no Linear and stays BF16
ROUTER_BITS = {"qwen3_moe": 8, "qwen3_next": 8, "mixtral": 4, "deepseek_v3": None}
# switch_mlp projection -> the Hugging Face expert name, as each family's modeling code spells it
HF_EXPERT_NAMES = {
    "qwen3_moe": {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"},
    "mixtral": {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
    "qwen3_next": {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"},
    "deepseek_v3": {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"},
}
MXFP4_SOURCE = ("experts.gate_up_proj", "experts.down_proj")  # gpt-oss's, as OpenAI published them
VISION = ("model.visual.", "model.vision_tower.", "model.multi_modal_projector.")  # mlx-lm drops them


def source_tensors(variant: str) -> dict[str, torch.Tensor]:
    """The BF16 Hugging Face weights `mlx_lm.convert` quantized for `variant`, under transformers 5's parameter
    names (it saves Gemma 3's vision-language model under the original checkpoints' `language_model.model.*`);
    gpt-oss's MXFP4 expert stacks (OpenAI's `*_blocks`, `[experts, out, in]`) as transformers' dense parameters."""
    tensors = load_file(FIXTURES / "_hf" / tiny_qwen3.VARIANTS[variant][1] / "model.safetensors")
    for name in [n[: -len("_blocks")] for n in tensors if n.endswith("_blocks")]:
        blocks, scales = tensors.pop(f"{name}_blocks"), tensors.pop(f"{name}_scales")
        packed = mx.array(blocks.flatten(-2).numpy()).view(mx.uint32)
        dense = mx.dequantize(packed, mx.array(scales.numpy()), group_size=32, bits=4, mode="mxfp4")
        tensors[name] = to_torch(dense).transpose(1, 2)
    legacy = {"language_model.model.": "model.language_model.", "vision_tower.": "model.vision_tower.",
              "multi_modal_projector.": "model.multi_modal_projector."}
    return {next((new + n[len(old):] for old, new in legacy.items() if n.startswith(old)), n): t
            for n, t in tensors.items()}


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_streamed_weights_are_the_hugging_face_weights(variant, checkpoints) -> None:
    """Names: exactly the source checkpoint's (a tied lm_head and a vision tower aside). Values: norms,
    biases and convolutions exact, quantized weights close to their BF16 originals, so a swapped name (gate for
    up, expert 1 for 2) cannot pass. Norms mlx-lm stored as `1 + w` (rounded to BF16) come back as `w` within
    that rounding, and `1 + w` is what MLX stored, bit for bit."""
    ckpt = read_checkpoint(checkpoints[variant])
    assert ckpt.architecture == ARCHITECTURES[variant] in SUPPORTED_ARCHITECTURES
    source = source_tensors(variant)
    streamed = dict(iter_dense_weights(ckpt, "cpu", torch.float32))
    dropped = set(source) - set(streamed)
    tied = {"lm_head.weight"} & set(source) if ckpt.config.get("tie_word_embeddings") else set()
    assert dropped == tied | {n for n in source if n.startswith(VISION)}
    assert set(streamed) <= set(source)
    quantized = {w.name for w in ckpt.weights if w.quantized}
    shifted = {w.name: w for w in ckpt.weights if w.inverse is not None and len(w.shape) == 1}
    for name, tensor in streamed.items():
        want = source[name].float()
        assert tensor.shape == want.shape, name
        if name.endswith(MXFP4_SOURCE):  # MLX keeps OpenAI's codes and scales: exact
            assert torch.equal(tensor, want), name
        elif name in quantized:
            cosine = torch.nn.functional.cosine_similarity(tensor.flatten(), want.flatten(), dim=0)
            assert cosine > 0.98, (name, float(cosine))
        elif name in shifted:
            stored = load_file(shifted[name].source.file)[shifted[name].source.name].float()
            assert torch.equal(tensor + 1, stored), name
            assert (tensor - want).abs().max() <= 2**-8, name
        else:
            assert torch.equal(tensor, want), name
    if variant in ("qwen3_next", "qwen3_5"):  # the values mlx-lm's sanitize changed
        assert len(shifted) == 7 and sum("conv1d" in w.name for w in ckpt.weights if w.inverse) == 1
    if variant == "qwen2":  # Linear `.bias` beside the quantization `.biases`
        assert "model.layers.0.self_attn.q_proj.bias" in streamed
        assert "model.layers.0.self_attn.q_proj.weight" in quantized


@pytest.mark.parametrize("variant", MOE)
def test_experts_are_read_one_slice_at_a_time_and_match_mx_dequantize(variant, checkpoints, monkeypatch) -> None:
    ckpt = read_checkpoint(checkpoints[variant])
    stacks = [m for m in ckpt.quantized if ".switch_mlp." in m.path]
    assert stacks and all(len(m.shape) == 3 and m.shape[0] == 4 for m in stacks)
    router = next((m for m in ckpt.quantized if m.path.endswith(".gate")), None)
    assert (router and router.params.bits) == ROUTER_BITS[variant]

    read_shapes = []
    original = ShardReader.read

    def recording(self, ref, index=None):
        tensor = original(self, ref, index)
        read_shapes.append((ref.name, tuple(tensor.shape)))
        return tensor

    monkeypatch.setattr(ShardReader, "read", recording)
    streamed = dict(iter_dense_weights(ckpt, "cpu", torch.bfloat16, rounding="mlx_cpu"))
    # no read ever returns a whole stack: each is one expert's [out, in_packed] (or its scales/biases)
    assert all(len(shape) <= 2 for name, shape in read_shapes if ".switch_mlp." in name)
    weights = mx.load(str(ckpt.shards[0]))
    names = HF_EXPERT_NAMES[variant]
    for module in stacks:
        p = module.params
        dense = mx.dequantize(*(weights[f"{module.path}.{x}"] for x in ("weight", "scales", "biases")),
                              group_size=p.group_size, bits=p.bits)
        block, proj = module.path.split(".switch_mlp.")
        for e in range(module.shape[0]):
            got = streamed[f"{block}.experts.{e}.{names[proj]}.weight"]
            want = torch.from_numpy(np.array(dense[e].view(mx.uint16))).view(torch.bfloat16)
            assert torch.equal(got, want), (module.path, e)


def test_dequantizing_one_expert_equals_slicing_the_dense_stack(checkpoints) -> None:
    ckpt = read_checkpoint(checkpoints["qwen3_moe"])
    module = next(m for m in ckpt.quantized if ".switch_mlp." in m.path)
    p = module.params
    with ShardReader(torch.device("cpu"), LoadStats()) as reader:
        whole = dequantize_affine(*(reader.read(t) for t in (module.weight, module.scales, module.biases)),
                                  bits=p.bits, group_size=p.group_size)
        for e in range(module.shape[0]):
            one = dequantize_affine(*(reader.read(t, e) for t in (module.weight, module.scales, module.biases)),
                                    bits=p.bits, group_size=p.group_size)
            assert torch.equal(one, whole[e])


def test_deepseek_kv_b_proj_is_both_halves_mlx_stored_stacked_back_per_head(checkpoints, tmp_path) -> None:
    """mlx-lm splits `kv_b_proj` into `embed_q` (key half, transposed) and `unembed_out` (value half); the
    streamed `kv_b_proj` is both, dequantized by MLX itself, put back head by head; a lone half is refused."""
    import shutil

    from vllm_mlx_loader.errors import MLXCheckpointError

    ckpt = read_checkpoint(checkpoints["deepseek_v3"])
    streamed = dict(iter_dense_weights(ckpt, "cpu", torch.bfloat16, rounding="mlx_cpu"))
    weights = mx.load(str(ckpt.shards[0]))
    heads, nope, v = (ckpt.config[k] for k in ("num_attention_heads", "qk_nope_head_dim", "v_head_dim"))
    for layer in range(ckpt.config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.self_attn"
        wk, wv = (mx.dequantize(*(weights[f"{prefix}.{m}.{x}"] for x in ("weight", "scales", "biases")),
                                group_size=64, bits=4) for m in ("embed_q", "unembed_out"))
        assert wk.shape == (heads, 512, nope) and wv.shape == (heads, v, 512)
        want = mx.concatenate([wk.swapaxes(1, 2), wv], axis=1).reshape(heads * (nope + v), 512)
        assert torch.equal(streamed[f"{prefix}.kv_b_proj.weight"], to_torch(want)), layer
        assert f"{prefix}.embed_q.weight" not in streamed and f"{prefix}.unembed_out.weight" not in streamed

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["deepseek_v3"], broken)
    tensors = load_file(broken / "model.safetensors")
    for part in ("weight", "scales", "biases"):
        del tensors[f"model.layers.1.self_attn.unembed_out.{part}"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "mlx"})
    with pytest.raises(MLXCheckpointError, match=r"model.layers.1.self_attn.embed_q.weight.* has no "
                       r"model.layers.1.self_attn.unembed_out.weight beside it"):
        read_checkpoint(broken)


def test_gpt_oss_gate_up_proj_interleaves_mlx_gate_and_up_rows(checkpoints, tmp_path) -> None:
    """mlx-lm splits OpenAI's `gate_up_proj` into even rows (`gate_proj`) and odd rows (`up_proj`), each
    `[experts, inter, hidden]`; the streamed `gate_up_proj` is `[experts, hidden, 2 * inter]` with MLX's own
    dequantized rows interleaved back, and its bias likewise. A lone half is refused."""
    import shutil

    from vllm_mlx_loader.errors import MLXCheckpointError

    ckpt = read_checkpoint(checkpoints["gpt_oss"])
    streamed = dict(iter_dense_weights(ckpt, "cpu", torch.float32))
    weights = mx.load(str(ckpt.shards[0]))
    prefix = "model.layers.1.mlp.experts"
    gate, up, down = (to_torch(mx.dequantize(weights[f"{prefix}.{m}.weight"], weights[f"{prefix}.{m}.scales"],
                                             group_size=32, bits=4, mode="mxfp4"))
                      for m in ("gate_proj", "up_proj", "down_proj"))
    gate_up = streamed[f"{prefix}.gate_up_proj"]
    assert torch.equal(gate_up[..., 0::2], gate.transpose(1, 2)) and torch.equal(gate_up[..., 1::2], up.transpose(1, 2))
    assert torch.equal(streamed[f"{prefix}.down_proj"], down.transpose(1, 2))
    bias = streamed[f"{prefix}.gate_up_proj_bias"]
    assert torch.equal(bias[:, 0::2], to_torch(weights[f"{prefix}.gate_proj.bias"]).float())
    assert torch.equal(bias[:, 1::2], to_torch(weights[f"{prefix}.up_proj.bias"]).float())

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["gpt_oss"], broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors[f"{prefix}.up_proj.bias"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "mlx"})
    with pytest.raises(MLXCheckpointError, match=rf"{prefix}.gate_proj.bias.* has no {prefix}.up_proj.bias beside"):
        read_checkpoint(broken)
