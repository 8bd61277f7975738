"""Dequantization throughput over a whole model, against the same machine's torch copy bandwidth.

    python benchmarks/bench_dequant.py MLX_DIR [--trials 3] [--json OUT] [--bf16 BF16_DIR]

Runs the loader's own read + dequantize pass (`iter_dense_weights`, device CPU, BF16) over every tensor
of the checkpoint and reports BF16 bytes written per second. The physical limit it is compared with is
`torch.Tensor.copy_` of the same number of BF16 bytes into an already-allocated tensor (what writing
into vLLM's preallocated parameters costs). Also measured under that copy's own conditions: dequantization
alone, packed data in memory, into one preallocated output. Reports peak RSS of the streaming pass (it
holds a few modules, not the model); with `--bf16 DIR`, also the time and peak RSS of reading the BF16
checkpoint of the same weights the way vLLM's default loader does, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from vllm_mlx_loader import cpu_kernel
from vllm_mlx_loader.dequant import dequantize_affine
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.weights import LoadStats, ShardReader, buffer_capacity, iter_dense_weights


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
    """The loader's pass, split into the tensors that get a reused buffer and the few too big for one
    (fresh memory: their page faults are the part of the pass that varies most here)."""
    capacity = buffer_capacity(ckpt, torch.bfloat16)
    runs = []
    for _ in range(trials):
        stats = LoadStats()
        start, written, big_s, big_bytes = time.perf_counter(), 0, 0.0, 0
        tick = start
        for _, tensor in iter_dense_weights(ckpt, "cpu", torch.bfloat16, "fused", stats):
            nbytes = tensor.numel() * 2
            written += nbytes
            if nbytes > capacity:
                big_s, big_bytes = big_s + time.perf_counter() - tick, big_bytes + nbytes
            tick = time.perf_counter()
        seconds = time.perf_counter() - start
        runs.append({"seconds": seconds, "read_s": stats.read_s, "dequant_s": stats.dequant_s,
                     "bf16_bytes": written, "gb_per_s": written / seconds / 1e9,
                     "fresh_memory_tensors_s": big_s, "fresh_memory_bytes": big_bytes,
                     "pooled_gb_per_s": (written - big_bytes) / max(seconds - big_s, 1e-9) / 1e9})
    return runs


def dequant_into_preallocated(ckpt, trials: int) -> list[float]:
    """GB/s of dequantization alone, every quantized module into one preallocated BF16 buffer: the same
    conditions as `copy_bandwidth` (packed data already in memory, output pages already faulted in)."""
    with ShardReader(torch.device("cpu"), LoadStats()) as reader:
        packed = [(m, [reader.read(t) for t in (m.weight, m.scales, m.biases)]) for m in ckpt.quantized]
        largest = max(math.prod(m.shape) for m, _ in packed)
        buf = torch.zeros(largest, dtype=torch.bfloat16)
        rates = []
        for _ in range(trials):
            start, written = time.perf_counter(), 0
            for m, (w, s, b) in packed:
                out = buf[: math.prod(m.shape)].view(m.shape)
                dequantize_affine(w, s, b, bits=m.params.bits, group_size=m.params.group_size, out=out)
                written += out.numel() * 2
            rates.append(written / (time.perf_counter() - start) / 1e9)
    return rates


_BF16_PASS = """
import resource, sys, time
from pathlib import Path
from safetensors import safe_open
start, n = time.perf_counter(), 0
for shard in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    with safe_open(shard, framework="pt") as f:
        for name in f.keys():
            n += f.get_tensor(name).nbytes
print(n, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def bf16_pass(directory: Path) -> dict[str, float]:
    """vLLM's default loader's way through a BF16 checkpoint (safe_open, get_tensor one at a time, each
    dropped after use), in a fresh process so that its peak RSS is its own."""
    out = subprocess.run([sys.executable, "-c", _BF16_PASS, str(directory)], capture_output=True, text=True,
                         check=True).stdout.split()
    nbytes, seconds, rss = int(out[0]), float(out[1]), float(out[2])
    return {"bytes": nbytes, "seconds": seconds, "gb_per_s": nbytes / seconds / 1e9, "peak_rss_gib": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--bf16", type=Path, help="the BF16 checkpoint of the same weights (e.g. the converter's "
                        "output): also time vLLM's way of reading it, and compare peak RSS")
    args = parser.parse_args(argv)
    ckpt = read_checkpoint(args.model)
    total = sum(math.prod(e.shape) * 2 for e in ckpt.weights)
    largest = max(math.prod(e.shape) * 2 for e in ckpt.weights)
    print(f"{args.model}: {len(ckpt.weights)} tensors, {ckpt.nbytes / 1e9:.2f} GB packed, "
          f"{total / 1e9:.2f} GB BF16; torch threads {torch.get_num_threads()}", flush=True)
    dequant_pass(ckpt, 1)  # warm-up: page cache, allocator
    runs = dequant_pass(ckpt, args.trials)
    for i, r in enumerate(runs):
        print(f"  dequant trial {i}: {r['seconds']:.2f} s ({r['read_s']:.2f} read, {r['dequant_s']:.2f} dequant), "
              f"{r['gb_per_s']:.2f} GB/s BF16 out; pooled tensors {r['pooled_gb_per_s']:.2f} GB/s, the "
              f"{r['fresh_memory_bytes'] / 1e9:.2f} GB in fresh memory {r['fresh_memory_tensors_s']:.2f} s", flush=True)
    rss = peak_rss_gib()  # of the streaming pass alone: the next measure holds every packed tensor
    kernel = dequant_into_preallocated(ckpt, args.trials)
    copies = copy_bandwidth(total, largest, args.trials)
    for name, rates in (("dequant into preallocated", kernel), ("copy", copies)):
        for i, c in enumerate(rates):
            print(f"  {name} trial {i}: {c:.2f} GB/s", flush=True)
    best_dq, best_kernel, best_copy = max(r["gb_per_s"] for r in runs), max(kernel), max(copies)
    result = {
        "model": str(args.model), "tensors": len(ckpt.weights), "packed_bytes": ckpt.nbytes, "bf16_bytes": total,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "torch": torch.__version__,
        "c_kernel": cpu_kernel.available(), "dequant": runs, "preallocated_gb_per_s": kernel,
        "copy_gb_per_s": copies, "best_dequant_gb_per_s": best_dq, "best_preallocated_gb_per_s": best_kernel,
        "best_copy_gb_per_s": best_copy, "ratio": best_dq / best_copy, "preallocated_ratio": best_kernel / best_copy,
        "peak_rss_gib": rss,
    }
    if args.bf16:
        bf16_pass(args.bf16)  # warm-up: page cache
        result["bf16_pass"] = bf16 = bf16_pass(args.bf16)
        print(f"  BF16 checkpoint read as vLLM's default loader does: {bf16['seconds']:.2f} s, "
              f"peak RSS {bf16['peak_rss_gib']:.2f} GiB (the MLX pass: {rss:.2f} GiB)", flush=True)
    print(f"loader pass {best_dq:.2f} GB/s, dequant into preallocated {best_kernel:.2f} GB/s, copy {best_copy:.2f} "
          f"GB/s: ratios {result['ratio']:.3f} and {result['preallocated_ratio']:.3f} (target >= 0.5); "
          f"C kernel {'built' if cpu_kernel.available() else 'MISSING (torch path)'}; "
          f"peak RSS of the pass {rss:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
