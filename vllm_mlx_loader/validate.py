"""Prove that the device computes what a CPU float32 reference computes, for one MLX checkpoint.

    python -m vllm_mlx_loader.validate MODEL_DIR [--output DIR] [--prompts FILE] [--max-tokens N]

1. device: vLLM with this loader on the current platform (NPU, CUDA or CPU), BF16, greedy decoding
   forced; full-vocabulary raw logits for every prompt position and every generated step.
2. torch_fp32: transformers' own model class in float32 on the CPU, weights dequantized from the same
   checkpoint (float32 math), teacher-forced on the device's text.
3. mlx_fp32: MLX itself (mlx-lm, float32), when `mlx` is importable: it shares no code with 1 and 2.

Device logits are compared with each reference at every position. Gates (defaults): min cosine >= 0.999,
top-1 agreement >= 99 % with 0 hard flips (a flip where the reference's top-2 gap is >= 0.3 nat), mean
KL(reference || device) <= 1e-3 nat, max |delta logprob| of the tokens the device chose <= 0.1. Exit status 0
when every gate of every column passes, 1 when any fails (named on stderr), 2 on bad input. MoE models: positions
where a router's choice was within a BF16 device's reach (`routing.py`) are left out, and min cosine and top-1
are taken before a sequence's first such position (`accuracy.summarize`).

What it cannot see: a dequantization bug shared by the device and the torch reference (both use this
package's dequantization) shows only in the mlx_fp32 column, so run with MLX installed. Differences
beyond the prompts and tokens compared (other lengths, batch sizes, sampling) are not measured.
Memory: the float32 reference needs about 4 bytes per weight of host RAM (~33 GB for an 8B model),
checked before it starts; --no-torch-reference compares against MLX alone (mlx-lm keeps the weights
packed, ~4.5 GB for an 8B model at 4 bits).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import accuracy, report, routing
from .errors import MLXCheckpointError
from .format import MLXCheckpoint, read_checkpoint
from .hf_compat import load_tokenizer
from .routing import Record
from .vllm import compat
from .vllm.device_logits import DeviceRun, rows_per_block, run_device

__all__ = ["main", "validate"]

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences why the sky is blue.",
    "Who wrote the novel Pride and Prejudice, and when was it published?",
    "请用一句话介绍北京。",
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is 17 multiplied by 23? Show the steps.",
    "List three differences between TCP and UDP.",
    "Translate to French: The weather is nice today.",
]
LONG_PARAGRAPH = (
    "The history of computing is a story of abstractions built on abstractions. Early machines were "
    "programmed by rewiring panels; stored programs replaced the wires, assemblers replaced the numbers, "
    "and compilers replaced the assembly. Each layer let people think about larger problems. "
)
LONG_PROMPT_TOKENS = 1024


def log(message: str) -> None:
    print(f"[validate {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_prompts(path: Path | None) -> list[str]:
    """Prompts from a file: JSON lines (strings or {"prompt": ...}) for .jsonl, else one per line."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        item = json.loads(line)
        prompt = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(prompt, str):
            raise MLXCheckpointError(f"{path}:{number}", 'expected a JSON string or {"prompt": "..."}.')
        prompts.append(prompt)
    return prompts


def encode_prompts(tokenizer: Any, prompts: list[str], chat: bool, thinking: bool) -> list[list[int]]:
    if not chat:
        return [tokenizer(p)["input_ids"] for p in prompts]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        for p in prompts
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def long_prompt(tokenizer: Any) -> str:
    text = ""
    while len(tokenizer(text)["input_ids"]) < LONG_PROMPT_TOKENS:
        text += LONG_PARAGRAPH
    return text + "\nSummarise the passage above in one sentence."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="MLX checkpoint directory")
    parser.add_argument("--output", type=Path, help="write accuracy.json and accuracy.md here")
    parser.add_argument("--prompts", type=Path, help="prompt file: one per line, or JSON lines (.jsonl)")
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="apply the checkpoint's chat template (default: when it has one)")
    parser.add_argument("--enable-thinking", action=argparse.BooleanOptionalAction, default=False,
                        help="chat template enable_thinking (default off)")
    parser.add_argument("--no-long-prompt", action="store_true", help=f"skip the {LONG_PROMPT_TOKENS}-token prompt")
    parser.add_argument("--no-mlx", action="store_true", help="skip the MLX column even if mlx is installed")
    parser.add_argument("--no-torch-reference", action="store_true", help="skip the float32 transformers column")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--quantization", choices=["mlx"],
                        help="mlx: keep the 4-bit layers packed on the device (opt-in W4A16) instead of BF16")
    parser.add_argument("--executor-backend", choices=["mp", "uni", "ray"], help="vLLM's distributed executor")
    defaults = accuracy.Gates()
    parser.add_argument("--min-cosine", type=float, default=defaults.min_cosine)
    parser.add_argument("--min-top1", type=float, default=defaults.min_top1)
    parser.add_argument("--max-hard-flips", type=int, default=defaults.max_hard_flips)
    parser.add_argument("--max-mean-kl", type=float, default=defaults.max_mean_kl)
    parser.add_argument("--max-dlogprob", type=float, default=defaults.max_dlogprob)
    args = parser.parse_args(argv)
    gates = accuracy.Gates(args.min_cosine, args.min_top1, args.max_hard_flips, args.max_mean_kl, args.max_dlogprob)
    try:
        return validate(args, gates)
    except MLXCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def validate(args: argparse.Namespace, gates: accuracy.Gates) -> int:
    ckpt = read_checkpoint(args.model)
    use_mlx = not args.no_mlx and _mlx_available()
    use_torch = not args.no_torch_reference and torch_reference_fits(ckpt)
    if not use_torch and not use_mlx:
        raise MLXCheckpointError("validate", "no reference left: MLX is not installed and the torch reference is off.")
    tokenizer = load_tokenizer(args.model)
    chat = bool(tokenizer.chat_template) if args.chat is None else args.chat
    texts = read_prompts(args.prompts)
    max_len = ckpt.config.get("max_position_embeddings", 0)
    if args.prompts is None and not args.no_long_prompt:
        text = long_prompt(tokenizer)
        if len(tokenizer(text)["input_ids"]) + args.max_tokens + 64 <= max_len:
            texts.append(text)
    prompts = encode_prompts(tokenizer, texts, chat, args.enable_thinking)
    vocab = ckpt.config["vocab_size"]

    with tempfile.TemporaryDirectory(prefix="vllm-mlx-validate-") as work:
        log(f"phase 1/3: device run through vLLM ({len(prompts)} prompts, {args.max_tokens} greedy tokens each)")
        runs = run_device(
            str(args.model), prompts, Path(work), vocab, max_tokens=args.max_tokens, log=log,
            tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
            enforce_eager=args.enforce_eager, distributed_executor_backend=args.executor_backend,
            quantization=args.quantization,
        )
        log(f"device logits: {sum(r.nbytes for r in runs) / 2**20:.0f} MiB on disk in {work}")
        metrics: dict[str, list[accuracy.RowMetrics]] = {}
        # per sequence, the routers' input deviation the near-tie bounds take (`routing.py`), measured by the torch
        # column; without it the bounds are rounding's at the router alone
        deviations: list[routing.Deviation | None] = []
        factor = None
        if use_torch:
            log("phase 2/3: float32 CPU reference (transformers), compared as it is computed")
            from .reference import load_reference, reference_logit_blocks

            model = load_reference(ckpt)
            emulate = True
            try:
                factor = routing.device_factor(model, ckpt.config, runs[0].sequence, runs[0].read_hidden())
            except (RuntimeError, NotImplementedError, TypeError) as e:  # an op BF16 autocast cannot run on the CPU
                emulate = False
                log(f"router inputs' BF16 deviation not measured ({type(e).__name__}: {e}); near-tie bounds from "
                    "rounding at the router alone")
            if factor is not None:
                log(f"the device's final hidden states deviate {factor:.2f}x a BF16 emulation's from float32: "
                    "routing near-tie bounds take each position's emulated router-input deviation times that")
            elif emulate and routing.experts_and_top_k(ckpt.config):
                log("the device's final hidden states were not captured: routing near-tie bounds take the BF16 "
                    "emulation's router-input deviation alone")

            def torch_blocks(seq: list[int]) -> Iterator[torch.Tensor]:
                if emulate:  # the reference's own pass, next, fills the sequence's figures in
                    deviations.append(routing.emulate(model, record, seq, factor or 1.0))
                return reference_logit_blocks(model, seq, rows_per_block(vocab))

            with routing.recording_torch(model, ckpt.config) as record:
                metrics["torch_fp32"] = compare(runs, torch_blocks, record)
            del model
        if use_mlx:
            log("phase 3/3: MLX float32 reference (mlx-lm), compared as it is computed")
            from .mlx_products import on_torch_blas
            from .mlx_reference import load_float32, logit_blocks
            from .reference import available_bytes, reference_bytes

            mlx_model = load_float32(args.model, log=log)
            keep = reference_bytes(ckpt) * 1.15 < available_bytes()
            log("MLX column: mx.dequantize per layer, products on torch's BLAS; dequantized layers "
                + ("kept for the run" if keep else "made one at a time (not enough host memory to keep them)"))
            measured = iter(deviations)

            def mlx_blocks(seq: list[int]) -> Iterator[torch.Tensor]:
                if mlx_record is not None:
                    mlx_record.deviation = next(measured, None)  # the torch column's, sequence by sequence
                return logit_blocks(mlx_model, seq, rows_per_block(vocab))

            with on_torch_blas(keep_dense=keep), routing.recording_mlx(mlx_model, ckpt.config) as mlx_record:
                metrics["mlx_fp32"] = compare(runs, mlx_blocks, mlx_record)
            del mlx_model
    log("comparing")
    env = report.environment(compat.vllm_version(), *compat.platform_device())
    result = report.build(ckpt, args, gates, tokenizer, texts, runs, metrics, chat, env,
                          routing.median_deviation(deviations), factor)
    print(report.markdown(result))
    if args.output:
        report.write(result, args.output)
        log(f"wrote {args.output / 'accuracy.json'} and {args.output / 'accuracy.md'}")
    if result["failed"]:
        print(f"FAILED gates: {', '.join(result['failed'])}", file=sys.stderr)
        return 1
    log("all gates passed")
    return 0


def compare(
    runs: list[DeviceRun], reference_blocks: Callable[[list[int]], Iterator[torch.Tensor]],
    routing: Record | None = None,
) -> list[accuracy.RowMetrics]:
    """Per-position metrics of each run against a reference that yields its logits a block of rows at a time:
    only one block of each side is in memory at once.

    `routing` records the reference's routing slack while it computes a sequence's hidden states (its first block).
    """
    per_prompt = []
    for run in runs:
        tokens, parts, start, slack = torch.tensor(run.sequence[1:]), [], 0, None
        for ref in reference_blocks(run.sequence):
            if start == 0 and routing is not None:
                slack = routing.take()
            stop = start + ref.shape[0]
            dev = run.read(start, stop)
            rows_slack = None if slack is None else slack[start:stop]
            parts.append(accuracy.row_metrics(ref, dev, tokens[start:stop], rows_slack))
            start = stop
        if start != run.rows:
            raise RuntimeError(f"the reference gave {start} rows for {run.rows} device rows")
        per_prompt.append(accuracy.with_routing_reach(accuracy.concat(parts)))
    return per_prompt


def torch_reference_fits(ckpt: MLXCheckpoint) -> bool:
    """Whether transformers' model takes this checkpoint's weights (else the column is skipped, with the reason:
    the MLX column stays), and the host has the memory for it in float32 (else the run stops, saying so)."""
    from .reference import check_memory, reference_bytes, reference_plan

    placed = reference_plan(ckpt)
    if isinstance(placed, str):
        log(f"float32 torch reference skipped: {placed}")
        return False
    log(f"the float32 reference needs about {reference_bytes(ckpt) / 2**30:.2f} GiB of host memory")
    check_memory(ckpt)
    return True


def _mlx_available() -> bool:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
