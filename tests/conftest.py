"""Shared fixtures: tiny real MLX checkpoints (built once per run, cached) and vLLM engine helpers."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import tiny_qwen3  # noqa: E402

from vllm_mlx_loader.vllm.compat import shutdown_llm as shutdown  # noqa: E402, F401

FIXTURES = Path(os.environ.get("VLLM_MLX_FIXTURES", REPO / ".cache" / "fixtures"))
VARIANTS = sorted(tiny_qwen3.VARIANTS)
# on the older vLLMs too: 4-bit untied and tied Qwen3, a per-module recipe, Qwen3-MoE (the reference
# deployment's models) and Gemma 3's vision-language model (`--language-model-only`; vLLM 0.32's CPU venv cannot
# import its class). The other bit widths, architectures and float modes exercise no vLLM API these do not.
OLDER_VLLM_VARIANTS = {"q4g128", "tied", "mixed_3_6", "qwen3_moe", "gemma3_vlm", "gpt_oss"}
# of those, the ones vLLM 0.23 skips (`reference_vllm_only`): the reference deployment's 0.18 runs them (gpt-oss
# passed on 0.23 by hand)
REFERENCE_VLLM_ONLY_VARIANTS = {"tied", "mixed_3_6", "gpt_oss"}
# Greedy prompts: facts, counting, code, a chat turn, Chinese.
PROMPTS = [
    "The capital of France is",
    "Counting: one, two,",
    "def add(a, b):",
    "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
    "中国的首都是",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `vllm`: the tests CI also runs on the older vLLMs: every one that starts vLLM, but for `latest_only`
    # (benchmark smokes, architectures other than Qwen3 and Qwen3-MoE), which keep CI's time in bounds
    for item in items:
        starts_vllm = item.get_closest_marker("engine") or item.get_closest_marker("server")
        if starts_vllm and not item.get_closest_marker("latest_only"):
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    """Every variant of tiny_qwen3, written by the real `mlx_lm.convert`."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    return {name: tiny_qwen3.build_variant(FIXTURES, name) for name in VARIANTS}


@pytest.fixture(scope="session")
def bf16_source(checkpoints: dict[str, Path]) -> Path:
    """The BF16 Hugging Face checkpoint the untied variants were converted from."""
    return FIXTURES / "_hf" / "untied"


@pytest.fixture(scope="session")
def tokenizer(checkpoints):
    """The fixtures' tokenizer (saved by transformers 5; read on 4.x too)."""
    from vllm_mlx_loader.hf_compat import load_tokenizer

    return load_tokenizer(checkpoints["q4g128"])


def mlx_answer(path: Path, tokenizer, prompt_ids: list[int], max_tokens: int) -> tuple[str, str]:
    """What MLX float32 greedy decoding answers, as vLLM reports it: (text, finish_reason).

    The tiny model's training is not reproducible across CPUs and library versions, so tests compare with
    MLX on the same checkpoint instead of hard-coding what it says.
    """
    from vllm_mlx_loader.mlx_reference import greedy_float32

    (generation,) = greedy_float32(path, [prompt_ids], max_tokens)
    ids = generation.token_ids
    if tokenizer.eos_token_id in ids:
        return tokenizer.decode(ids[: ids.index(tokenizer.eos_token_id)], skip_special_tokens=True), "stop"
    return tokenizer.decode(ids, skip_special_tokens=True), "length"


def chat_prompt_ids(tokenizer, messages: list[dict], **template_kwargs) -> list[int]:
    """Token ids of a chat turn rendered by the checkpoint's template, as vLLM's chat endpoint builds them."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# `python -m mlx_lm convert`, able to read tokenizers saved by transformers 5 under transformers 4.x too
_MLX_LM_CONVERT = (
    "import sys; from vllm_mlx_loader.hf_compat import teach_tokenizers_backend; teach_tokenizers_backend(); "
    "from mlx_lm.convert import main; sys.argv[0] = 'mlx_lm.convert'; main()"
)


def mlx_lm_convert(src: Path, dst: Path, *flags: str) -> Path:
    """The real `mlx_lm.convert --hf-path SRC --mlx-path DST FLAGS...` (`-d`: dequantize), on any transformers."""
    import subprocess

    subprocess.run([sys.executable, "-c", _MLX_LM_CONVERT, "--hf-path", str(src), "--mlx-path", str(dst), *flags],
                   check=True, stdout=subprocess.DEVNULL)
    return dst


def unstacked(tensors: dict) -> dict:
    """MLX's expert stacks (`mlp.switch_mlp.gate_proj.weight`, `[experts, out, in]`; `mlx_lm.convert -d` keeps them)
    under the Hugging Face per-expert names the loader and our converter give them, entry by entry."""
    out = {}
    for name, tensor in tensors.items():
        if ".switch_mlp." in name:
            block, rest = name.split(".switch_mlp.")
            out.update({f"{block}.experts.{e}.{rest}": t for e, t in enumerate(tensor)})
        else:
            out[name] = tensor
    return out


def to_torch(a):
    """An mlx array as a torch tensor of the same bits (bfloat16 through uint16, uint32 codes as int32)."""
    import mlx.core as mx
    import numpy as np
    import torch

    if a.dtype == mx.bfloat16:
        return torch.from_numpy(np.array(a.view(mx.uint16))).view(torch.bfloat16)
    if a.dtype == mx.uint32:
        return torch.from_numpy(np.array(a).view(np.int32))
    return torch.from_numpy(np.array(a))


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the run) if the block takes longer than `seconds`: for code that reads what a
    hostile checkpoint links to (a FIFO, /dev/zero). SIGALRM interrupts a blocking read too."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def llm_here(model: Path | str, **overrides):
    """vLLM's `LLM` with its engine core in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as vLLM's own tests run
    it): the same engine and loader, about 20 s less to start and stop than in a process of its own. What crosses
    processes runs as users run it elsewhere: the server, validate, and the tensor- and pipeline-parallel workers.
    Stop it with `shutdown`, which also clears what an engine leaves behind in this process. A model vLLM serves
    through its Transformers backend gets a process of its own: that backend wraps transformers' classes in place
    (`support_torch_compile` on `Olmo3Model.__init__`), and later tests build them."""
    from vllm import LLM

    previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if transformers_backend(model) else "0"
    try:
        return LLM(model=str(model), **engine_kwargs(**overrides))
    except BaseException:  # an engine that failed to start leaves its parallel groups too
        from vllm_mlx_loader.vllm.compat import release_engine_state

        release_engine_state()
        raise
    finally:
        if previous is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous


def transformers_backend(model: Path | str) -> bool:
    """Whether vLLM serves the checkpoint's architecture through its Transformers backend (private registry)."""
    import json

    from vllm.model_executor.models import registry

    config = Path(model) / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    return any(a in registry._TRANSFORMERS_SUPPORTED_MODELS for a in architectures)  # test_plugin checks it


def engine_kwargs(**overrides):
    kwargs = dict(
        gpu_memory_utilization=0.3, max_model_len=512, max_num_seqs=8, enforce_eager=True, seed=0,
    )
    kwargs.update(overrides)
    return kwargs

