"""The accelerator path, audited on the CPU: only ops torch_npu runs, bounded device memory, MLX's bits.

No NPU is at hand; `OpAudit` records every aten op the path runs on CPU tensors and refuses the ones the
torch_npu table in docs/compatibility.md rules out, and tracks the memory the path holds.
"""

from __future__ import annotations

import pytest
import torch

from vllm_mlx_loader import dequant
from vllm_mlx_loader.dequant import dequantize_affine, dequantize_blocks, dequantize_on_device
from vllm_mlx_loader.dequant_fp import dequantize_fp
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.op_audit import NpuOpError, OpAudit
from vllm_mlx_loader.weights import LoadStats, ShardReader

BITS = [1, 2, 3, 4, 5, 6, 8]


def packed(bits: int, rows: int, in_features: int, group_size: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-(2**31), 2**31 - 1, (rows, in_features * bits // 32), dtype=torch.int32, generator=gen)
    s = torch.randn(rows, in_features // group_size, generator=gen).to(dtype)
    b = torch.randn(rows, in_features // group_size, generator=gen).to(dtype)
    return w, s, b


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("params", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rounding", ["fused", "mlx_cpu"])
def test_device_path_runs_only_ops_torch_npu_runs_and_gives_the_cpu_bits(bits, params, rounding) -> None:
    w, s, b = packed(bits, 37, 256, 64, params, seed=bits)
    with OpAudit() as audit:
        got = dequantize_on_device(w, s, b, bits, 64, torch.bfloat16, rounding)
    assert torch.equal(got, dequantize_affine(w, s, b, bits=bits, group_size=64, rounding=rounding))
    assert "aten.__rshift__.Scalar" in audit.op_names() or bits % 3 == 0 or bits == 5


def test_every_fixture_module_takes_the_device_path_cleanly(checkpoints) -> None:
    checked = 0
    for path in checkpoints.values():
        ckpt = read_checkpoint(path)
        with ShardReader(torch.device("cpu"), LoadStats()) as reader:
            for module in ckpt.quantized:
                p = module.params
                if p.mode != "affine":  # the float modes run the same code everywhere: audit it
                    w, s = reader.read(module.weight), reader.read(module.scales)
                    with OpAudit():
                        got = dequantize_fp(w, s, mode=p.mode, block_bytes=1 << 16)
                    assert torch.equal(got, dequantize_fp(w, s, mode=p.mode))
                    checked += 1
                    continue
                # 2-D, as dequantize_affine hands them over (MoE stacks are [experts, out, in])
                w, s, b = (reader.read(t).flatten(0, -2) for t in (module.weight, module.scales, module.biases))
                with OpAudit():
                    got = dequantize_on_device(w, s, b, p.bits, p.group_size, torch.bfloat16, "fused")
                assert torch.equal(got, dequantize_affine(w, s, b, bits=p.bits, group_size=p.group_size))
                checked += 1
    assert checked > 200


def test_the_audit_refuses_what_torch_npu_cannot_run() -> None:
    w, s, b = packed(4, 8, 128, 64, torch.bfloat16)
    refusals = {
        "bitwise_right_shift": lambda: dequantize_blocks(w, s, b, 4, 64, torch.bfloat16, "fused"),  # the CPU path
        "shift by a tensor": lambda: w >> torch.tensor(4),
        "no torch.uint32 arithmetic": lambda: w.view(torch.uint32) & 15,
        "float8": lambda: s.to(torch.float8_e4m3fn),
    }
    for message, run in refusals.items():
        with pytest.raises(NpuOpError, match=message), OpAudit():
            run()
    with OpAudit():
        w.view(torch.uint32).view(torch.int32) >> 4  # storage views and int shifts are fine


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("rounding", ["fused", "mlx_cpu"])
def test_device_memory_is_bounded_by_the_block_not_the_tensor(bits, rounding, monkeypatch) -> None:
    block = 1 << 20
    monkeypatch.setattr(dequant, "DEVICE_BLOCK_BYTES", block)
    w, s, b = packed(bits, 4096, 2048, 64, torch.bfloat16)  # 32 MiB as float32: 32 blocks
    with OpAudit() as audit:
        out = dequantize_on_device(w, s, b, bits, 64, torch.bfloat16, rounding)
    extra = audit.peak_bytes - out.numel() * out.element_size()
    assert 0 < extra <= 2 * block, f"{extra / block:.2f} blocks"
    # the same tensor in one piece would have held a float32 copy of it all
    monkeypatch.setattr(dequant, "DEVICE_BLOCK_BYTES", 1 << 30)
    with OpAudit() as whole:
        dequantize_on_device(w, s, b, bits, 64, torch.bfloat16, rounding)
    assert whole.peak_bytes - out.numel() * out.element_size() > 8 * block


def test_device_path_writes_into_out_and_handles_stacks() -> None:
    w, s, b = packed(4, 3 * 16, 128, 32, torch.bfloat16)
    stack = [t.reshape(3, 16, -1) for t in (w, s, b)]  # an MoE-style [experts, out, in] stack
    out = torch.empty(3, 16, 128, dtype=torch.bfloat16)
    dense = dequantize_affine(*stack, bits=4, group_size=32, out=out)
    assert dense.data_ptr() == out.data_ptr()
    assert torch.equal(dense.reshape(48, 128), dequantize_on_device(w, s, b, 4, 32, torch.bfloat16, "fused"))


def test_the_device_path_queues_its_work_without_waiting_per_tensor(checkpoints, monkeypatch) -> None:
    """On an accelerator, waiting for the device after each tensor only to time it stalls the queue. The meta
    device stands in for one here: it runs the device path through the real streaming code, shapes only."""
    from vllm_mlx_loader import weights

    waits = []
    monkeypatch.setattr(weights, "synchronize", waits.append)
    ckpt = read_checkpoint(checkpoints["q4g64"])
    dense = dict(weights.iter_dense_weights(ckpt, "meta"))
    assert len(dense) == len(ckpt.weights) and waits == []
    assert all(t.device.type == "meta" for t in dense.values())
    assert dense["lm_head.weight"].shape == (1024, 256)
    list(weights.iter_dense_weights(ckpt, "meta", stats=weights.LoadStats(timed=True)))  # timing asked for
    assert len(waits) >= len(ckpt.weights)
