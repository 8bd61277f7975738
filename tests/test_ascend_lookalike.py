"""The unmodified MLX config.json on Ascend, proven on CPU.

vllm-ascend's ModelSlim config claims *any* quantization_config without `quant_method` when an NPU is
present, and model init then fails (docs/compatibility.md). A look-alike registered here claims
configs exactly the same way; the plugin must still load the checkpoint, by itself, with no extra flags.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import llm_here, mlx_answer, shutdown

pytestmark = pytest.mark.engine
NAME = "ascend-lookalike"


@pytest.fixture
def ascend_lookalike():
    from vllm.model_executor.layers import quantization as q
    from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

    @q.register_quantization_config(NAME)
    class AscendLookalike(QuantizationConfig):
        @classmethod
        def override_quantization_method(cls, hf_quant_cfg: dict[str, Any], user_quant, hf_config=None):
            return NAME if not hf_quant_cfg.get("quant_method") else None

        def get_name(self):
            return NAME

        def get_supported_act_dtypes(self) -> list[torch.dtype]:
            return [torch.bfloat16, torch.float16]

        @classmethod
        def get_min_capability(cls) -> int:
            return 0

        @staticmethod
        def get_config_filenames() -> list[str]:
            return []

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> AscendLookalike:
            return cls()

        def get_quant_method(self, layer, prefix: str):
            raise KeyError(f"{prefix}.weight")  # ModelSlim's quant_description lookup

    yield NAME
    q.QUANTIZATION_METHODS.remove(NAME)
    q._CUSTOMIZED_METHOD_TO_QUANT_CONFIG.pop(NAME)


def test_lookalike_claims_the_raw_mlx_config(ascend_lookalike, checkpoints) -> None:
    from vllm.config import ModelConfig

    # built directly, without EngineArgs (and so without the plugin): this is what breaks on Ascend
    assert ModelConfig(model=str(checkpoints["q4g64"])).quantization == ascend_lookalike


def test_plugin_loads_the_mlx_checkpoint_despite_the_lookalike(ascend_lookalike, checkpoints, tokenizer) -> None:
    from vllm import SamplingParams

    prompt = tokenizer("The capital of Italy is")["input_ids"]
    llm = llm_here(checkpoints["q4g64"], load_format="mlx-4bit")
    try:
        assert llm.llm_engine.model_config.quantization is None
        out = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)
    finally:
        shutdown(llm)
    assert out[0].outputs[0].text == mlx_answer(checkpoints["q4g64"], tokenizer, prompt, 3)[0]


def test_quantization_mlx_is_not_claimed_by_the_lookalike(ascend_lookalike, checkpoints) -> None:
    """`--quantization mlx` hands vLLM a quantization config with quant_method "mlx", which ModelSlim's override
    (any config without one) leaves alone; the config carries one entry per quantized module, as the shards hold
    them. No engine starts: the model config is where the claim would happen."""
    from vllm.engine.arg_utils import EngineArgs

    import vllm_mlx_loader

    vllm_mlx_loader.register()
    args = EngineArgs(model=str(checkpoints["q4g64"]), load_format="mlx-4bit", quantization="mlx")
    config = args.create_model_config()
    assert config.quantization == "mlx"
    quant = config.hf_config.quantization_config
    assert quant["quant_method"] == "mlx" and not quant["tied"]
    assert quant["modules"]["model.layers.0.self_attn.q_proj"] == {"bits": 4, "group_size": 64, "mode": "affine"}
    assert len(quant["modules"]) == 30  # 7 linears x 4 layers, embed_tokens, lm_head
