"""Dequantization throughput over a whole model, against the same machine's torch copy bandwidth.

    python benchmarks/bench_dequant.py MLX_DIR [--trials 3] [--json OUT]

Runs the loader's own read + dequantize pass (`iter_dense_weights`, device CPU, BF16) over every tensor
of the checkpoint and reports BF16 bytes written per second. The physical limit it is compared with is
`torch.Tensor.copy_` of the same number of BF16 bytes into an already-allocated tensor (what writing
into vLLM's preallocated parameters costs). Also reports peak RSS (a streaming pass holds one module).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import time
from pathlib import Path

import torch

from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import LoadStats, iter_dense_weights


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def copy_bandwidth(total_bytes: int, largest: int, trials: int) -> list[float]:
    """GB/s of copy_ into a preallocated BF16 tensor, `total_bytes` per trial in chunks of `largest`."""
    n = largest // 2
    src, dst = torch.randn(n).to(torch.bfloat16), torch.empty(n, dtype=torch.bfloat16)
    dst.copy_(src)  # warm-up: touch the pages
    rates = []
    for _ in range(trials):
        start, done = time.perf_counter(), 0
        while done < total_bytes:
            dst.copy_(src)
            done += largest
        rates.append(done / (time.perf_counter() - start) / 1e9)
    return rates


def dequant_pass(ckpt, trials: int) -> list[dict[str, float]]:
    runs = []
    for _ in range(trials):
        stats = LoadStats()
        start, written = time.perf_counter(), 0
        for _, tensor in iter_dense_weights(ckpt, "cpu", torch.bfloat16, "fused", stats):
            written += tensor.numel() * 2
        seconds = time.perf_counter() - start
        runs.append({"seconds": seconds, "read_s": stats.read_s, "dequant_s": stats.dequant_s,
                     "bf16_bytes": written, "gb_per_s": written / seconds / 1e9})
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    ckpt = read_checkpoint(args.model)
    total = sum(math.prod(e.shape) * 2 for e in ckpt.entries)
    largest = max(math.prod(e.shape) * 2 for e in ckpt.entries)
    print(f"{args.model}: {len(ckpt.entries)} tensors, {ckpt.nbytes / 1e9:.2f} GB packed, "
          f"{total / 1e9:.2f} GB BF16; torch threads {torch.get_num_threads()}", flush=True)
    dequant_pass(ckpt, 1)  # warm-up: page cache, allocator
    runs = dequant_pass(ckpt, args.trials)
    for i, r in enumerate(runs):
        print(f"  dequant trial {i}: {r['seconds']:.2f} s ({r['read_s']:.2f} read, {r['dequant_s']:.2f} dequant), "
              f"{r['gb_per_s']:.2f} GB/s BF16 out", flush=True)
    copies = copy_bandwidth(total, largest, args.trials)
    for i, c in enumerate(copies):
        print(f"  copy trial {i}: {c:.2f} GB/s", flush=True)
    best_dq, best_copy = max(r["gb_per_s"] for r in runs), max(copies)
    result = {
        "model": str(args.model), "tensors": len(ckpt.entries), "packed_bytes": ckpt.nbytes, "bf16_bytes": total,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "torch": torch.__version__,
        "dequant": runs, "copy_gb_per_s": copies, "best_dequant_gb_per_s": best_dq, "best_copy_gb_per_s": best_copy,
        "ratio": best_dq / best_copy, "peak_rss_gib": peak_rss_gib(),
    }
    print(f"dequant {best_dq:.2f} GB/s vs copy {best_copy:.2f} GB/s: ratio {result['ratio']:.3f} (target >= 0.5); "
          f"peak RSS {result['peak_rss_gib']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
