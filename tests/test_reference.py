"""validate's two references on their own, no engine: the float32 torch reference takes every family's streamed
weights as transformers itself would load them (fused experts included), and both references compute the model's
logits as its own forward does, blockwise."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_families
import torch
from conftest import REPO

from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.mlx_reference import load_float32, logit_blocks
from vllm_mlx_loader.reference import load_reference, reference_logit_blocks, reference_plan

FAMILY_ROOT = REPO / ".cache" / "families"
SEQUENCE = list(range(3, 40))
# MoE fixtures (trained): transformers 5 fuses their experts (`mlp.experts.gate_up_proj`), Mixtral's also renamed
MOE_FIXTURES = ["qwen3_moe", "mixtral", "qwen3_next", "deepseek_v3", "gpt_oss"]
# families whose transformers 5 model takes the streamed weights through its conversion table: renames
# (`block_sparse_moe` -> `mlp`, PhiMoE's router), fused experts, Qwen3-VL-MoE's transposed stacks, Granite-MoE's renames
CONVERTED_FAMILIES = ["qwen2_moe", "olmoe", "phimoe", "minimax_m2", "glm4_moe", "granitemoe", "exaone_moe",
                      "qwen3_5_moe", "lfm2_moe", "qwen3_vl_moe"]
# families that change logits after the output layer: Cohere's `logit_scale`, Gemma 2's soft-capping, Granite's
# `logits_scaling` (1.0 in transformers' default config, so its fixture is the control)
POST_HEAD = ["cohere", "gemma2", "granite"]


def first_block(blocks) -> torch.Tensor:
    return torch.cat(list(blocks))


@pytest.mark.parametrize("variant", MOE_FIXTURES)
def test_torch_reference_of_an_moe_fixture_computes_mlx_float32s_logits(variant, checkpoints) -> None:
    """Before, validate refused these up front ("cannot place ...experts.0..."): the reference now writes each
    expert into transformers' fused parameters. A misplaced expert or projection would move logits by ~1."""
    ckpt = read_checkpoint(checkpoints[variant])
    assert isinstance(reference_plan(ckpt), dict)
    ours = first_block(reference_logit_blocks(load_reference(ckpt), SEQUENCE, 16))
    mlx = first_block(logit_blocks(load_float32(checkpoints[variant]), SEQUENCE, 16))
    assert (ours - mlx).abs().max() < 1e-3


@pytest.mark.parametrize("model_type", CONVERTED_FAMILIES)
def test_torch_reference_equals_transformers_from_pretrained_on_the_restored_checkpoint(model_type, tmp_path) -> None:
    """Exactly what transformers' own loading makes of the same weights (`vllm_mlx_loader.convert` to float32, then
    `from_pretrained`, which runs transformers' conversion table itself)."""
    import transformers

    from vllm_mlx_loader.convert import convert

    path = tiny_families.build_family(FAMILY_ROOT, model_type) / "mlx"
    ckpt = read_checkpoint(path)
    ours = first_block(reference_logit_blocks(load_reference(ckpt), SEQUENCE, 16))
    restored = convert(path, tmp_path / "f32", dtype="float32", progress=False)
    auto = transformers.AutoModelForImageTextToText if model_type == "qwen3_vl_moe" else \
        transformers.AutoModelForCausalLM
    theirs = auto.from_pretrained(restored, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor([SEQUENCE[:-1]])).logits[0]
    assert torch.equal(ours, expected)


def test_a_weight_transformers_cannot_place_skips_the_column_with_the_reason(checkpoints) -> None:
    from vllm_mlx_loader.reference_placement import plan

    ckpt = read_checkpoint(checkpoints["qwen3_moe"])
    model = torch.nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "qwen3_moe"})()
    reason = plan(((w.name, w.shape) for w in ckpt.weights), model, {"weight": (2, 2)}, "qwen3_moe")
    assert isinstance(reason, str) and "has no place in transformers' model" in reason
    fused = {"model.layers.0.mlp.experts.gate_up_proj": (3, 64, 64)}  # 4 experts stored, room for 3
    reason = plan([("model.layers.0.mlp.experts.3.gate_proj.weight", (32, 64))], model, fused, "qwen3_moe")
    assert "does not fit transformers' 'model.layers.0.mlp.experts.gate_up_proj' [3, 64, 64]" in reason
    reason = plan([("model.layers.0.mlp.experts.0.gate_proj.weight", (32, 64))], model,
                  {"model.layers.0.mlp.experts.gate_up_proj": (1, 64, 64)}, "qwen3_moe")
    assert "left partly unwritten (1 of 2 blocks)" in reason


@pytest.mark.parametrize("model_type", POST_HEAD)
def test_both_references_apply_what_the_model_does_after_its_output_layer(model_type) -> None:
    """Blockwise logits equal each framework's whole forward pass (before: the output layer alone, which drops
    Cohere's logit_scale, 0.0625 in this config, and Gemma 2's soft-capping)."""
    import mlx.core as mx

    path = tiny_families.build_family(FAMILY_ROOT, model_type) / "mlx"
    mlx_model = load_float32(path)
    whole = np.array(mlx_model(mx.array([SEQUENCE[:-1]]))[0].astype(mx.float32))
    assert np.array_equal(first_block(logit_blocks(mlx_model, SEQUENCE, 10)).numpy(), whole)
    model = load_reference(read_checkpoint(path))
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([SEQUENCE[:-1]])).logits[0]
    assert torch.allclose(first_block(reference_logit_blocks(model, SEQUENCE, 10)), expected, atol=1e-6, rtol=0)


def test_router_paths() -> None:
    """A router is a block's `gate` / `router` linear, or the linear a gating module of that name wraps (Granite
    MoE's `router.layer`); projections and other gates are not."""
    from vllm_mlx_loader.routing import is_router_path

    assert all(map(is_router_path, ["model.layers.0.mlp.gate", "model.layers.1.mlp.router",
                                    "model.layers.0.block_sparse_moe.router.layer"]))
    assert not any(map(is_router_path, ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.shared_expert_gate",
                                        "model.layers.0.mlp.gate.layer_norm", "model.layers.0.router.layers"]))


def test_routing_slack_is_negative_only_within_bf16_reach() -> None:
    from vllm_mlx_loader.routing import router_slack

    x = torch.ones(2, 64)
    w = torch.zeros(4, 64)
    w[0], w[1] = 0.02, 0.01  # expert 0 leads
    w[2] = 0.01 + torch.tensor([1e-6] + [0.0] * 63)  # expert 2 a hair above expert 1: the 2nd choice is a near-tie
    slack = router_slack(x, w, None, None, k=2)
    assert (slack < 0).all()
    assert (router_slack(x, w, None, None, k=1) > 0).all()  # the first choice leads by 0.64
    # a correction bias (DeepSeek-V3's selection on sigmoid scores) can break the tie
    assert (router_slack(x, w, None, torch.tensor([0.0, 0.0, 0.5, 0.0]), k=2) > 0).all()
    # the deviation a BF16 device's router input carries from earlier layers widens the bound
    w[0] = 0.0102  # the first choice now leads by 0.013: 2^-9 rounding cannot move it, a 3 % deviation can
    assert (router_slack(x, w, None, None, k=1) > 0).all() and (router_slack(x, w, None, None, 1, 0.03) < 0).all()
    # one deviation per row (a position's own): only the row that carries 3 % is within reach
    assert (router_slack(x, w, None, None, 1, torch.tensor([0.0, 0.03])) < 0).tolist() == [False, True]


@pytest.mark.parametrize("variant", ["qwen3_moe", "mixtral", "gpt_oss", "q4g128"])
def test_both_references_record_the_same_routing_slack(variant, checkpoints) -> None:
    """transformers' routers (forward hooks) and mlx-lm's (wrapped for the run) see the same float32 inputs, so
    they find the same slack per position; a dense model records none."""
    from vllm_mlx_loader import routing

    ckpt = read_checkpoint(checkpoints[variant])
    sequence = [3 + (i * 37) % 500 for i in range(200)]
    model, mlx_model = load_reference(ckpt), load_float32(checkpoints[variant])
    with routing.recording_torch(model, ckpt.config) as torch_record:
        deviation = routing.emulate(model, torch_record, sequence)
        assert torch_record is None or torch_record.take() is None  # the emulated pass records no slack
        first_block(reference_logit_blocks(model, sequence, 64))  # ... and this one measures against it
    with routing.recording_mlx(mlx_model, ckpt.config, deviation) as mlx_record:
        first_block(logit_blocks(mlx_model, sequence, 64))
    if variant == "q4g128":
        assert torch_record is None and mlx_record is None and deviation is None
        return
    # one figure per MoE layer and position, above BF16's rounding of the router input alone in the median (the
    # layers before it add theirs)
    assert deviation and set(deviation) <= set(range(ckpt.config["num_hidden_layers"]))
    assert all(d.shape == (len(sequence) - 1,) for d in deviation.values())
    assert all(2.0**-10 < float(d.median()) < 0.5 for d in deviation.values()), deviation
    # the figure two separate passes give (a float32 one, then the emulation), for the first router
    name, router = next((n, m) for n, m in model.named_modules() if routing.is_router_path(n))
    seen: list[torch.Tensor] = []
    hook = router.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(len(sequence) - 1, -1)))
    decoder, ids = model.get_decoder(), torch.tensor([sequence[:-1]])
    with torch.inference_mode():
        decoder(input_ids=ids)
        with routing.bf16_emulation(decoder):
            decoder(input_ids=ids)
    hook.remove()
    exact, emulated = seen[0].double(), seen[1].double()
    want = (emulated - exact).norm(dim=-1) / exact.norm(dim=-1)
    layer = int(name.split("layers.")[1].split(".")[0])
    assert torch.allclose(deviation[layer], want, rtol=1e-6, atol=0)
    with routing.recording_torch(model, ckpt.config) as again:  # a device factor scales it
        doubled = routing.emulate(model, again, sequence, factor=2.0)
        first_block(reference_logit_blocks(model, sequence, 64))
    assert torch.allclose(doubled[layer], 2 * want, rtol=1e-6, atol=0)
    ours, theirs = torch_record.take(), mlx_record.take()
    assert ours.shape == theirs.shape == (len(sequence) - 1,)
    assert (ours - theirs).abs().max() < 1e-3  # the same bound per layer on both sides: the layers are matched
    assert mlx_record.take() is None  # taken: the next sequence starts afresh


def test_device_factor_is_the_devices_deviation_in_units_of_the_emulations(checkpoints) -> None:
    """`routing.device_factor` on the Qwen3-MoE fixture: a device whose final hidden states are float32's scores 0,
    the BF16 emulation's 1, twice the emulation's deviation 2; a device that is not the reference's width, or a dense
    model, gets none."""
    from vllm_mlx_loader import routing

    ckpt = read_checkpoint(checkpoints["qwen3_moe"])
    model = load_reference(ckpt)
    sequence = [3 + (i * 37) % 500 for i in range(80)]
    decoder, ids = model.get_decoder(), torch.tensor([sequence[:routing.FACTOR_ROWS]])
    with torch.inference_mode():
        exact = decoder(input_ids=ids).last_hidden_state[0]
        with routing.bf16_emulation(decoder):
            emulated = decoder(input_ids=ids).last_hidden_state[0]
    assert 0 < float((emulated - exact).norm() / exact.norm()) < 0.05  # BF16's size, not a broken model's
    for device, want in ((exact, 0.0), (emulated, 1.0), (exact + 2 * (emulated - exact), 2.0)):
        assert routing.device_factor(model, ckpt.config, sequence, device) == pytest.approx(want, abs=1e-6)
    assert routing.device_factor(model, ckpt.config, sequence, exact[:, :-1]) is None
    assert routing.device_factor(model, ckpt.config, sequence, None) is None
    assert routing.device_factor(model, ckpt.config, sequence[:1], exact) is None  # a one-token prompt: no row
    dense = read_checkpoint(checkpoints["q4g128"])
    assert routing.device_factor(load_reference(dense), dense.config, sequence, exact) is None


def test_routers_a_gating_module_wraps_are_recorded_by_both_references() -> None:
    """Granite 4.0 H's router is the linear layer its gating module wraps (`block_sparse_moe.router.layer`): both
    references record its slack, one figure per position (before, mlx-lm's side found no router there, and every
    position of such a model counted as routed without doubt in the MLX column)."""
    from vllm_mlx_loader import routing

    path = tiny_families.build_family(FAMILY_ROOT, "granitemoehybrid") / "mlx"
    ckpt = read_checkpoint(path)
    sequence = [3 + (i * 37) % 500 for i in range(40)]
    model, mlx_model = load_reference(ckpt), load_float32(path)
    with routing.recording_torch(model, ckpt.config) as torch_record:
        first_block(reference_logit_blocks(model, sequence, 64))
    with routing.recording_mlx(mlx_model, ckpt.config) as mlx_record:
        first_block(logit_blocks(mlx_model, sequence, 64))
    assert torch_record is not None and mlx_record is not None
    assert torch_record.take().shape == mlx_record.take().shape == (len(sequence) - 1,)


def test_routing_near_ties_are_counted_and_kept_out_of_the_gated_summaries() -> None:
    from vllm_mlx_loader import accuracy

    ref = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    dev = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [4.0, 0.01, 0.0]])  # row 1: another expert's output
    tokens = torch.tensor([0, 0, 0])
    plain = accuracy.summarize(accuracy.row_metrics(ref, dev, tokens))
    assert plain["hard_flips"] == 1 and plain["routing_near_ties"] == 0
    tied = accuracy.summarize(accuracy.row_metrics(ref, dev, tokens, torch.tensor([1.0, -0.01, 1.0])))
    assert tied["routing_near_ties"] == 1 and tied["positions"] == 3
    assert tied["hard_flips"] == 0 and tied["top1_agreement"] == 1.0 and tied["min_cosine"] > 0.99


def test_positions_after_a_routing_near_tie_leave_only_the_single_position_gates() -> None:
    """After a sequence's first routing near-tie, min cosine and top-1 are not taken (attention carries either
    expert choice there); hard flips, KL and |delta logprob| still are."""
    from vllm_mlx_loader import accuracy

    ref = torch.tensor([[4.0, 0.0, 0.0]] * 4)
    dev = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [3.0, 1.0, 0.0], [0.0, 4.0, 0.0]])
    tokens = torch.tensor([0, 0, 0, 0])
    m = accuracy.with_routing_reach(accuracy.row_metrics(ref, dev, tokens, torch.tensor([1.0, -0.01, 1.0, 1.0])))
    assert m.after_routing_tie.tolist() == [False, False, True, True]
    summary = accuracy.summarize(m)
    assert summary["routing_near_ties"] == 1 and summary["after_routing_ties"] == 2
    assert summary["min_cosine"] == 1.0 and summary["top1_agreement"] == 1.0 and summary["top1_mismatches"] == 0
    assert summary["hard_flips"] == 1 and summary["max_kl"] > 1  # row 3's hard flip still counts
    m = accuracy.with_routing_reach(accuracy.row_metrics(ref, dev, tokens, torch.tensor([-0.01, 1.0, 1.0, 1.0])))
    summary = accuracy.summarize(m)  # a tie at the first position: no position left for the single-position gates
    assert summary["min_cosine"] is None and summary["top1_agreement"] is None
    gates = {g["metric"]: (g["value"], g["passed"]) for g in accuracy.check_gates(summary, summary, accuracy.Gates())}
    assert gates["min_cosine"] == (None, True) and gates["hard_flips"] == (2, False)


def test_nonfinite_device_rows_are_counted_apart_and_fail_their_gate() -> None:
    from vllm_mlx_loader import accuracy

    ref = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    dev = torch.tensor([[4.0, 0.0, 0.0], [float("nan"), 0.0, 0.0], [4.0, float("inf"), 0.0]])
    summary = accuracy.summarize(accuracy.row_metrics(ref, dev, torch.tensor([0, 0, 0])))
    assert summary["nonfinite_positions"] == 2 and summary["min_cosine"] == 1.0
    gates = {g["metric"]: g["passed"] for g in accuracy.check_gates(summary, summary, accuracy.Gates())}
    assert gates["nonfinite_positions"] is False and gates["min_cosine"] is True


@pytest.mark.parametrize("variant", ["q4g128", "mixed_3_6", "mixed_modes", "nvfp4", "tied", "gemma3", "qwen3_moe",
                                     "gpt_oss", "qwen3_next", "deepseek_v3"])
def test_mlx_column_on_torch_blas_computes_mlx_lms_own_logits(variant, checkpoints) -> None:
    """The MLX column's products on torch (`mlx_products`): every mode, tied embeddings, sliding-window masks,
    expert stacks, attention sinks and biases (gpt-oss), gated DeltaNet (Qwen3-Next), MLA (DeepSeek-V3) give
    mlx-lm's own quantized-matmul logits, whether the dequantized layers are kept or made one at a time."""
    from vllm_mlx_loader.mlx_products import on_torch_blas

    model = load_float32(checkpoints[variant])
    sequence = [3 + (i * 37) % 1000 for i in range(300)]
    own = first_block(logit_blocks(model, sequence, 64))
    with on_torch_blas():
        ours = first_block(logit_blocks(model, sequence, 64))
    with on_torch_blas(keep_dense=True):
        kept = first_block(logit_blocks(model, sequence, 64))
    assert (ours - own).abs().max() < 1e-4 * own.abs().max()
    assert torch.equal(ours, kept)
