"""The plugin seam: entry point, cheap re-entrant registration, option checks, the completeness check."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
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
    """vllm/compat.py holds the private vLLM APIs; a vLLM (or torch) release that moves one fails here."""
    import torch
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size  # noqa: F401
    from vllm.model_executor.model_loader.weight_utils import _BAR_FORMAT

    import vllm_mlx_loader
    from vllm_mlx_loader.vllm import compat
    from vllm_mlx_loader.vllm.loader import MLXModelLoader

    vllm_mlx_loader.register()
    assert compat.bar_format() == _BAR_FORMAT
    assert compat.registered_loader("mlx-4bit") is MLXModelLoader and compat.registered_loader("nope") is None
    processor = compat.logprobs_processor()
    assert all(callable(getattr(processor, m)) for m in compat.LOGPROBS_METHODS)
    # torch: buffer reuse (buffers.py) and LazyDense's metadata answers (lazy_dense.py)
    assert callable(torch._C._storage_Use_Count) and torch._C.DisableTorchFunctionSubclass
