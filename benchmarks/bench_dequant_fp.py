"""MLX's float modes on the CPU: seconds and GB/s of BF16 for one tensor of a real shape, checked against MLX.

    python benchmarks/bench_dequant_fp.py [--rows 151936] [--cols 1024] [--trials 3] [--baseline FILE [--note TEXT]]
                                          [--json OUT]

For mxfp4, nvfp4 and mxfp8 it quantizes a random tensor with `mx.quantize` (default: Qwen3's 151,936 x 1,024
embedding), dequantizes it with `dequant_fp.dequantize_fp` (the path the loader, the converter and the
accelerators run) and asserts the result equals `mx.dequantize` bit for bit; the best of `--trials` is reported.
`--baseline` names another `dequant_fp.py` (e.g. `git show 3133014:vllm_mlx_loader/dequant_fp.py > old.py`) to
time beside it, with the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np
import torch

from vllm_mlx_loader import dequant_fp

MODES = ("mxfp4", "nvfp4", "mxfp8")


def as_torch(a: mx.array) -> torch.Tensor:
    if a.dtype == mx.bfloat16:
        return torch.from_numpy(np.array(a.view(mx.uint16))).view(torch.bfloat16)
    if a.dtype == mx.uint32:
        return torch.from_numpy(np.array(a).view(np.int32))
    return torch.from_numpy(np.array(a))


def load_baseline(path: Path):
    source = path.read_text().replace("from .", "from vllm_mlx_loader.")
    spec = importlib.util.spec_from_loader("baseline_dequant_fp", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def best_of(fn, trials: int, want: torch.Tensor) -> float:
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - start)
        assert torch.equal(got, want), "not bit-exact with mx.dequantize"
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=151_936)
    parser.add_argument("--cols", type=int, default=1_024)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--note", help="what --baseline is, for the report")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    rng = np.random.default_rng(0)
    w = mx.array((rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)).astype(mx.bfloat16)
    results = []
    for mode in MODES:
        q, s = mx.quantize(w, mode=mode)[:2]
        want = as_torch(mx.dequantize(q, s, mode=mode, dtype=mx.bfloat16))
        qt, st = as_torch(q), as_torch(s)
        seconds = best_of(partial(dequant_fp.dequantize_fp, qt, st, mode=mode), args.trials, want)
        row = {"mode": mode, "seconds": seconds}
        row["gb_per_s"] = want.numel() * 2 / row["seconds"] / 1e9
        if baseline is not None:
            row["baseline_seconds"] = best_of(partial(baseline.dequantize_fp, qt, st, mode=mode), args.trials, want)
            row["speedup"] = row["baseline_seconds"] / row["seconds"]
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        report = {
            "command": "python benchmarks/bench_dequant_fp.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if v is not None and k not in ("json", "note")
            ),
            "baseline": args.note,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "versions": {"torch": torch.__version__, "mlx": mx.__version__ if hasattr(mx, "__version__") else "?"},
            "shape": [args.rows, args.cols], "results": results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
