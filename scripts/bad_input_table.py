"""Print the README's bad-input table: each row of `tests/test_bad_input.py`, run, with the loader's actual message
(the temporary directory trimmed to `model/`). Paste the output over the table's rows.

    .venv/bin/python scripts/bad_input_table.py
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "examples")]

import test_bad_input as cases  # noqa: E402
import tiny_qwen3  # noqa: E402
from conftest import FIXTURES  # noqa: E402

from vllm_mlx_loader.errors import MLXCheckpointError  # noqa: E402
from vllm_mlx_loader.format import read_checkpoint  # noqa: E402
from vllm_mlx_loader.weights import iter_dense_weights  # noqa: E402


def message(row: str, breaker, fixture: str, dtype: torch.dtype) -> str | None:
    """The loader's message for the row, or None where the checkpoint loads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        shutil.copytree(tiny_qwen3.build_variant(FIXTURES, fixture), path, ignore=shutil.ignore_patterns(".stamp"))
        breaker(path)
        if row == "hf-cache-symlinks":
            path = path / "snapshots" / "rev"
        try:
            for _ in iter_dense_weights(read_checkpoint(path), "cpu", dtype):
                pass
        except MLXCheckpointError as e:
            return re.sub(re.escape(tmp) + "/", "", str(e)).replace("|", "\\|")
    return None


def main() -> int:
    written = {m[1]: m[0] for m in re.finditer(r"^\| `([a-z0-9-]+)` \|.*$", cases.readme_section(), flags=re.MULTILINE)}
    rows = [(*r[:3], "q4g64", torch.bfloat16) for r in cases.ROWS]
    rows += [(*r[:3], "qwen3_moe", torch.bfloat16) for r in cases.MOE_ROWS]
    rows += [(*r[:3], r[4], torch.bfloat16) for r in cases.FP_ROWS]
    rows += [(*r[:3], r[4], r[5]) for r in cases.DTYPE_ROWS]
    rows += [(*r[:3], r[4], torch.bfloat16) for r in cases.FAMILY_ROWS]
    for row, what, breaker, fixture, dtype in rows:
        said = message(row, breaker, fixture, dtype)
        if said is None and row in written:  # a row that loads keeps the README's words for why
            print(written[row])
        else:
            print(f"| `{row}` | {what} | {said or 'loads (ignored by design).'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
