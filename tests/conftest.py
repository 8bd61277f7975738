"""Shared fixtures: tiny real MLX checkpoints (built once per run, cached) and vLLM engine helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

import tiny_qwen3  # noqa: E402

from vllm_mlx_loader.validate import shutdown_llm as shutdown  # noqa: E402, F401

FIXTURES = Path(os.environ.get("VLLM_MLX_FIXTURES", REPO / ".cache" / "fixtures"))
VARIANTS = sorted(tiny_qwen3.VARIANTS)
# Greedy prompts: facts, counting, code, a chat turn, Chinese.
PROMPTS = [
    "The capital of France is",
    "Counting: one, two,",
    "def add(a, b):",
    "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n",
    "中国的首都是",
]


@pytest.fixture(scope="session")
def checkpoints() -> dict[str, Path]:
    """Every variant of tiny_qwen3, written by the real `mlx_lm.convert`."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    return {name: tiny_qwen3.build_variant(FIXTURES, name) for name in VARIANTS}


@pytest.fixture(scope="session")
def bf16_source(checkpoints: dict[str, Path]) -> Path:
    """The BF16 Hugging Face checkpoint the untied variants were converted from."""
    return FIXTURES / "_hf" / "untied"


def engine_kwargs(**overrides):
    kwargs = dict(
        gpu_memory_utilization=0.3, max_model_len=512, max_num_seqs=8, enforce_eager=True, seed=0,
    )
    kwargs.update(overrides)
    return kwargs

