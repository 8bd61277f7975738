"""Every private vLLM API the plugin uses, in one place, each with a fallback or a clear failure.

`tests/test_plugin.py` checks each against the installed vLLM, so a release that moves one fails there first.
"""

from __future__ import annotations

from typing import Any

# vLLM's progress-bar format for weight loading (private in `weight_utils`); ours looks the same without it
DEFAULT_BAR_FORMAT = "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]\n"


def bar_format() -> str:
    try:
        from vllm.model_executor.model_loader.weight_utils import _BAR_FORMAT
    except ImportError:
        return DEFAULT_BAR_FORMAT
    return _BAR_FORMAT


def registered_loader(load_format: str) -> type | None:
    """The loader class vLLM has registered for `load_format` (private registry), or None."""
    from vllm.model_executor.model_loader import _LOAD_FORMAT_TO_MODEL_LOADER

    return _LOAD_FORMAT_TO_MODEL_LOADER.get(load_format)


def tensor_parallel() -> tuple[int, int]:
    """(rank, world size) of this worker's tensor-parallel group."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    return get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()


LOGPROBS_METHODS = ("_update_prompt_logprobs", "_update_sample_logprobs")


def logprobs_processor() -> Any:
    """vLLM's output-side `LogprobsProcessor` (private), whose two update methods validate replaces while it
    runs; the same in vLLM 0.18-0.32. Raises naming what moved otherwise."""
    from vllm.v1.engine.logprobs import LogprobsProcessor

    missing = [m for m in LOGPROBS_METHODS if not hasattr(LogprobsProcessor, m)]
    if missing:
        import vllm

        raise RuntimeError(
            f"vLLM {vllm.__version__}'s LogprobsProcessor has no {', '.join(missing)}: validate's logits capture "
            "needs updating for this vLLM version."
        )
    return LogprobsProcessor
