"""The accelerator dequantization path: time and peak extra device memory per tensor of a real shape.

    python benchmarks/bench_device_dequant.py [--device cuda] [--shape qwen3-8b] [--bits 4] [--group-size 64]
                                              [--checkpoint MLX_DIR] [--json OUT]

For each distinct tensor shape of the model (the embedding, lm_head and the layers' projections) it makes
packed codes, scales and biases on the device and dequantizes them with `dequantize_affine` (row blocks of
at most `DEVICE_BLOCK_BYTES` of float32), then once more as a single block (what the path did before: a
float32 copy of the whole tensor). "Extra" memory is the peak above the inputs and the BF16 output: on CUDA
`torch.cuda.max_memory_allocated`, on the CPU the same code under `op_audit.OpAudit` (which also refuses
any op torch_npu cannot run). With `--checkpoint`, also the loader's whole streaming pass over that
checkpoint on the device (`iter_dense_weights`, one synchronisation at the end, and with timing=True).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from vllm_mlx_loader import dequant
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.op_audit import OpAudit
from vllm_mlx_loader.weights import LoadStats, iter_dense_weights, synchronize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_checkpoint import config_for, dense_shapes, quantized_tensors


def measure(device: torch.device, shape: tuple[int, int], bits: int, group_size: int, block: int) -> dict:
    saved, dequant.DEVICE_BLOCK_BYTES = dequant.DEVICE_BLOCK_BYTES, block
    try:
        gen = torch.Generator().manual_seed(0)
        packed = quantized_tensors("t", shape, bits, group_size, gen)
        w, s, b = (packed[f"t.{k}"] for k in ("weight", "scales", "biases"))
        w, s, b = w.view(torch.int32).to(device), s.to(device), b.to(device)
        out_bytes = shape[0] * shape[1] * 2
        if device.type == "cuda":
            dequant.dequantize_affine(w, s, b, bits=bits, group_size=group_size)  # warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            out = dequant.dequantize_affine(w, s, b, bits=bits, group_size=group_size)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            extra = torch.cuda.max_memory_allocated() - base - out_bytes
        else:  # the path itself, as on a device; then again under the audit for its memory
            start = time.perf_counter()
            out = dequant.dequantize_on_device(w, s, b, bits, group_size, torch.bfloat16, "fused")
            seconds = time.perf_counter() - start
            del out
            with OpAudit() as audit:
                out = dequant.dequantize_on_device(w, s, b, bits, group_size, torch.bfloat16, "fused")
            extra = audit.peak_bytes - out_bytes
        del out
        return {"shape": list(shape), "bf16_mib": round(out_bytes / 2**20, 1), "seconds": round(seconds, 4),
                "gb_per_s": round(out_bytes / seconds / 1e9, 1), "extra_mib": round(extra / 2**20, 1)}
    finally:
        dequant.DEVICE_BLOCK_BYTES = saved


def whole_pass(device: torch.device, checkpoint: Path) -> dict:
    ckpt = read_checkpoint(checkpoint)
    found = {}
    for label, timed in (("queued", False), ("timed", True)):
        stats = LoadStats(timed=timed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        dense = 0
        for _, tensor in iter_dense_weights(ckpt, device, torch.bfloat16, stats=stats):
            dense += tensor.numel() * tensor.element_size()
            del tensor
        synchronize(device)
        seconds = time.perf_counter() - start
        found[label] = {"seconds": round(seconds, 2), "gb_per_s": round(dense / seconds / 1e9, 2),
                        "read_s": round(stats.read_s, 2), "dequant_s": round(stats.dequant_s, 2)}
        if device.type == "cuda":
            found[label]["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default="qwen3-8b")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--checkpoint", type=Path, help="also time the streaming pass over this checkpoint")
    parser.add_argument("--limit", type=int, default=0, help="only the first N distinct shapes (smoke runs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = config_for(args.shape, args.bits, args.group_size)
    shapes = sorted({shape for _, shape, quantized in dense_shapes(config) if quantized}, reverse=True)
    shapes = shapes[: args.limit] if args.limit else shapes
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "shape": args.shape, "bits": args.bits, "group_size": args.group_size,
        "block_mib": dequant.DEVICE_BLOCK_BYTES >> 20, "tensors": [],
    }
    print(f"{args.shape} {args.bits}-bit g{args.group_size} on {result['device']}, blocks of "
          f"{result['block_mib']} MiB float32 (vs one block per tensor)")
    print(f"{'shape':<16}{'BF16 MiB':>10}{'GB/s':>8}{'extra MiB':>11}{'whole: GB/s':>13}{'extra MiB':>11}")
    for shape in shapes:
        rows = measure(device, shape, args.bits, args.group_size, dequant.DEVICE_BLOCK_BYTES)
        whole = measure(device, shape, args.bits, args.group_size, 1 << 62)
        result["tensors"].append({**rows, "whole_tensor": whole})
        print(f"{'x'.join(map(str, shape)):<16}{rows['bf16_mib']:>10}{rows['gb_per_s']:>8}{rows['extra_mib']:>11}"
              f"{whole['gb_per_s']:>13}{whole['extra_mib']:>11}")
    if args.checkpoint:
        result["whole_pass"] = whole_pass(device, args.checkpoint)
        print("streaming pass over", args.checkpoint, json.dumps(result["whole_pass"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
