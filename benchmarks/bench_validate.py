"""Wall time and peak RSS of `python -m vllm_mlx_loader.validate`, phase by phase.

    python benchmarks/bench_validate.py MLX_DIR [--json OUT] [-- VALIDATE_ARGS...]

Runs validate in a child process exactly as a user would (default prompts, the long prompt, 32 tokens unless
VALIDATE_ARGS say otherwise), samples the RSS of its whole process tree (vLLM's engine runs in children)
every 50 ms (the tree's sum and its largest process), and splits time and peaks by validate's own phases:
setup, device (vLLM), torch_fp32, mlx_fp32, report. Made for Qwen3's 151,936-token vocabulary, where logits
dominate: make a checkpoint of that shape with
`python benchmarks/synthetic_checkpoint.py DIR --shape qwen3-0.6b --tokenizer .cache/fixtures/q4g128`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from measure import TreeRSS

PHASES = {"phase 1/3": "device", "phase 2/3": "torch_fp32", "phase 3/3": "mlx_fp32", "comparing": "report"}


def run(model: Path, validate_args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "vllm_mlx_loader.validate", str(model), *validate_args]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    start = time.perf_counter()
    marks = [("setup", 0.0)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    tail: list[str] = []
    with TreeRSS(proc.pid, phase="setup") as rss:
        for line in proc.stderr:
            tail = [*tail[-40:], line]
            if line.startswith("[validate"):
                print(line, end="", file=sys.stderr, flush=True)
                for key, phase in PHASES.items():
                    if f"] {key}" in line:
                        rss.phase = phase
                        marks.append((phase, time.perf_counter() - start))
        proc.wait()
    total = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: a gate failed, which random weights may do; the figures still count
        raise RuntimeError(f"validate exited with {proc.returncode}:\n{''.join(tail)}")
    ends = [t for _, t in marks[1:]] + [total]
    phases = {
        name: {"wall_s": round(end - begin, 1), "peak_rss_gib": round(rss.peaks.get(name, 0) / 2**30, 2),
               "largest_process_gib": round(rss.largest.get(name, 0) / 2**30, 2)}
        for (name, begin), end in zip(marks, ends, strict=True)
    }
    return {"command": " ".join(cmd), "exit": proc.returncode, "wall_s": round(total, 1),
            "peak_rss_gib": round(rss.peak / 2**30, 2),
            "largest_process_gib": round(max(rss.largest.values(), default=0) / 2**30, 2), "phases": phases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--json", type=Path, help="write the figures here")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])  # what follows -- goes to validate
    result = run(args.model, argv[cut + 1:])
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    print(f"validate {args.model}: {result['wall_s']} s, peak RSS {result['peak_rss_gib']} GiB, largest process "
          f"{result['largest_process_gib']} GiB (exit {result['exit']})")
    print(f"{'phase':<12}{'wall s':>10}{'peak RSS GiB':>15}{'largest GiB':>14}")
    for name, figures in result["phases"].items():
        print(f"{name:<12}{figures['wall_s']:>10}{figures['peak_rss_gib']:>15}{figures['largest_process_gib']:>14}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
