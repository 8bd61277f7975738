"""nvfp4 global scales that load: one per matrix, one per stack (a scalar: `mx.quantize` of a whole stack in one call)
and one per expert (mlx-lm's `global_scale=True` on expert stacks), read whole and sliced as tensor parallelism
slices them, each against `mx.dequantize`. Made from real `mlx_lm.convert` fixtures whose modules are quantized
again with MLX's own `mx.quantize`, as mlx-lm's API writes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import to_torch, unstacked

from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.lazy_dense import LazyDense
from vllm_mlx_loader.weights import iter_dense_weights

mx = pytest.importorskip("mlx.core")

NVFP4 = {"group_size": 16, "bits": 4, "mode": "nvfp4", "global_scale": True}


def requantize(path: Path, modules: dict[str, str]) -> dict[str, torch.Tensor]:
    """Quantize each module of `path` again in nvfp4 with a global scale of the kind named ("matrix", "stack":
    one scalar for a whole stack, "expert": one per expert); record it in config.json as mlx-lm does. Returns each
    module's dense float32 weight as `mx.dequantize` gives it (per expert where there is one scale per expert)."""
    shard = path / "model.safetensors"
    tensors = mx.load(str(shard))
    config = json.loads((path / "config.json").read_text())
    want = {}
    for module, kind in modules.items():
        entry = config["quantization"].get(module, config["quantization"])
        params = {k: entry.get(k) for k in ("group_size", "bits", "mode") if entry.get(k) is not None}
        dense = mx.dequantize(tensors.pop(f"{module}.weight"), tensors.pop(f"{module}.scales"),
                              tensors.pop(f"{module}.biases", None), **params).astype(mx.float32)
        if kind == "expert":
            scale = mx.max(mx.abs(dense), axis=(-2, -1)).astype(mx.float32)
            parts = [mx.quantize(dense[e], mode="nvfp4", global_scale=scale[e])[:2] for e in range(dense.shape[0])]
            q, s = mx.stack([p[0] for p in parts]), mx.stack([p[1] for p in parts])
            result = mx.stack([mx.dequantize(q[e], s[e], mode="nvfp4", global_scale=scale[e])
                               for e in range(dense.shape[0])])
        else:
            scale = mx.array(np.float32(3.0 if kind == "matrix" else 0.25))
            q, s = mx.quantize(dense, mode="nvfp4", global_scale=scale)[:2]
            result = mx.dequantize(q, s, mode="nvfp4", global_scale=scale)  # float32
        tensors.update({f"{module}.weight": q, f"{module}.scales": s, f"{module}.global_scale": scale})
        config["quantization"][module] = config["quantization_config"][module] = dict(NVFP4)
        want[module] = to_torch(result)
    mx.save_safetensors(str(shard), tensors, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config))
    return want


@pytest.fixture(scope="module")
def moe(checkpoints, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("global-scale") / "qwen3_moe"
    shutil.copytree(checkpoints["qwen3_moe"], path, ignore=shutil.ignore_patterns(".stamp"))
    want = requantize(path, {
        "model.layers.1.self_attn.o_proj": "matrix", "model.layers.0.mlp.switch_mlp.up_proj": "stack",
        "model.layers.0.mlp.switch_mlp.down_proj": "expert",
    })
    return path, want


def expected(want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hugging Face names of what `requantize` made: a stack's experts one by one."""
    return unstacked({f"{module}.weight": tensor for module, tensor in want.items()})


def test_global_scales_per_matrix_per_stack_and_per_expert_load_as_mx_dequantize(moe) -> None:
    path, want = moe
    ckpt = read_checkpoint(path)
    dense = dict(iter_dense_weights(ckpt, "cpu", torch.float32))
    for name, tensor in expected(want).items():
        assert torch.equal(dense[name], tensor), name
    bf16 = dict(iter_dense_weights(ckpt, "cpu"))  # MLX computes float32 here; one rounding to BF16
    for name, tensor in expected(want).items():
        assert torch.equal(bf16[name], tensor.bfloat16()), name


@pytest.mark.parametrize("dim", [0, 1])
def test_global_scales_sliced_as_tensor_parallelism_slices_them(moe, dim) -> None:
    path, want = moe
    ckpt = read_checkpoint(path)
    checked = 0
    for rank in (0, 1):
        for name, lazy in iter_dense_weights(ckpt, "cpu", torch.float32, lazy=True):
            if name not in expected(want):
                continue
            size = lazy.shape[dim] // 2
            got = torch.empty(size if dim == 0 else lazy.shape[0], lazy.shape[1] if dim == 0 else size)
            got.copy_(lazy.narrow(dim, rank * size, size))
            assert torch.equal(got, expected(want)[name].narrow(dim, rank * size, size)), (name, rank)
            checked += 1
    assert checked == 2 * (1 + 4 + 4)


def test_a_per_expert_global_scale_on_a_stack_read_whole(checkpoints, tmp_path) -> None:
    """gpt-oss's adapter makes each expert stack whole (vLLM's gpt-oss loader slices stacks itself): a stack with
    one global scale per expert (and one with a scalar) is dequantized expert by expert with its own."""
    path = tmp_path / "gpt_oss"
    shutil.copytree(checkpoints["gpt_oss"], path, ignore=shutil.ignore_patterns(".stamp"))
    prefix = "model.layers.0.mlp.experts"
    want = requantize(path, {f"{prefix}.down_proj": "expert", f"{prefix}.gate_proj": "stack",
                             f"{prefix}.up_proj": "expert"})
    ckpt = read_checkpoint(path)
    streamed = dict(iter_dense_weights(ckpt, "cpu", torch.float32, lazy=True))
    assert isinstance(streamed[f"{prefix}.down_proj"], LazyDense)
    down = torch.empty(streamed[f"{prefix}.down_proj"].shape)
    down.copy_(streamed[f"{prefix}.down_proj"])
    assert torch.equal(down, want[f"{prefix}.down_proj"].transpose(1, 2))  # [experts, inter, hidden]
    gate_up = streamed[f"{prefix}.gate_up_proj"] + 0
    assert torch.equal(gate_up[..., 0::2], want[f"{prefix}.gate_proj"].transpose(1, 2))  # gate rows interleaved
    assert torch.equal(gate_up[..., 1::2], want[f"{prefix}.up_proj"].transpose(1, 2))
