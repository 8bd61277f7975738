"""The benchmark tools, as short smokes (figures are never asserted): they run and print their ratios."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import REPO
from safetensors import safe_open

from vllm_mlx_loader.convert import convert
from vllm_mlx_loader.format import read_checkpoint

sys.path.insert(0, str(REPO / "benchmarks"))

import bench_dequant
import bench_load
import bench_w4a16
import synthetic_checkpoint
from measure import TreeRSS


def layout(path):
    found = {}
    for shard in path.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as f:
            found.update({k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()})
    return found


def test_a_phase_shorter_than_the_sampling_interval_still_gets_its_peak() -> None:
    # validate's "report" phase can end within one 50 ms interval; CI once saw its peak as 0.
    with TreeRSS(os.getpid(), phase="setup", interval_s=10.0) as rss:
        rss.phase = "report"
    assert rss.peaks["setup"] > 0 and rss.peaks["report"] > 0


def test_synthetic_checkpoint_has_the_layout_mlx_lm_writes(checkpoints, tmp_path) -> None:
    synthetic = synthetic_checkpoint.write(tmp_path / "syn", "tiny", bits=4, group_size=128)
    assert layout(synthetic) == layout(checkpoints["q4g128"])
    config = json.loads((synthetic / "config.json").read_text())
    assert config["quantization"] == config["quantization_config"] == {"group_size": 128, "bits": 4, "mode": "affine"}
    modules = read_checkpoint(synthetic).quantized
    assert any(m.params.bits == 4 for m in modules) and len(modules) == 30


def test_8b_shape_matches_the_published_checkpoint_size() -> None:
    # Qwen/Qwen3-8B-MLX-4bit: 4,351,884,216 bytes, of which 4,351,780,864 tensor data (docs/format.md)
    config = synthetic_checkpoint.config_for("qwen3-8b", 4, 128)
    total = 0
    for _, (out_f, *rest), quantized in synthetic_checkpoint.dense_shapes(config):
        if quantized:
            in_f = rest[0]
            total += out_f * in_f // 2 + 2 * out_f * (in_f // 128) * 2
        else:
            total += out_f * 2
    assert total == 4_351_780_864


def test_moe_shape_names_and_quantizes_its_tensors_as_mlx_lm_does(checkpoints) -> None:
    """The Qwen3-30B-A3B slice (not written here: 1.6 GB) against the Qwen3-MoE fixture `mlx_lm.convert` wrote:
    the same tensor names in its first two layers (stacked experts under `switch_mlp`), the router at 8 bits."""
    config = synthetic_checkpoint.config_for("qwen3-30b-a3b-4l", 4, 128)
    names = {f"{n}.weight" if quantized else n for n, _, quantized in synthetic_checkpoint.dense_shapes(config)
             if not n.startswith(("model.layers.2.", "model.layers.3."))}
    stored = {k for k in layout(checkpoints["qwen3_moe"]) if not k.endswith((".scales", ".biases"))}
    assert names == stored
    fixture = json.loads((checkpoints["qwen3_moe"] / "config.json").read_text())["quantization"]
    assert config["quantization"]["model.layers.0.mlp.gate"]["bits"] == fixture["model.layers.0.mlp.gate"]["bits"] == 8
    assert config["architectures"] == ["Qwen3MoeForCausalLM"]


# a smoke runs each script end to end, not for its timings: the engines it starts keep their engine core in the
# process that starts them (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), ~20 s less per load
IN_PROCESS = ("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def test_dequant_benchmark_smoke(tmp_path, capsys) -> None:
    synthetic = synthetic_checkpoint.write(tmp_path / "syn", "tiny")
    bf16 = convert(synthetic, tmp_path / "bf16", progress=False)
    argv = [str(synthetic), "--trials", "1", "--json", str(tmp_path / "r.json"), "--bf16", str(bf16)]
    assert bench_dequant.main(argv) == 0
    assert "ratio" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["bf16_bytes"] > 0 and result["best_copy_gb_per_s"] > 0 and result["ratio"] > 0
    assert result["c_kernel"] and result["preallocated_ratio"] > 0
    assert result["bf16_pass"]["bytes"] == result["bf16_bytes"]


@pytest.mark.engine
@pytest.mark.latest_only  # a benchmark smoke starts vLLM twice or more: once per CI run is enough
def test_load_benchmark_smoke(checkpoints, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(*IN_PROCESS)
    assert bench_load.main([str(checkpoints["q4g64"]), "--trials", "1", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "two-step" in out
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["mlx_ready_s"] > 0 and summary["bf16_ready_s"] > 0


@pytest.mark.engine
@pytest.mark.latest_only  # a benchmark smoke starts vLLM twice or more: once per CI run is enough
def test_load_benchmark_tensor_parallel_smoke(checkpoints, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(*IN_PROCESS)
    out = tmp_path / "r.json"
    assert bench_load.main([str(checkpoints["q4g64"]), "--tp", "2", "--trials", "1", "--json", str(out)]) == 0
    assert "target <= 0.6" in capsys.readouterr().out
    result = json.loads(out.read_text())
    (tp1,), (tp2,) = result["runs"]["1"], result["runs"]["2"]
    assert [r["rank"] for r in tp2["ranks"]] == [0, 1]
    for rank in tp2["ranks"]:  # each rank reads and dequantizes about half of what one rank does alone
        assert rank["read_mb"] < 0.6 * tp1["ranks"][0]["read_mb"]
        assert rank["dequantized_mb"] <= 0.5 * tp1["ranks"][0]["dequantized_mb"] + 0.1


@pytest.mark.engine
@pytest.mark.latest_only  # a benchmark smoke starts vLLM twice or more: once per CI run is enough
def test_validate_benchmark_smoke(checkpoints, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(*IN_PROCESS)
    import bench_validate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\nCounting: one, two,\n")
    out = tmp_path / "r.json"
    argv = [str(checkpoints["q4g128"]), "--json", str(out), "--", "--prompts", str(prompts), "--max-tokens", "4",
            "--enforce-eager", "--gpu-memory-utilization", "0.3"]
    assert bench_validate.main(argv) == 0
    assert "peak RSS" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["exit"] == 0 and set(result["phases"]) == {"setup", "device", "torch_fp32", "mlx_fp32", "report"}
    assert all(p["peak_rss_gib"] > 0 for p in result["phases"].values())


def test_device_dequant_benchmark_smoke(tmp_path, capsys) -> None:
    import bench_device_dequant

    out = tmp_path / "r.json"
    assert bench_device_dequant.main(["--device", "cpu", "--shape", "tiny", "--json", str(out)]) == 0
    assert "extra MiB" in capsys.readouterr().out
    tensors = json.loads(out.read_text())["tensors"]
    assert len(tensors) == 5 and all(t["extra_mib"] > 0 and t["whole_tensor"]["extra_mib"] > 0 for t in tensors)


@pytest.mark.engine
@pytest.mark.latest_only  # a benchmark smoke starts vLLM twice or more: once per CI run is enough
def test_w4a16_benchmark_smoke(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert bench_w4a16.main([str(checkpoints["q4g64"]), "--tokens", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["w4a16"]["decisions"] and not report["bf16"]["decisions"]
    assert report["w4a16"]["non_kv_gib"] > 0 and report["bf16"]["kv_cache_tokens"] > 0
    assert set(report["ratios"]) == {"non_kv_memory", "non_kv_memory_less_runtime", "kv_cache_tokens",
                                     "decode_batch_1", "decode_batch_16"}
