"""Make an MLX checkpoint read the same under transformers 4.x (vLLM 0.18-0.23) and 5.x (vLLM 0.32+).

Two differences matter to this plugin:

- **No quantization config.** The plugin hands vLLM dense weights, so vLLM must see no
  `quantization_config` (vllm-ascend would otherwise claim the MLX one on an NPU, docs/compatibility.md).
  Setting it to None is what vLLM's `hf_overrides` can express, but transformers 4.x's
  `PretrainedConfig.to_dict()` / `to_diff_dict()` dereference a None `quantization_config`, and vLLM calls
  them at every start. So the attribute is *removed*; transformers 5 tolerates both.
- **The tokenizer class name.** transformers 5 saves every fast tokenizer as `"tokenizer_class":
  "TokenizersBackend"` (its new name for `PreTrainedTokenizerFast`), so checkpoints written by today's
  mlx-lm carry it; transformers 4.x does not know the name and cannot load the tokenizer.
  `teach_tokenizers_backend()` gives 4.x the name, as the class it is, only where it is missing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

QUANTIZATION_CONFIG = "quantization_config"


def drop_quantization_config(config: Any) -> Any:
    """Remove `quantization_config` from a transformers config and from its text config; return `config`."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is not None and QUANTIZATION_CONFIG in vars(cfg):
            delattr(cfg, QUANTIZATION_CONFIG)
    return config


class WithoutQuantizationConfig:
    """An `hf_overrides` callable: the user's own function first (if any), then `drop_quantization_config`.

    A class, not a closure, so that vLLM can pickle it into its engine and worker processes.
    """

    def __init__(self, user: Callable[[Any], Any] | None = None) -> None:
        self.user = user

    def __call__(self, config: Any) -> Any:
        return drop_quantization_config(config if self.user is None else self.user(config))

    def __repr__(self) -> str:
        return f"WithoutQuantizationConfig({self.user!r})"


class WithQuantizationConfig:
    """An `hf_overrides` callable: the user's own function first (if any), then `quantization_config` set to `value`
    (`--quantization mlx`); picklable like `WithoutQuantizationConfig`."""

    def __init__(self, value: dict[str, Any], user: Callable[[Any], Any] | None = None) -> None:
        self.value, self.user = value, user

    def __call__(self, config: Any) -> Any:
        config = config if self.user is None else self.user(config)
        setattr(config, QUANTIZATION_CONFIG, self.value)
        return config

    def __repr__(self) -> str:
        return f"WithQuantizationConfig({len(self.value.get('modules', {}))} modules, {self.user!r})"


def teach_tokenizers_backend() -> bool:
    """Let transformers 4.x load tokenizers saved by transformers 5 (`"tokenizer_class": "TokenizersBackend"`).

    transformers 4.x looks an unknown tokenizer class up as an attribute of the `transformers` module, so
    the name is added there, as a subclass of `PreTrainedTokenizerFast` (what transformers 5 renamed) that
    reads transformers 5's list of `extra_special_tokens` as the additional special tokens it is. Does nothing
    where transformers already knows the name. Returns True if it added it.
    """
    import transformers

    if hasattr(transformers, "TokenizersBackend"):
        return False
    transformers.TokenizersBackend = _tokenizers_backend_class()
    return True


def load_tokenizer(path: str | Path) -> Any:
    """`AutoTokenizer.from_pretrained(path)` that also reads tokenizers saved by transformers 5."""
    from transformers import AutoTokenizer

    teach_tokenizers_backend()
    return AutoTokenizer.from_pretrained(path)


@functools.cache
def _tokenizers_backend_class() -> type:
    from transformers import PreTrainedTokenizerFast

    class TokenizersBackend(PreTrainedTokenizerFast):  # the name, so that transformers does not warn of a mismatch
        """transformers 5's name for a fast tokenizer backed by `tokenizers`."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # transformers 5 saves the additional special tokens as a list under `extra_special_tokens`, where
            # 4.x expects a dict of named tokens (`'list' object has no attribute 'keys'`)
            extra = kwargs.get("extra_special_tokens")
            if isinstance(extra, list | tuple):
                del kwargs["extra_special_tokens"]
                kwargs["additional_special_tokens"] = [*(kwargs.get("additional_special_tokens") or []), *extra]
            super().__init__(*args, **kwargs)

    TokenizersBackend.__module__, TokenizersBackend.__qualname__ = __name__, "TokenizersBackend"
    return TokenizersBackend


def __getattr__(name: str) -> Any:
    # pickle finds the class as `vllm_mlx_loader.hf_compat.TokenizersBackend`
    if name == "TokenizersBackend":
        return _tokenizers_backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
