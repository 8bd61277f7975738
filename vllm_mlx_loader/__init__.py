"""Serve MLX-quantized checkpoints (mlx-community, `*-MLX-4bit`) with vLLM on Linux GPUs, NPUs and CPUs.

vLLM finds this package through its `vllm.general_plugins` entry point and calls `register()`, which
adds the load formats `mlx-4bit` and `mlx` and the quantization method `mlx` (opt-in W4A16),
and lets transformers 4.x read tokenizers saved by
transformers 5. Importing the package imports neither vLLM nor torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "register"]

_REGISTERED = False


def register() -> None:
    """Register the MLX load formats with vLLM. Re-entrant and cheap; touches no device."""
    global _REGISTERED
    if _REGISTERED:
        return
    from .hf_compat import teach_tokenizers_backend
    from .vllm import engine_hook
    from .vllm.loader import register_loader
    from .vllm.quant_config import register as register_quantization

    register_loader()
    register_quantization()
    engine_hook.install()
    teach_tokenizers_backend()  # vLLM loads the tokenizer in this process too
    _REGISTERED = True
