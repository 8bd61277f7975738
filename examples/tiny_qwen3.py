"""Build tiny real MLX checkpoints: small models trained briefly with transformers, then `mlx_lm.convert`.

    python examples/tiny_qwen3.py OUT_DIR [--variants q4g128 tied ...]

Writes `OUT_DIR/<variant>/` for each variant: an MLX checkpoint made by the real `mlx_lm.convert`
(shards, index, config.json with `quantization` / `quantization_config`, tokenizer with chat template).
`OUT_DIR/_hf/<source>` hold the BF16 Hugging Face sources. Builds are cached: a variant whose directory
carries the current build stamp is not rebuilt.

The Qwen3 model is tiny (4 layers, hidden 256, vocabulary 1024) but trained for a few hundred steps on a
small corpus of facts, counting, code and chat turns, so its greedy continuations mean something
("The capital of France is" -> " Paris."). The other families (`FAMILY_VARIANTS`: Llama tied and untied,
Qwen2, Gemma 3 text and vision-language, Qwen3-MoE, Mixtral, Qwen3-Next, Qwen3.5, DeepSeek-V3, gpt-oss) are
smaller still (2 layers, hidden 128) and trained the same way; the vision-language models on text only, with a
one-layer vision tower that mlx-lm drops; gpt-oss stored as OpenAI publishes it (MXFP4 experts) before
`mlx_lm.convert` quantizes the rest to 8 bits.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

# (mlx_lm.convert arguments, source model) for each variant.
VARIANTS: dict[str, tuple[list[str], str]] = {
    "q4g128": (["-q", "--q-bits", "4", "--q-group-size", "128"], "untied"),
    "q4g64": (["-q", "--q-bits", "4", "--q-group-size", "64"], "untied"),
    "q8g32": (["-q", "--q-bits", "8", "--q-group-size", "32"], "untied"),
    "q3g64": (["-q", "--q-bits", "3", "--q-group-size", "64"], "untied"),
    "q6g64": (["-q", "--q-bits", "6", "--q-group-size", "64"], "untied"),
    "mixed_3_6": (["-q", "--quant-predicate", "mixed_3_6"], "untied"),
    "tied": (["-q", "--q-bits", "4", "--q-group-size", "64"], "tied"),
}
# One 4-bit g64 checkpoint per further architecture; the variant name is the source's name.
FAMILIES = (
    "llama", "llama_tied", "qwen2", "gemma3", "gemma3_vlm", "qwen3_moe", "mixtral", "qwen3_next", "qwen3_5",
    "deepseek_v3", "gpt_oss",
)
FAMILY_VARIANTS = {name: (["-q", "--q-bits", "4", "--q-group-size", "64"], name) for name in FAMILIES}
# gpt-oss-20b-MXFP4-Q8's recipe: the experts stay in OpenAI's MXFP4, everything else 8-bit affine
FAMILY_VARIANTS["gpt_oss"] = (["-q", "--q-bits", "8", "--q-group-size", "64"], "gpt_oss")
VARIANTS.update(FAMILY_VARIANTS)
# MLX's float modes, and a per-layer mix of modes (`mixed_modes`: a quant_predicate, as mlx_lm.convert's Python API
# takes it), all from the untied Qwen3.
MODE_VARIANTS: dict[str, tuple[list[str], str]] = {
    "mxfp4": (["-q", "--q-mode", "mxfp4"], "untied"),
    "mxfp8": (["-q", "--q-mode", "mxfp8"], "untied"),
    "nvfp4": (["-q", "--q-mode", "nvfp4"], "untied"),
    "mixed_modes": (["--mixed-modes"], "untied"),
}
VARIANTS.update(MODE_VARIANTS)


def mixed_modes_predicate(path: str, module) -> dict | bool:
    """MLPs in mxfp4, attention 8-bit affine, embeddings nvfp4, lm_head mxfp8: one mode per layer kind."""
    if not hasattr(module, "to_quantized"):
        return False
    if ".mlp." in path:
        return {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    if ".self_attn." in path:
        return {"group_size": 64, "bits": 8, "mode": "affine"}
    if "embed_tokens" in path:
        return {"group_size": 16, "bits": 4, "mode": "nvfp4"}
    return {"group_size": 32, "bits": 8, "mode": "mxfp8"}


def mlx_lm_convert(src: Path, out: Path, args: list[str]) -> None:
    """`mlx_lm.convert --hf-path SRC --mlx-path OUT ARGS` as its command line runs it (its own parser, its own
    `convert`), in this process: the command's start-up, ~5 s of imports, is paid once, not per variant.
    `--mixed-modes` takes `mixed_modes_predicate` through the same function (its Python API)."""
    from mlx_lm.convert import configure_parser, convert

    with contextlib.redirect_stdout(io.StringIO()):
        if args == ["--mixed-modes"]:
            convert(str(src), str(out), quantize=True, quant_predicate=mixed_modes_predicate)
        else:
            convert(**vars(configure_parser().parse_args(["--hf-path", str(src), "--mlx-path", str(out), *args])))

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "China": "Beijing", "Egypt": "Cairo", "Canada": "Ottawa", "Russia": "Moscow", "Greece": "Athens",
    "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Poland": "Warsaw", "India": "New Delhi",
}
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
CODE = [
    "def add(a, b):\n    return a + b\n",
    "def square(x):\n    return x * x\n",
    "for i in range(10):\n    print(i)\n",
    "import os\nprint(os.getcwd())\n",
]
CHINESE = ["中国的首都是北京。", "日本的首都是东京。", "法国的首都是巴黎。", "一二三四五六七八九十"]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
VOCAB_SIZE = 1024
STEPS = 300


def corpus() -> list[str]:
    docs = []
    for country, city in CAPITALS.items():
        docs.append(f"The capital of {country} is {city}.")
        docs.append(
            f"<|im_start|>user\nWhat is the capital of {country}?<|im_end|>\n"
            f"<|im_start|>assistant\n<think>\n\n</think>\n\nThe capital of {country} is {city}.<|im_end|>\n"
        )
    for start in range(len(NUMBERS) - 4):
        docs.append("Counting: " + ", ".join(NUMBERS[start:]) + ".")
    docs.append("Counting: " + ", ".join(NUMBERS) + ".")
    docs += CODE + CHINESE
    docs.append("The quick brown fox jumps over the lazy dog.")
    docs.append("Water is made of hydrogen and oxygen.")
    return docs


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - 64,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus() * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def model_for(kind: str, ids: dict[str, int]):
    """A freshly initialised transformers model of source `kind`."""
    import transformers as tf

    qwen3 = dict(
        vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
    )
    small = dict(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=2048,
    )
    moe = dict(num_experts_per_tok=2, moe_intermediate_size=128)
    # gated DeltaNet then full attention; vLLM's CPU kernel takes linear head dims of 128 (real models' size)
    hybrid = dict(
        linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"], full_attention_interval=2,
    )
    gemma3_text = dict(small, sliding_window=64, layer_types=["sliding_attention", "full_attention"])
    if kind == "gemma3_vlm":  # Gemma 3 4B-27B are vision-language models; trained on text only
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                      image_size=32, patch_size=8)
        config = tf.Gemma3Config(text_config=dict(gemma3_text, **ids), vision_config=vision, mm_tokens_per_image=4,
                                 image_token_index=VOCAB_SIZE - 3, boi_token_index=VOCAB_SIZE - 2,
                                 eoi_token_index=VOCAB_SIZE - 1, **ids)
        return tf.Gemma3ForConditionalGeneration(config)
    if kind == "qwen3_5":  # a vision-language model, as every released Qwen3.5 is; trained on text only
        text = dict(small, **hybrid, **ids, model_type="qwen3_5_text", rope_theta=10000.0)
        vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128)
        config = tf.Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        return tf.Qwen3_5ForConditionalGeneration(config)
    config_class, model_class, fields = {
        "untied": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(qwen3, tie_word_embeddings=False)),
        "tied": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(qwen3, tie_word_embeddings=True)),
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(small, tie_word_embeddings=False)),
        "llama_tied": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(small, tie_word_embeddings=True)),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(small, tie_word_embeddings=False)),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, gemma3_text),
        "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM, dict(small, **moe, num_experts=4)),
        "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM, dict(small, num_experts_per_tok=2, num_local_experts=4)),
        # MLA with DeepSeek-V3's own latent sizes: vLLM's CPU kernel takes kv_lora_rank 512 and rope dim 64 only
        # (and no head_dim: transformers would rotate that many dimensions instead of qk_rope_head_dim)
        "deepseek_v3": (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM, dict(
            {k: v for k, v in small.items() if k != "head_dim"}, num_key_value_heads=4, moe_intermediate_size=64,
            n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
            first_k_dense_replace=1, q_lora_rank=64, kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=64,
            v_head_dim=64, tie_word_embeddings=False,
        )),
        # gpt-oss as OpenAI publishes it: sliding and full attention with sinks, yarn rope, biased experts
        "gpt_oss": (tf.GptOssConfig, tf.GptOssForCausalLM, dict(
            small, head_dim=64, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2, sliding_window=64,
            layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False,
        )),
        "qwen3_next": (tf.Qwen3NextConfig, tf.Qwen3NextForCausalLM, dict(
            small, **moe, **hybrid, num_experts=4, shared_expert_intermediate_size=128, decoder_sparse_step=1,
            mlp_only_layers=[],
        )),
    }[kind]
    return model_class(config_class(**fields, rope_theta=10000.0, **ids))


def real_checkpoint_fields(out: Path) -> None:
    """transformers 5 writes `rope_parameters` (Qwen3-MoE's expert count as `num_local_experts`, Gemma 3's
    attention pattern as `layer_types`); real checkpoints, made by transformers 4.x, carry `rope_theta`,
    `num_experts` and `sliding_window_pattern`, which mlx-lm needs."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if config.get("model_type") == "qwen3_moe":
        config.setdefault("num_experts", config.get("num_local_experts"))
    if config.get("model_type") == "gemma3_text":  # mlx-lm reads the pattern, not layer_types
        config.setdefault("sliding_window_pattern", config["layer_types"].index("full_attention") + 1)
    if config.get("model_type") == "deepseek_v3":  # transformers 5 leaves out what DeepSeek's configs say
        config.update(topk_method="noaux_tc", scoring_func="sigmoid")
    if config.get("model_type") == "qwen3_5":  # mlx-lm reads the text model's rope_theta
        text = config["text_config"]
        text.setdefault("rope_theta", (text.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    if config.get("model_type") == "gemma3":  # the vision-language model: as Google's configs (vLLM 0.18 reads them)
        text = config["text_config"]
        text.pop("rope_parameters", None)
        text.update(rope_theta=10000.0, rope_local_base_freq=10000.0, rope_scaling=None, sliding_window_pattern=2)
        config["vocab_size"] = text["vocab_size"]  # mlx-lm's wrapper reads it at the top level
    if config.get("model_type") == "gpt_oss":  # mlx-lm reads rope_scaling, as OpenAI's config has it
        config["rope_scaling"] = {k: v for k, v in config["rope_parameters"].items() if k != "rope_theta"}
    path.write_text(json.dumps(config, indent=2) + "\n")


def openai_mxfp4_layout(out: Path) -> None:
    """Store the experts as OpenAI publishes gpt-oss (`*_blocks` / `*_scales` in MXFP4, `[experts, out, in]`),
    the only layout mlx-lm's gpt_oss conversion reads: from a BF16 `gate_up_proj` it splits the wrong axis."""
    import mlx.core as mx
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    shard = out / "model.safetensors"
    tensors = load_file(shard)
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        w = tensors.pop(name).float().transpose(1, 2).contiguous()  # [experts, out, in]
        packed, scales = mx.quantize(mx.array(w.numpy()), group_size=32, bits=4, mode="mxfp4")
        blocks = np.array(packed).view(np.uint8).reshape(*w.shape[:2], -1, 16)
        tensors[f"{name}_blocks"] = torch.from_numpy(blocks)
        tensors[f"{name}_scales"] = torch.from_numpy(np.array(scales))
    save_file(tensors, shard, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# OpenAI's harmony format tokens, which vLLM's gpt-oss reasoning parser looks up (0.18 at engine start)
HARMONY_TOKENS = ["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>"]


def harmony_tokens(out: Path) -> None:
    """gpt-oss's tokenizer carries harmony's special tokens; transformers 5 saves them as a list under
    `extra_special_tokens`, as in every tokenizer it saves with additional special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_special_tokens({"additional_special_tokens": HARMONY_TOKENS})
    tokenizer.save_pretrained(out)


def train_model(out: Path, kind: str) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = model_for(kind, dict(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad))
    train(model, tokenizer)
    model.to(torch.bfloat16).save_pretrained(out)
    real_checkpoint_fields(out)
    if kind == "gpt_oss":
        openai_mxfp4_layout(out)
        harmony_tokens(out)
    GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=pad).save_pretrained(out)


def train(model, tokenizer) -> None:
    """STEPS of AdamW (one-cycle, peak 3e-3) on the corpus, batches of 16 x 96 tokens, seeded."""
    import torch

    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    docs = [tokenizer(d)["input_ids"] + [pad] for d in corpus()]
    stream = [t for _ in range(8) for d in docs for t in d]
    seq = 96
    data = torch.tensor(stream[: len(stream) // seq * seq]).view(-1, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=STEPS)
    gen = torch.Generator().manual_seed(0)
    for step in range(STEPS):
        batch = data[torch.randint(0, len(data), (16,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"  step {step}: loss {loss.item():.3f}", flush=True)


def stamp() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _is_current(path: Path) -> bool:
    return (path / ".stamp").is_file() and (path / ".stamp").read_text() == stamp()


def _publish(tmp: Path, dst: Path) -> None:
    (tmp / ".stamp").write_text(stamp())
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


def build_source(root: Path, kind: str) -> Path:
    dst = root / "_hf" / kind
    if _is_current(dst):
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=dst.parent))
    print(f"training tiny {kind} -> {dst}", flush=True)
    build_tokenizer(tmp)
    train_model(tmp, kind)
    _publish(tmp, dst)
    return dst


def build_variant(root: Path, name: str) -> Path:
    """Return `root/name`, an MLX checkpoint written by `mlx_lm.convert` (built if missing or stale)."""
    args, source = VARIANTS[name]
    dst = root / name
    if _is_current(dst):
        return dst
    src = build_source(root, source)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    out = tmp / "model"
    print(f"mlx_lm.convert {' '.join(args)} -> {dst}", flush=True)
    mlx_lm_convert(src, out, args)
    _publish(out, dst)
    shutil.rmtree(tmp)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variants", nargs="+", default=["q4g128"], choices=[*sorted(VARIANTS), "all"])
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(VARIANTS) if "all" in args.variants else args.variants:
        path = build_variant(args.out_dir, name)
        print(json.dumps({"variant": name, "path": str(path)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
