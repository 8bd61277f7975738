"""Determinism: the same checkpoint always gives the same parameters, on every device."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest
import torch

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


TWO_LOADS = r"""
import hashlib, json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the model lives in this process
if __name__ == "__main__":
    import torch
    from vllm import LLM
    from vllm_mlx_loader.vllm import loader
    from vllm_mlx_loader.vllm.compat import shutdown_llm

    # vLLM's CPU backend repacks every linear after loading and leaves its `.weight` empty, so the parameters
    # are read right after the loader wrote them, before process_weights_after_loading.
    found, original = [], loader.MLXModelLoader.load_weights
    def digest(p):
        return hashlib.sha256(p.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    def load_weights(self, model, model_config):
        original(self, model, model_config)
        found.append({name: [list(p.shape), digest(p)] for name, p in model.named_parameters()})
    loader.MLXModelLoader.load_weights = load_weights
    for _ in range(2):
        llm = LLM(model=sys.argv[1], load_format="mlx-4bit", distributed_executor_backend="uni", enforce_eager=True,
                  gpu_memory_utilization=0.3, max_model_len=512)
        shutdown_llm(llm)
    print("DIGESTS " + json.dumps(found))
"""


@pytest.mark.engine
@pytest.mark.reference_vllm_only
def test_two_vllm_loads_give_bit_identical_parameters(checkpoints) -> None:
    # in a child process: an in-process engine would leave its state in the test process
    out = subprocess.run([sys.executable, "-c", TWO_LOADS, str(checkpoints["q4g128"])], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first, second = json.loads(out.stdout.split("DIGESTS ", 1)[1])
    assert first == second
    # what was compared is what the loader wrote: the fused linears at their full size, not empty repacks
    assert first["model.layers.0.self_attn.qkv_proj.weight"][0] == [4 * 64 + 2 * 2 * 64, 256]
    assert first["model.layers.3.mlp.gate_up_proj.weight"][0] == [2 * 512, 256]
    assert all(math.prod(shape) > 0 for shape, _ in first.values()) and len(first) > 10
