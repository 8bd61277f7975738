"""The device column of `validate`: vLLM's full-vocabulary raw logits, written to disk in vLLM's worker.

A prompt's logit rows are what validate compares, and at Qwen3's 151,936-token vocabulary a 1,000-token prompt's
rows are 0.6 GB in float32. vLLM hands logprobs to the caller through its output processor (a `[positions,
vocab + 1]` tensor pair gathered in the engine, copied between processes, then Python objects), so the rows are
taken where the model computes them instead: `logits_capture.LogitsCapture`, a worker extension, appends every
row `compute_logits` returns to two files per prompt (its prompt's rows, its generated rows), a few rows at a time.
vLLM is asked only for the chosen tokens' values (top-0 log-probabilities), which `run_device` checks against the
files row by row, so a capture that does not line up with the tokens stops the run. `DeviceRun.read(a, b)` reads
rows back for the comparison. Disk: 4 bytes per position per vocabulary entry, in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import compat
from .logits_capture import LogitsCapture, capture_paths, hidden_path

BLOCK_BYTES = 1 << 26  # 64 MiB of float32 rows at a time on our side
# vLLM turns a prefill step's prompt rows into float32 at once (`[tokens, vocab]`); chunking the prefill bounds
# that: 256 tokens at Qwen3's vocabulary are 0.23 GB (a 1,065-token prompt in one step was 0.96 GB)
PREFILL_CHUNK_TOKENS = 256


def rows_per_block(vocab: int, bytes_per_value: int = 4) -> int:
    return max(1, BLOCK_BYTES // (vocab * bytes_per_value))


@dataclass
class DeviceRun:
    """One prompt's device run: its tokens and the files of its raw logits. Row i predicts token i + 1: the
    prompt's rows (`len(prompt) - 1`) are in `files[0]`, those of the generated tokens in `files[1]`."""

    prompt_ids: list[int]
    generated_ids: list[int]
    files: tuple[Path, Path]
    vocab: int
    # the prompt rows' final hidden states (what the model's `compute_logits` was given) and their width, where
    # captured (the first prompt: `routing.device_factor`)
    hidden: tuple[Path, int] | None = None

    def read_hidden(self) -> torch.Tensor | None:
        """The prompt rows' final hidden states, `[len(prompt) - 1, width]` float32; None where not captured."""
        if self.hidden is None or not self.hidden[1]:
            return None
        path, width = self.hidden
        return torch.from_numpy(np.fromfile(path, dtype=np.float32)).view(-1, width)

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.generated_ids

    @property
    def rows(self) -> int:
        return sum(self._rows_in(f) for f in self.files)

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows `[start, stop)` as a `[stop - start, vocab]` float32 tensor."""
        parts, offset = [], 0
        for f in self.files:
            n = self._rows_in(f)
            a, b = max(start - offset, 0), min(stop - offset, n)
            if a < b:
                data = np.fromfile(f, dtype=np.float32, count=(b - a) * self.vocab, offset=a * self.vocab * 4)
                parts.append(torch.from_numpy(data).view(b - a, self.vocab))
            offset += n
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _rows_in(self, f: Path) -> int:
        return f.stat().st_size // (4 * self.vocab)


def run_device(
    model: str, prompts: list[list[int]], directory: Path, vocab: int, *, max_tokens: int,
    log: Callable[[str], None] = print, **llm_kwargs: Any,
) -> list[DeviceRun]:
    """Greedy-decode each prompt in vLLM with this loader; its workers write each prompt's logits to `directory`."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model, load_format="mlx", dtype="bfloat16", logprobs_mode="raw_logits", generation_config="vllm",
        max_model_len=max(len(p) for p in prompts) + max_tokens + 8, seed=0,
        # one request at a time (vLLM refuses fewer batched tokens than sequences: 1,024 by default on large GPUs)
        **{"max_num_batched_tokens": PREFILL_CHUNK_TOKENS, "enable_chunked_prefill": True, "max_num_seqs": 1,
           **llm_kwargs},
        worker_extension_cls=f"{LogitsCapture.__module__}.{LogitsCapture.__qualname__}",
    )
    # top-0: only the chosen (prompt or sampled) token's value comes back, to line the files up with the tokens
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0, prompt_logprobs=0, detokenize=False)
    runs = []
    try:
        for i, prompt in enumerate(prompts):  # one at a time: every row the model computes belongs to this prompt
            log(f"device: prompt {i + 1}/{len(prompts)} ({len(prompt)} tokens)")
            files = capture_paths(directory, i)
            hidden = hidden_path(directory, i) if i == 0 else None  # the first prompt's: `routing.device_factor`
            llm.collective_rpc("mlx_capture_start", args=(str(files[0]), str(files[1]), vocab,
                                                          None if hidden is None else str(hidden)))
            try:
                (out,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
            finally:
                (written,) = [r for r in llm.collective_rpc("mlx_capture_stop") if r is not None]
            completion = out.outputs[0]
            run = DeviceRun(list(prompt), list(completion.token_ids), files, vocab,
                            None if hidden is None else (hidden, written[2]))
            _drop_discarded_samples(run, written[1])
            check_alignment(
                run, _chosen(out.prompt_logprobs, prompt, 1), _chosen(completion.logprobs, run.generated_ids))
            runs.append(run)
    finally:
        compat.shutdown_llm(llm)
    return runs


def _chosen(logprobs: Any, tokens: list[int], skip: int = 0) -> list[float]:
    """The value vLLM reported for each chosen token (a prompt's first position has none)."""
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probabilities for the chosen tokens")
    return [float(step[t].logprob) for step, t in zip(logprobs[skip:], tokens[skip:], strict=True)]


def _drop_discarded_samples(run: DeviceRun, sampled_rows: int) -> None:
    """vLLM samples after every step, also after a chunk of a prompt too long for one step, and discards those
    samples: the generated file then starts with their rows."""
    extra = sampled_rows - len(run.generated_ids)
    if extra < 0:
        raise RuntimeError(f"vLLM computed {sampled_rows} sampled rows for {len(run.generated_ids)} generated tokens")
    if extra:
        data = np.fromfile(run.files[1], dtype=np.float32)[extra * run.vocab:]
        data.tofile(run.files[1])


def check_alignment(run: DeviceRun, prompt_values: list[float], generated_values: list[float]) -> None:
    """Each captured row's entry for the token it predicts equals what vLLM reported for that token: the raw logit
    (vLLM 0.32 on prompt rows; all versions on sampled ones) or its log-probability (0.18 and 0.23 on prompt rows)."""
    expected = torch.tensor(prompt_values + generated_values, dtype=torch.float64)
    if run.rows != len(run.sequence) - 1 or expected.numel() != run.rows:
        raise RuntimeError(
            f"the captured logits have {run.rows} rows for {len(run.sequence) - 1} positions: this vLLM version "
            "computes logits otherwise than validate knows.")
    targets, step = torch.tensor(run.sequence[1:]), rows_per_block(run.vocab)
    for a in range(0, run.rows, step):
        rows = run.read(a, min(a + step, run.rows)).double()
        raw = rows.gather(1, targets[a:a + step, None])[:, 0]
        logprob = raw - rows.logsumexp(-1)
        want = expected[a:a + step]
        close = torch.isclose(raw, want, rtol=1e-5, atol=1e-3, equal_nan=True) | torch.isclose(
            logprob, want, rtol=1e-5, atol=1e-3, equal_nan=True)
        if not close.all():
            pos = a + int((~close).nonzero()[0])
            raise RuntimeError(
                f"captured logits do not line up with vLLM's tokens at position {pos}: row value {float(raw[pos - a])}"
                f", vLLM reported {float(want[pos - a])} for token {int(targets[pos])}.")
