"""transformers 4.x and 5.x read an MLX checkpoint the same way (runs on both in CI)."""

from __future__ import annotations

import importlib
import pickle

import pytest
import transformers

from vllm_mlx_loader.hf_compat import WithoutQuantizationConfig, drop_quantization_config, load_tokenizer

pytestmark = pytest.mark.vllm

TRANSFORMERS_4 = transformers.__version__.startswith("4.")


def test_the_fixtures_tokenizer_was_saved_by_transformers_5(checkpoints) -> None:
    # what every checkpoint made by today's mlx-lm carries; without it the next test proves nothing
    assert '"tokenizer_class": "TokenizersBackend"' in (checkpoints["q4g128"] / "tokenizer_config.json").read_text()


def test_a_tokenizer_saved_by_transformers_5_loads_and_encodes_like_its_tokenizer_json(checkpoints) -> None:
    from tokenizers import Tokenizer

    path = checkpoints["q4g128"]
    tok = load_tokenizer(path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    text = "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n中国的首都是"
    assert tok(text)["input_ids"] == raw.encode(text).ids
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert type(pickle.loads(pickle.dumps(tok))) is type(tok)  # vLLM may ship it to another process


def test_additional_special_tokens_saved_by_transformers_5_stay_special(checkpoints) -> None:
    """transformers 5 saves them as a list under `extra_special_tokens` (gpt-oss's harmony tokens here), which
    transformers 4.57 alone cannot read ('list' object has no attribute 'keys'): vLLM 0.18 did not start."""
    from tiny_qwen3 import HARMONY_TOKENS

    path = checkpoints["gpt_oss"]
    assert '"extra_special_tokens": [' in (path / "tokenizer_config.json").read_text()
    tok = load_tokenizer(path)
    assert set(HARMONY_TOKENS) <= set(tok.all_special_tokens)
    ids = tok("<|start|>assistant<|channel|>final<|message|>Paris<|end|>")["input_ids"]
    assert [tok.convert_ids_to_tokens(i) for i in ids if i in tok.all_special_ids] == [
        "<|start|>", "<|channel|>", "<|message|>", "<|end|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "assistantfinalParis"


@pytest.mark.skipif(not TRANSFORMERS_4, reason="transformers 5 knows TokenizersBackend itself")
def test_transformers_4_alone_cannot_read_it(checkpoints, monkeypatch) -> None:
    # the module transformers looks the name up in (vLLM's imports can put a new one in sys.modules)
    current = importlib.import_module("transformers")
    monkeypatch.delattr(current, "TokenizersBackend", raising=False)
    with pytest.raises(ValueError, match="TokenizersBackend does not exist"):
        current.AutoTokenizer.from_pretrained(checkpoints["q4g128"])


def test_drop_quantization_config_removes_it_from_the_config_and_text_config() -> None:
    text = transformers.PretrainedConfig(quantization_config={"bits": 4})
    config = transformers.PretrainedConfig(quantization_config=None)
    config.text_config = text
    assert drop_quantization_config(config) is config
    assert "quantization_config" not in vars(config) and "quantization_config" not in vars(text)
    drop_quantization_config(config)  # idempotent


def test_the_callable_runs_the_users_function_first_and_pickles() -> None:
    wrapped = pickle.loads(pickle.dumps(WithoutQuantizationConfig(_rename)))
    config = wrapped(transformers.PretrainedConfig(model_type="x", quantization_config={"group_size": 64}))
    assert config.model_type_seen == "x" and "quantization_config" not in vars(config)
    assert "quantization_config" not in config.to_dict()


def _rename(config):
    config.model_type_seen = config.model_type
    return config
