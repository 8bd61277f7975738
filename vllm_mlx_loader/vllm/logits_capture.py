"""Worker side of validate's device column: the model's raw logits written to disk where they are computed.

`validate` starts vLLM with `worker_extension_cls` set to `LogitsCapture`, which vLLM mixes into its worker class,
and drives it through `LLM.collective_rpc`. `mlx_capture_start(prompt_file, generated_file, vocab, hidden_file)`
wraps the model's `compute_logits` (every logit row vLLM computes passes through it) and the model runner's
prompt-logprobs step (`compat.PROMPT_LOGPROBS_STEP`, to tell the prompt's rows from the sampled ones), and from then
on appends each row, as float32, to the prompt's file or the generated tokens' file. So no full-vocabulary tensor
leaves the worker: vLLM itself is asked for top-0 log-probabilities only (the chosen token's), which validate uses
to check that the files line up with the tokens. With `hidden_file`, the prompt rows' final hidden states (what
`compute_logits` is given) go there too: how far they are from float32 sizes validate's routing near-tie bounds
(`routing.device_factor`).

Only the tensor-parallel rank 0 of the last pipeline stage writes (the one `compute_logits` gathers to); every
rank calls the wrapped `compute_logits`, so its collectives are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROWS_PER_WRITE = 64  # rows converted to float32 and copied to the host at a time


class _Files:
    def __init__(self, prompt_file: str, generated_file: str, vocab: int, hidden_file: str | None = None) -> None:
        self.vocab = vocab
        self.rows = [0, 0]
        self.hidden_width = 0
        self.files = [open(prompt_file, "wb"), open(generated_file, "wb")]  # noqa: SIM115 (closed by close())
        self.hidden = open(hidden_file, "wb") if hidden_file else None  # noqa: SIM115 (closed by close())

    def write(self, logits: torch.Tensor, prompt: bool, hidden_states: torch.Tensor | None = None) -> None:
        if logits.dim() != 2 or logits.shape[1] != self.vocab:
            raise RuntimeError(
                f"compute_logits returned shape {tuple(logits.shape)}, not [rows, {self.vocab}]: this vLLM version "
                "or model computes logits otherwise than validate knows.")
        which = 0 if prompt else 1
        _append(self.files[which], logits)
        self.rows[which] += logits.shape[0]
        if prompt and self.hidden is not None and isinstance(hidden_states, torch.Tensor) \
                and hidden_states.dim() == 2 and hidden_states.shape[0] == logits.shape[0]:
            _append(self.hidden, hidden_states)
            self.hidden_width = hidden_states.shape[1]

    def close(self) -> list[int]:
        """`[prompt rows, generated rows, hidden width]` (width 0: no hidden state was written)."""
        for f in [*self.files, self.hidden]:
            if f is not None:
                f.close()
        return [*self.rows, self.hidden_width]


def _append(file: Any, rows: torch.Tensor) -> None:
    for a in range(0, rows.shape[0], ROWS_PER_WRITE):
        file.write(rows[a:a + ROWS_PER_WRITE].to(device="cpu", dtype=torch.float32).numpy().tobytes())


def _writes_here() -> bool:
    from vllm.distributed import get_pp_group, get_tp_group

    return get_pp_group().is_last_rank and get_tp_group().rank_in_group == 0


class LogitsCapture:
    """Mixed into vLLM's worker class (`worker_extension_cls`): methods for `LLM.collective_rpc`."""

    def mlx_capture_start(self, prompt_file: str, generated_file: str, vocab: int,
                          hidden_file: str | None = None) -> None:
        if getattr(self, "_mlx_files", None) is not None:
            raise RuntimeError("a logits capture is already open in this worker")
        if not getattr(self, "_mlx_capture_installed", False):
            _install(self)
            self._mlx_capture_installed = True
        self._mlx_files = _Files(prompt_file, generated_file, vocab, hidden_file) if _writes_here() else None

    def mlx_capture_stop(self) -> list[int] | None:
        """Close the files; `[prompt rows, generated rows, hidden width]` on the writing rank, None on the others."""
        files, self._mlx_files = getattr(self, "_mlx_files", None), None
        return None if files is None else files.close()


def _install(worker: Any) -> None:
    from . import compat

    runner = worker.model_runner
    model = runner.get_model()
    prompt_step = compat.prompt_logprobs_step(runner)
    compute_logits: Callable[..., Any] = model.compute_logits
    in_prompt_step = [False]

    def capturing_compute_logits(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        logits = compute_logits(hidden_states, *args, **kwargs)
        files = getattr(worker, "_mlx_files", None)
        if files is not None and logits is not None:
            files.write(logits, in_prompt_step[0], hidden_states)
        return logits

    def flagged_prompt_step(*args: Any, **kwargs: Any) -> Any:
        in_prompt_step[0] = True
        try:
            return prompt_step(*args, **kwargs)
        finally:
            in_prompt_step[0] = False

    model.compute_logits = capturing_compute_logits  # instance attributes: this worker's model and runner only
    setattr(runner, compat.PROMPT_LOGPROBS_STEP, flagged_prompt_step)


def capture_paths(directory: Path, index: int) -> tuple[Path, Path]:
    return directory / f"prompt-{index}.f32", directory / f"generated-{index}.f32"


def hidden_path(directory: Path, index: int) -> Path:
    return directory / f"prompt-hidden-{index}.f32"
