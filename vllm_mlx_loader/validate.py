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
when every gate of every column passes, 1 when any fails (named on stderr), 2 on bad input.

What it cannot see: a dequantization bug shared by the device and the torch reference (both use this
package's dequantization) shows only in the mlx_fp32 column, so run with MLX installed. Differences
beyond the prompts and tokens compared (other lengths, batch sizes, sampling) are not measured.
Memory: the float32 reference needs about 4 bytes per weight of host RAM (~33 GB for an 8B model),
checked before it starts; --no-torch-reference compares against MLX alone (mlx-lm keeps the weights
packed, ~4.5 GB for an 8B model at 4 bits).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import accuracy, report
from .errors import MLXCheckpointError
from .format import MLXCheckpoint, read_checkpoint
from .hf_compat import load_tokenizer

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


@dataclass
class DeviceRun:
    prompt_ids: list[int]
    generated_ids: list[int]
    logits: torch.Tensor  # [len(prompt) + len(generated) - 1, vocab], row i predicts token i + 1

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.generated_ids


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


def dense_rows(positions: Any, vocab: int, skip_first: bool) -> torch.Tensor:
    """vLLM's per-position logprob containers (flat or list of dicts) -> `[n, vocab]` float32."""
    if hasattr(positions, "start_indices"):  # FlatLogprobs: read the flat lists, no per-token objects
        ids = torch.tensor(positions.token_ids, dtype=torch.long)
        values = torch.tensor(positions.logprobs, dtype=torch.float32)
        spans = list(zip(positions.start_indices, positions.end_indices, strict=True))
        rows = [(ids[a:b], values[a:b]) for a, b in spans]
    else:
        rows = [
            (torch.tensor(list(p), dtype=torch.long), torch.tensor([lp.logprob for lp in p.values()]))
            if p else (torch.empty(0, dtype=torch.long), torch.empty(0))
            for p in positions
        ]
    rows = rows[1:] if skip_first else rows  # the first prompt position has no prediction
    out = torch.full((len(rows), vocab), float("nan"))
    for i, (ids, values) in enumerate(rows):
        out[i, ids] = values
    if torch.isnan(out).any():
        raise RuntimeError(f"vLLM returned logits for fewer than {vocab} tokens: is max_logprobs -1?")
    return out


def run_device(model: str, prompts: list[list[int]], args: argparse.Namespace, vocab: int) -> list[DeviceRun]:
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model, load_format="mlx", dtype="bfloat16", max_logprobs=-1, logprobs_mode="raw_logits",
        generation_config="vllm", max_model_len=max(len(p) for p in prompts) + args.max_tokens + 8,
        tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager, distributed_executor_backend=args.executor_backend, seed=0,
    )
    options = dict(temperature=0.0, max_tokens=args.max_tokens, logprobs=-1, prompt_logprobs=-1, detokenize=False)
    try:
        params = SamplingParams(**options, flat_logprobs=True)
    except TypeError:  # vLLM without flat logprobs
        params = SamplingParams(**options)
    runs = []
    for i, prompt in enumerate(prompts):  # one at a time: full-vocabulary logits are large
        log(f"device: prompt {i + 1}/{len(prompts)} ({len(prompt)} tokens)")
        (out,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        result = out.outputs[0]
        logits = torch.cat([
            dense_rows(out.prompt_logprobs, vocab, skip_first=True), dense_rows(result.logprobs, vocab, False)
        ])
        runs.append(DeviceRun(list(prompt), list(result.token_ids), logits[: len(prompt) + len(result.token_ids) - 1]))
    shutdown_llm(llm)
    return runs


def shutdown_llm(llm: Any) -> None:
    """Stop vLLM's engine now (its memory is needed next), not whenever the garbage collector runs."""
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


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
    if args.no_torch_reference and not use_mlx:
        raise MLXCheckpointError("validate", "no reference left: MLX is not installed and --no-torch-reference given.")
    if not args.no_torch_reference:
        check_memory_for_reference(ckpt)
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

    log(f"phase 1/3: device run through vLLM ({len(prompts)} prompts, {args.max_tokens} greedy tokens each)")
    runs = run_device(str(args.model), prompts, args, vocab)
    sequences = [r.sequence for r in runs]
    references: dict[str, list[torch.Tensor]] = {}
    if not args.no_torch_reference:
        log("phase 2/3: float32 CPU reference (transformers)")
        from .reference import load_reference, reference_logits

        model = load_reference(ckpt)
        references["torch_fp32"] = reference_logits(model, sequences)
        del model
    if use_mlx:
        log("phase 3/3: MLX float32 reference (mlx-lm)")
        from .mlx_reference import logits_float32

        references["mlx_fp32"] = logits_float32(args.model, sequences)
    log("comparing")
    result = report.build(ckpt, args, gates, tokenizer, texts, runs, references, chat)
    print(report.markdown(result))
    if args.output:
        report.write(result, args.output)
        log(f"wrote {args.output / 'accuracy.json'} and {args.output / 'accuracy.md'}")
    if result["failed"]:
        print(f"FAILED gates: {', '.join(result['failed'])}", file=sys.stderr)
        return 1
    log("all gates passed")
    return 0


def check_memory_for_reference(ckpt: MLXCheckpoint) -> None:
    from .reference import check_memory, reference_bytes

    log(f"the float32 reference needs about {reference_bytes(ckpt) / 2**30:.2f} GiB of host memory")
    check_memory(ckpt)


def _mlx_available() -> bool:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
