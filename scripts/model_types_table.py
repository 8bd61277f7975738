"""Print the README's table of every model type mlx-lm writes: served (for which architecture, how, and what proves
it) or refused (why), from the loader's own allowlist, so the table cannot drift from the code
(tests/test_families.py compares it with the README).

    .venv/bin/python scripts/model_types_table.py          # print the table
    .venv/bin/python scripts/model_types_table.py --write  # replace it in README.md
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "examples")]

import tiny_families  # noqa: E402

from vllm_mlx_loader.architectures import SERVED  # noqa: E402
from vllm_mlx_loader.architectures.dense import DenseAdapter  # noqa: E402
from vllm_mlx_loader.architectures.identity import (  # noqa: E402
    MLX_LM_MODEL_REMAPPING,
    mlx_lm_module,
    why_refused,
)
from vllm_mlx_loader.architectures.moe import StackedExpertsAdapter  # noqa: E402
from vllm_mlx_loader.architectures.vision_language import LanguageModelOnlyAdapter  # noqa: E402

START, END = "<!-- model-types:start -->", "<!-- model-types:end -->"
# model types with a trained fixture (the architectures table above): what ran in vLLM, as CI runs it
TRAINED = {
    "qwen3": "greedy parity in vLLM 0.32, 0.23, 0.18", "qwen3_moe": "greedy parity in vLLM 0.32, 0.23, 0.18",
    "llama": "greedy parity in vLLM 0.32", "qwen2": "greedy parity in vLLM 0.32",
    "gemma3_text": "greedy parity in vLLM 0.32", "mixtral": "greedy parity in vLLM 0.32",
    "qwen3_next": "greedy parity in vLLM 0.32", "gemma3": "greedy parity in vLLM 0.23, 0.18",
    "gpt_oss": "greedy parity in vLLM 0.32, 0.18", "qwen3_5": "trained fixture: transformers' logits (not run in vLLM)",
    "deepseek_v3": "trained fixture: loads in vLLM; parity through transformers' logits",
}

def mlx_lm_model_types() -> list[str]:
    """Every model type mlx-lm 0.32 converts: a module under `mlx_lm/models` defining `ModelArgs`, and its aliases."""
    import mlx_lm

    models = Path(mlx_lm.__file__).parent / "models"
    types = [
        p.stem for p in models.glob("*.py")
        if any(isinstance(n, ast.ClassDef) and n.name == "ModelArgs" for n in ast.parse(p.read_text()).body)
    ]
    return sorted({*types, *MLX_LM_MODEL_REMAPPING}, key=str.lower)


def how(adapter) -> str:
    if isinstance(adapter, DenseAdapter):
        return "Hugging Face names (generic adapter)"
    if type(adapter) is LanguageModelOnlyAdapter:
        return "the language model alone (`--language-model-only`); mlx-vlm's conversions too, vision tower skipped"
    if type(adapter) is StackedExpertsAdapter:
        return f"experts stacked under `{adapter.block}.{adapter.stack}`, fed one by one"
    return f"its own adapter, `{type(adapter).__module__.replace('.', '/').removeprefix('vllm_mlx_loader/')}.py`"


def proof(model_type: str) -> str:
    parts = []
    if model_type in tiny_families.FAMILIES:
        parts.append("random weights vs source")
    if model_type in TRAINED:
        parts.append(TRAINED[model_type])
    elif model_type in tiny_families.VLLM_COMPUTES_OTHERWISE:
        parts.append("trained: in vLLM 0.32 as vLLM's own loader on the restored BF16 checkpoint (vLLM's model "
                     "differs from MLX's)")
    elif model_type in tiny_families.TRAINED:
        also = ", 0.18" if model_type in tiny_families.ALSO_ON_VLLM_0_18 else ""
        parts.append(f"trained: greedy parity in vLLM 0.32{also}")
    for variant in sorted(f for f in tiny_families.FAMILIES if f != model_type
                          and tiny_families.model_type_of(f) == model_type):
        otherwise = variant in tiny_families.VLLM_COMPUTES_OTHERWISE
        own = "as vLLM's own loader on the restored BF16 checkpoint" if otherwise else "greedy parity in vLLM 0.32"
        trained = f", trained: {own}" if variant in tiny_families.TRAINED else ""
        parts.append(f"`{variant}`: random weights vs source{trained}")
    return "; ".join(parts) or "none"


def table() -> str:
    rows = ["| model type | mlx-lm module | served as | how | proven by |", "| --- | --- | --- | --- | --- |"]
    served = list(SERVED)
    for model_type in mlx_lm_model_types():
        module = mlx_lm_module({"model_type": model_type})
        pairs = [(arch, adapter) for (t, arch), adapter in SERVED.items() if t == model_type]
        if pairs:
            for arch, adapter in pairs:
                rows.append(f"| `{model_type}` | {module} | `{arch}` | {how(adapter)} | {proof(model_type)} |")
        else:
            rows.append(f"| `{model_type}` | {module} | refused | {why_refused(model_type, None, served)} | |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    if "--write" in sys.argv[1:]:
        path = REPO / "README.md"
        path.write_text(readme_with_table(path.read_text()))
    else:
        print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
