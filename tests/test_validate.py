"""`python -m vllm_mlx_loader.validate` on the tiny fixtures: passes when right, fails (exit 1) when broken."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import llm_here, shutdown

from vllm_mlx_loader import validate, weights
from vllm_mlx_loader.format import read_checkpoint
from vllm_mlx_loader.reference import load_reference

# 0.18 runs validate's device capture; 0.23's model-runner step is checked by the compat test
pytestmark = [pytest.mark.engine, pytest.mark.reference_vllm_only]
FAST = ["--max-tokens", "8", "--enforce-eager", "--gpu-memory-utilization", "0.3"]


@pytest.fixture(scope="module")
def passing_report(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate")
    code = validate.main([str(checkpoints["q4g128"]), "--output", str(out), *FAST])
    return code, json.loads((out / "accuracy.json").read_text()), (out / "accuracy.md").read_text()


def test_tiny_fixture_passes_every_gate(passing_report) -> None:
    code, result, _ = passing_report
    assert code == 0 and result["passed"] and result["failed"] == []
    assert set(result["comparisons"]) == {"torch_fp32", "mlx_fp32"}
    for comparison in result["comparisons"].values():
        summary = comparison["teacher_forced"]
        assert summary["min_cosine"] >= 0.999 and summary["hard_flips"] == 0
        assert summary["positions"] > 1000  # every position of 9 prompts, the long one included


def test_json_schema(passing_report) -> None:
    _, result, _ = passing_report
    assert result["schema_version"] == 1
    assert {"model", "device", "versions", "settings", "gates", "comparisons", "prompts", "steps", "failed",
            "passed", "quantization", "architecture", "created", "tool", "schema_version"} == set(result)
    assert result["versions"]["vllm"] and result["versions"]["mlx"]
    assert result["gates"] == {"min_cosine": 0.999, "min_top1": 0.99, "max_hard_flips": 0, "max_mean_kl": 0.001,
                               "max_dlogprob": 0.1}
    assert len(result["prompts"]) == 9 and result["prompts"][-1]["prompt_tokens"] >= 1024
    for section in ("teacher_forced", "prompt_last_position", "generated_steps"):
        summary = result["comparisons"]["torch_fp32"][section]
        assert all(isinstance(summary[k], int | float) for k in summary)
    step = result["steps"][0]
    assert {"prompt", "step", "device_token_id", "device_token", "torch_fp32", "mlx_fp32"} == set(step)
    assert set(step["mlx_fp32"]) == {"token_id", "max_abs_diff", "match"}
    assert len(result["steps"]) == sum(len(p["device_token_ids"]) for p in result["prompts"])


def test_markdown_tables_render(passing_report) -> None:
    _, _, md = passing_report
    tables = re.findall(r"(?:^\|.*\|$\n)+", md, flags=re.MULTILINE)
    assert len(tables) == 6
    for table in tables:
        rows = [r for r in table.strip().split("\n")]
        assert re.fullmatch(r"\|(---\|)+", rows[1])
        # escaped pipes inside cells do not count as separators
        widths = {len(re.findall(r"(?<!\\)\|", r)) for r in rows}
        assert len(widths) == 1, table
    assert "**Result: PASS**" in md


def swap_nibbles_of(path: str):
    """A deliberately broken dequantization: one tensor's nibble pairs swapped before unpacking."""
    original = weights._dequantize

    def broken(module, lead, reader, *args, **kwargs):
        if module.path != path:
            return original(module, lead, reader, *args, **kwargs)
        real_read = reader.read

        def read(ref, key=None):
            t = real_read(ref, key)
            if ref is module.weight:
                t = ((t & 0x0F0F0F0F) << 4) | ((t >> 4) & 0x0F0F0F0F)
            return t

        reader.read = read
        try:
            return original(module, lead, reader, *args, **kwargs)
        finally:
            reader.read = real_read

    return broken


def test_broken_dequantization_is_caught_by_the_mlx_column(checkpoints, tmp_path, monkeypatch, capfd) -> None:
    # capfd, not capsys: vLLM 0.18's in-process engine needs a sys.stdout with a file descriptor
    # run vLLM's engine and worker in this process, so the broken dequantization reaches the device path
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(weights, "_dequantize", swap_nibbles_of("model.layers.1.mlp.down_proj"))
    code = validate.main([str(checkpoints["q4g128"]), "--output", str(tmp_path), "--no-long-prompt",
                          "--executor-backend", "uni", *FAST])
    assert code == 1
    result = json.loads((tmp_path / "accuracy.json").read_text())
    # the torch reference shares the (broken) dequantization, so only MLX sees it
    assert result["comparisons"]["torch_fp32"]["passed"]
    assert not result["comparisons"]["mlx_fp32"]["passed"]
    assert "mlx_fp32.min_cosine" in result["failed"]
    assert "FAILED gates: mlx_fp32." in capfd.readouterr().err


@pytest.mark.latest_only  # 0.18's capture is checked row by row inside every validate run here too
def test_captured_logits_are_the_ones_vllm_reports(checkpoints, tokenizer, tmp_path) -> None:
    """The worker-side capture writes, row for row, the logits vLLM itself reports when asked for every token's
    value (`max_logprobs=-1`): raw logits, or on 0.18 its log-softmax of them for the prompt's rows."""
    from vllm import SamplingParams

    from vllm_mlx_loader.vllm.device_logits import DeviceRun, check_alignment
    from vllm_mlx_loader.vllm.logits_capture import LogitsCapture, capture_paths, hidden_path

    prompt = tokenizer("The quick brown fox jumps over the lazy dog because")["input_ids"]
    llm = llm_here(checkpoints["q4g128"], load_format="mlx", dtype="bfloat16", max_logprobs=-1,
                   logprobs_mode="raw_logits", worker_extension_cls=f"{LogitsCapture.__module__}.LogitsCapture")
    try:
        files, hidden = capture_paths(tmp_path, 0), hidden_path(tmp_path, 0)
        llm.collective_rpc("mlx_capture_start", args=(str(files[0]), str(files[1]), 1024, str(hidden)))
        params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=-1, prompt_logprobs=-1)
        (out,) = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        written = llm.collective_rpc("mlx_capture_stop")
    finally:
        shutdown(llm)
    completion = out.outputs[0]
    width = read_checkpoint(checkpoints["q4g128"]).config["hidden_size"]
    assert written == [[len(prompt) - 1, len(completion.token_ids), width]]
    run = DeviceRun(prompt, list(completion.token_ids), files, 1024, (hidden, width))
    rows = run.read(0, run.rows).double()
    reported = torch.tensor([[step[t].logprob for t in range(1024)]
                             for step in [*out.prompt_logprobs[1:], *completion.logprobs]], dtype=torch.float64)
    prompt_rows = slice(0, len(prompt) - 1)
    if not torch.equal(rows[prompt_rows], reported[prompt_rows]):  # 0.18: log-probabilities there
        torch.testing.assert_close(rows[prompt_rows].log_softmax(-1), reported[prompt_rows], rtol=0, atol=1e-4)
    assert torch.equal(rows[len(prompt) - 1:], reported[len(prompt) - 1:])
    # the prompt rows' final hidden states are what the head made those logits of (validate's device factor)
    head = load_reference(read_checkpoint(checkpoints["q4g128"])).get_output_embeddings().weight.detach().double()
    states = run.read_hidden().double()
    assert states.shape == (len(prompt) - 1, width)
    torch.testing.assert_close(states @ head.T, rows[prompt_rows], rtol=0, atol=0.02 * float(rows.abs().max()))
    # and validate's own check of the capture against the chosen tokens' values refuses rows one position off
    chosen = reported.gather(1, torch.tensor(run.sequence[1:])[:, None])[:, 0].tolist()
    check_alignment(run, chosen[:len(prompt) - 1], chosen[len(prompt) - 1:])
    with pytest.raises(RuntimeError, match="do not line up with vLLM's tokens at position 0"):
        check_alignment(run, chosen[1:len(prompt)], chosen[len(prompt):] + chosen[:1])


def test_bad_checkpoint_exits_2_with_the_message(bf16_source, capsys) -> None:
    assert validate.main([str(bf16_source)]) == 2
    assert "is not an MLX-quantized checkpoint" in capsys.readouterr().err


def test_row_metrics_flags_hard_flips_not_near_ties() -> None:
    from vllm_mlx_loader.accuracy import row_metrics

    ref = torch.tensor([[5.0, 4.9, 0.0], [5.0, 3.0, 0.0]])
    dev = torch.tensor([[4.9, 5.0, 0.0], [3.0, 5.0, 0.0]])
    m = row_metrics(ref, dev, torch.tensor([0, 0]))
    assert m.match.tolist() == [False, False]
    assert m.hard_flip.tolist() == [False, True]  # gap 0.1 nat is a near tie, 2 nat is not


@pytest.mark.latest_only
def test_moe_fixture_runs_both_columns_and_reports_routing_near_ties(checkpoints, tmp_path, monkeypatch, capfd):
    """The default command on a correct Qwen3-MoE load: both columns run (transformers 5's fused experts are
    filled), positions where a router was within BF16's reach of another expert are reported and kept out of the
    gates (no hard flip is left), the positions after them out of the single-position gates (top-1 passes). A
    planted fault in an expert stack still flips tokens hard in both columns."""
    code = validate.main([str(checkpoints["qwen3_moe"]), "--output", str(tmp_path / "ok"), *FAST])
    result = json.loads((tmp_path / "ok" / "accuracy.json").read_text())
    assert set(result["comparisons"]) == {"torch_fp32", "mlx_fp32"}
    for comparison in result["comparisons"].values():
        assert comparison["teacher_forced"]["hard_flips"] == 0
        assert comparison["teacher_forced"]["routing_near_ties"] > 0 and comparison["routing_near_ties"]
        assert comparison["teacher_forced"]["after_routing_ties"] > 0
        assert {g["metric"]: g["passed"] for g in comparison["gates"]}["top1_agreement"]
    assert result["settings"]["router_input_bf16_deviation"]
    assert result["settings"]["router_deviation_device_factor"] > 0  # measured on the device's hidden states
    # on some hosts' fixtures a run still fails min_cosine, at a flat logit row (where `lm_head` shrinks the hidden
    # state, any error is magnified) or a router margin just outside the bound (README, "Not settled")
    assert code in (0, 1) and set(result["failed"]) <= {"torch_fp32.min_cosine", "mlx_fp32.min_cosine"}
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(weights, "_dequantize", swap_nibbles_of("model.layers.1.mlp.switch_mlp.down_proj"))
    code = validate.main([str(checkpoints["qwen3_moe"]), "--output", str(tmp_path / "bad"), "--no-long-prompt",
                          "--executor-backend", "uni", *FAST])
    bad = json.loads((tmp_path / "bad" / "accuracy.json").read_text())
    assert code == 1 and bad["comparisons"]["mlx_fp32"]["teacher_forced"]["hard_flips"] > 0
    assert "mlx_fp32.hard_flips" in bad["failed"]


@pytest.mark.latest_only  # the gate is validate's own code; 0.18's capture runs in the other tests here
def test_nan_device_logits_fail_the_gates_by_name(checkpoints, tmp_path, monkeypatch, capfd) -> None:
    """A device that computes NaN (here: one BF16 weight element of the device's copy; the float32 references are
    clean) fails `nonfinite_positions` at every position in both columns, instead of stopping with a
    misleading "is max_logprobs -1?"."""
    original = weights._dequantize

    def nan_on_the_device(module, lead, reader, dtype, *args, **kwargs):
        dense = original(module, lead, reader, dtype, *args, **kwargs)
        if module.path == "model.layers.1.mlp.down_proj" and dtype == torch.bfloat16:
            dense.view(-1)[0] = float("nan")
        return dense

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(weights, "_dequantize", nan_on_the_device)
    code = validate.main([str(checkpoints["q4g128"]), "--output", str(tmp_path), "--no-long-prompt",
                          "--executor-backend", "uni", *FAST])
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert code == 1
    for name, comparison in result["comparisons"].items():
        summary = comparison["teacher_forced"]
        assert summary["nonfinite_positions"] == summary["positions"] > 0
        assert f"{name}.nonfinite_positions" in result["failed"]
