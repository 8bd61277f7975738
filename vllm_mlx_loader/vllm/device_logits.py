"""The device column of `validate`: vLLM's full-vocabulary raw logits, as tensors, streamed to disk.

vLLM returns prompt and sample logprobs as Python objects (one float, one int and one rank per token per
position): at Qwen3's 151,936-token vocabulary a 1,000-token prompt becomes ~160 M objects and >10 GB of
host memory. So while `validate` runs vLLM, the output processor's two conversion methods are replaced
(`compat.logprob_tensors_to`, a private vLLM API kept in `compat.py`): the tensors vLLM's engine sends are
scattered into dense float32 rows, a block of positions at a time, and appended to two files per prompt
(its prompt's rows, its generated rows). `DeviceRun.read(a, b)` reads rows back for the comparison. Host
memory on our side: one block of rows.

What stays: vLLM's engine gathers a prompt's logprobs into one `[positions, vocab + 1]` tensor pair before
it sends them (12 bytes per entry: 1.9 GB for 1,064 positions at 151,936), so the longest prompt sets the
engine's transient peak. Disk: 4 bytes per position per vocabulary entry, in a temporary directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import compat

BLOCK_BYTES = 1 << 26  # 64 MiB of float32 rows at a time on our side


def rows_per_block(vocab: int, bytes_per_value: int = 4) -> int:
    return max(1, BLOCK_BYTES // (vocab * bytes_per_value))


@dataclass
class DeviceRun:
    """One prompt's device run: its tokens and the files of its logits. Row i predicts token i + 1: the prompt's
    rows (`len(prompt) - 1`) are in `files[0]`, those of the generated tokens in `files[1]`."""

    prompt_ids: list[int]
    generated_ids: list[int]
    files: tuple[Path, Path]
    vocab: int
    # vLLM 0.18 and 0.23 log-softmax prompt rows whatever `logprobs_mode` says (0.32 does not); generated rows are raw
    prompt_rows_are_logprobs: bool = False

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


class _RowWriter:
    """Scatters vLLM's `(token ids, values)` rows into dense float32 rows, appended to the prompt's file or
    the generated tokens' file (vLLM hands over the first sampled row before the prompt's rows)."""

    def __init__(self, files: tuple[Path, Path], vocab: int) -> None:
        self.files, self.vocab = files, vocab
        self._open = [open(f, "wb") for f in files]  # noqa: SIM115 (closed by close())
        self.prompt_targets: list[int] = []  # the token each prompt row scored first, to check the alignment
        self.prompt_logsumexp = 0.0  # the largest |logsumexp| of a prompt row: ~0 when vLLM sent log-probs

    def write(self, ids: torch.Tensor, values: torch.Tensor, prompt: bool) -> None:
        if prompt:
            self.prompt_targets += ids[:, 0].tolist()
        step = rows_per_block(self.vocab)
        for a in range(0, ids.shape[0], step):
            rows = min(step, ids.shape[0] - a)
            block = torch.zeros(rows, self.vocab).scatter_(1, ids[a:a + step].long(), values[a:a + step].float())
            # coverage is checked apart from the values: a device's own NaN logits are kept for the gates to count
            if not torch.zeros(rows, self.vocab, dtype=torch.bool).scatter_(1, ids[a:a + step].long(), True).all():
                raise RuntimeError(f"vLLM returned logits for fewer than {self.vocab} tokens: is max_logprobs -1?")
            if prompt:
                lse = block.double().logsumexp(-1).abs()
                lse = lse[torch.isfinite(lse)]
                self.prompt_logsumexp = max(self.prompt_logsumexp, float(lse.max()) if lse.numel() else 0.0)
            self._open[0 if prompt else 1].write(block.numpy().tobytes())

    def close(self) -> None:
        for f in self._open:
            f.close()


def run_device(
    model: str, prompts: list[list[int]], directory: Path, vocab: int, *, max_tokens: int,
    log: Callable[[str], None] = print, **llm_kwargs: Any,
) -> list[DeviceRun]:
    """Greedy-decode each prompt in vLLM with this loader; write each prompt's logits to `directory`."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model, load_format="mlx", dtype="bfloat16", max_logprobs=-1, logprobs_mode="raw_logits",
        generation_config="vllm", max_model_len=max(len(p) for p in prompts) + max_tokens + 8, seed=0, **llm_kwargs,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=-1, prompt_logprobs=-1, detokenize=False)
    runs = []
    try:
        for i, prompt in enumerate(prompts):  # one at a time: the engine holds a prompt's logits at once
            log(f"device: prompt {i + 1}/{len(prompts)} ({len(prompt)} tokens)")
            writer = _RowWriter((directory / f"prompt-{i}.f32", directory / f"generated-{i}.f32"), vocab)
            try:
                with compat.logprob_tensors_to(writer.write):
                    (out,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
            finally:
                writer.close()
            run = DeviceRun(
                list(prompt), list(out.outputs[0].token_ids), writer.files, vocab,
                prompt_rows_are_logprobs=len(prompt) > 1 and writer.prompt_logsumexp < 1e-3,
            )
            if writer.prompt_targets != run.prompt_ids[1:] or run.rows != len(run.sequence) - 1:
                raise RuntimeError(
                    f"vLLM's logprobs did not arrive as expected ({run.rows} rows for {len(run.sequence) - 1} "
                    "positions): this vLLM version's output processor differs from what validate knows."
                )
            runs.append(run)
    finally:
        compat.shutdown_llm(llm)
    return runs
