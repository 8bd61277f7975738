"""Every private vLLM API the plugin uses, in one place, each with a fallback or a clear failure.

Each one the plugin replaces or calls is checked here against the signature (parameter names, not only the
name) that vLLM 0.18, 0.23 and 0.32 share, and `tests/test_plugin.py` runs those checks against the
installed vLLM, so a release that moves or reshapes one fails there first, not in a user's server.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

# vLLM's progress-bar format for weight loading (private in `weight_utils`); ours looks the same without it
DEFAULT_BAR_FORMAT = "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]\n"
_HOOK_SENTINEL = "_vllm_mlx_loader_hook"


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


def parallel_rank_description() -> str:
    """The log's " (tensor-parallel rank r of n, pipeline stage s of m)" for this worker; "" without parallelism."""
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    parts, tp_size = [], get_tensor_model_parallel_world_size()
    if tp_size > 1:
        parts.append(f"tensor-parallel rank {get_tensor_model_parallel_rank()} of {tp_size}")
    pp = get_pp_group()
    if pp.world_size > 1:
        parts.append(f"pipeline stage {pp.rank_in_group} of {pp.world_size}")
    return f" ({', '.join(parts)})" if parts else ""


# --- what the plugin replaces: each checked against the signature it was written for ---------------------------

# (owner, method): the parameters the replacement takes, as vLLM 0.18-0.32 declare them
SIGNATURES = {
    ("EngineArgs", "create_model_config"): ("self",),
    ("LogprobsProcessor", "_update_prompt_logprobs"): ("self", "prompt_logprobs_tensors"),
    ("LogprobsProcessor", "_update_sample_logprobs"): ("self", "logprobs_lists"),
}
# the fields of the tuples those two methods receive, read by name
LOGPROBS_FIELDS = ("logprob_token_ids", "logprobs")


def _owners() -> dict[str, type]:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.logprobs import LogprobsProcessor

    return {"EngineArgs": EngineArgs, "LogprobsProcessor": LogprobsProcessor}


def signature_problems() -> list[str]:
    """What differs between the installed vLLM and what the plugin replaces (empty when all fit)."""
    import vllm

    owners, problems = _owners(), []
    for (owner, name), want in SIGNATURES.items():
        method = getattr(owners[owner], name, None)
        if method is None:
            problems.append(f"{owner}.{name} is gone")
            continue
        method = inspect.unwrap(method)
        got = tuple(inspect.signature(method).parameters)
        if got != want:
            problems.append(f"{owner}.{name} takes {got}, not {want}")
    from vllm.v1.outputs import LogprobsLists, LogprobsTensors

    for cls in (LogprobsTensors, LogprobsLists):
        missing = [f for f in LOGPROBS_FIELDS if f not in getattr(cls, "_fields", ())]
        if missing:
            problems.append(f"{cls.__name__} has no {', '.join(missing)}")
    return [f"vLLM {vllm.__version__}: {p}" for p in problems]


def _require(*keys: tuple[str, str]) -> None:
    """Raise unless the methods `keys` (and, for `LogprobsProcessor`, the tuples it receives) are as expected."""
    names = [f"{owner}.{name} " for owner, name in keys]
    if any(owner == "LogprobsProcessor" for owner, _ in keys):
        names += ["LogprobsTensors ", "LogprobsLists "]
    problems = [p for p in signature_problems() if any(n in p for n in names)]
    if problems:
        raise RuntimeError("; ".join(problems) + ": vllm-mlx-loader needs updating for this vLLM version.")


def wrap_create_model_config(before: Callable[[Any], None], after: Callable[[Any, Any], None]) -> None:
    """Run `before(engine_args)` ahead of `EngineArgs.create_model_config` and `after(engine_args, model_config)`
    once it has built the config (idempotent: the wrapper is installed once)."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_model_config
    if getattr(original, _HOOK_SENTINEL, False):
        return
    _require(("EngineArgs", "create_model_config"))

    @functools.wraps(original)
    def create_model_config(self: Any) -> Any:
        before(self)
        model_config = original(self)
        after(self, model_config)
        return model_config

    setattr(create_model_config, _HOOK_SENTINEL, True)
    EngineArgs.create_model_config = create_model_config  # type: ignore[method-assign]


def is_create_model_config_wrapped() -> bool:
    from vllm.engine.arg_utils import EngineArgs

    return bool(getattr(EngineArgs.create_model_config, _HOOK_SENTINEL, False))


@contextlib.contextmanager
def logprob_tensors_to(sink: Callable[[Any, Any, bool], None]) -> Iterator[None]:
    """While inside, vLLM's output-side `LogprobsProcessor` hands each batch of logprobs to `sink(token_ids,
    values, prompt)` as `[positions, k]` tensors instead of turning them into Python objects: the prompt's
    (`_update_prompt_logprobs`, tensors) and each generated step's (`_update_sample_logprobs`, lists of numpy rows,
    one per step, sampled token first)."""
    import numpy as np
    import torch
    from vllm.v1.engine.logprobs import LogprobsProcessor

    _require(("LogprobsProcessor", "_update_prompt_logprobs"), ("LogprobsProcessor", "_update_sample_logprobs"))

    def prompt_logprobs(self: Any, prompt_logprobs_tensors: Any) -> None:
        sink(prompt_logprobs_tensors.logprob_token_ids, prompt_logprobs_tensors.logprobs, True)

    def sample_logprobs(self: Any, logprobs_lists: Any) -> None:
        for ids, values in zip(logprobs_lists.logprob_token_ids, logprobs_lists.logprobs, strict=True):
            sink(torch.as_tensor(np.asarray(ids))[None], torch.as_tensor(np.asarray(values))[None], False)

    saved = LogprobsProcessor._update_prompt_logprobs, LogprobsProcessor._update_sample_logprobs
    LogprobsProcessor._update_prompt_logprobs = prompt_logprobs  # type: ignore[method-assign]
    LogprobsProcessor._update_sample_logprobs = sample_logprobs  # type: ignore[method-assign]
    try:
        yield
    finally:
        LogprobsProcessor._update_prompt_logprobs, LogprobsProcessor._update_sample_logprobs = saved


def shutdown_llm(llm: Any) -> None:
    """Stop an `LLM`'s engine now (its memory is needed next), not whenever the garbage collector runs; its
    engine core (private) has the only shutdown that stops the worker processes at once."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    release_engine_state()


def release_engine_state() -> None:
    """Drop what an engine core run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) leaves behind: its parallel
    groups, which the next engine would build its layers against (vLLM 0.18: no expert-parallel group for an MoE
    model after a dense one), and vLLM 0.18's `supports_kw` cache, which keeps its model (bound methods are the
    keys), KV cache and all. A no-op when the engine ran in its own process."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    from vllm.utils import func_utils

    for cached in vars(func_utils).values():
        if isinstance(cached, functools._lru_cache_wrapper):
            cached.cache_clear()
    cleanup_dist_env_and_memory()


# --- what the report says about the platform ------------------------------------------------------------------


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def platform_device() -> tuple[str, str | None]:
    """(device type, device name): the name is None on the CPU (vLLM reports none there)."""
    from vllm.platforms import current_platform

    kind = str(current_platform.device_type)
    return kind, None if kind == "cpu" else str(current_platform.get_device_name())
