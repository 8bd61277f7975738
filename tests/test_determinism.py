"""Determinism: the same checkpoint always gives the same parameters, on every device."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import engine_kwargs, shutdown

from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import iter_dense_weights


def digests(path, device="cpu", rounding="fused") -> dict[str, str]:
    return {
        name: hashlib.sha256(t.cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for name, t in iter_dense_weights(read_checkpoint(path), device, torch.bfloat16, rounding)
    }


@pytest.mark.parametrize("variant", ["q3g64", "mixed_3_6"])
def test_two_loads_give_bit_identical_tensors(variant, checkpoints) -> None:
    assert digests(checkpoints[variant]) == digests(checkpoints[variant])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device tool lends one sometimes)")
@pytest.mark.parametrize("rounding", ["fused", "mlx_cpu"])
def test_cuda_dequant_equals_cpu_dequant_bit_for_bit(checkpoints, rounding) -> None:
    for variant in ("q4g128", "q3g64", "q6g64", "q8g32", "mixed_3_6"):
        assert digests(checkpoints[variant], "cuda", rounding) == digests(checkpoints[variant], "cpu", rounding)


def _parameter_digests(model) -> dict[str, str]:
    return {
        name: hashlib.sha256(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
        for name, p in model.named_parameters()
    }


@pytest.mark.engine
def test_two_vllm_loads_give_bit_identical_parameters(checkpoints, monkeypatch) -> None:
    from vllm import LLM

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the model lives in this process
    found = []
    for _ in range(2):
        llm = LLM(model=str(checkpoints["q4g128"]), load_format="mlx-4bit", distributed_executor_backend="uni",
                  **engine_kwargs())
        try:
            (params,) = llm.apply_model(_parameter_digests)
        finally:
            shutdown(llm)
        found.append(params)
    assert found[0] == found[1]
    assert "model.embed_tokens.weight" in found[0] and len(found[0]) > 10
