"""The validation report: one JSON document (stable schema) and its Markdown rendering."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__, accuracy
from .format import MLXCheckpoint

SCHEMA_VERSION = 1
SUMMARY_KEYS = ("positions", "nonfinite_positions", "routing_near_ties", "after_routing_ties", "max_abs_diff",
                "mean_abs_diff", "rmse", "min_cosine", "mean_cosine", "top1_agreement", "hard_flips", "mean_kl",
                "max_kl", "max_dlogprob")
WORST_TIES = 5  # routing near-ties listed per reference, those where the device differs most


def environment(vllm_version: str, device_type: str, device_name: str | None) -> dict[str, Any]:
    """The report's `device` and `versions`, from what the vLLM side (`vllm/compat.py`) says of the platform."""
    return {"device": device_info(device_type, device_name), "versions": versions(vllm_version)}


def versions(vllm_version: str) -> dict[str, str | None]:
    import transformers

    found: dict[str, str | None] = {
        "vllm_mlx_loader": __version__, "vllm": vllm_version, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
    }
    for name in ("mlx", "mlx_lm", "torch_npu", "vllm_ascend"):
        try:
            module = __import__(name if name != "mlx" else "mlx.core", fromlist=["__version__"])
            found[name] = getattr(module, "__version__", "installed")
        except ImportError:
            found[name] = None
    return found


def device_info(kind: str, name: str | None) -> dict[str, str]:
    name = _cpu_model_name() if name is None else name
    return {"platform": kind, "name": name, "machine": platform.machine(), "cpus": str(os.cpu_count())}


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(
    ckpt: MLXCheckpoint, args: argparse.Namespace, gates: accuracy.Gates, tokenizer: Any, texts: list[str],
    runs: list, per_reference: dict[str, list[accuracy.RowMetrics]], chat: bool, env: dict[str, Any],
    routing_deviation: dict[int, float] | None = None, device_factor: float | None = None,
) -> dict[str, Any]:
    """`per_reference[name][i]`: the per-position metrics of prompt i's device run against reference `name`;
    `routing_deviation`: per MoE layer, the median deviation of router inputs the near-tie bounds include;
    `device_factor`: the device's final-hidden-state deviation in units of the BF16 emulation's
    (`routing.device_factor`)."""
    comparisons, failed, steps = {}, [], []
    for name, per_prompt in per_reference.items():
        # generated rows start at the prompt's last position (which predicts the first generated token)
        gen = [accuracy.select(m, slice(len(r.prompt_ids) - 1, None)) for m, r in zip(per_prompt, runs, strict=True)]
        last = [accuracy.select(m, slice(len(r.prompt_ids) - 1, len(r.prompt_ids))) for m, r in zip(per_prompt, runs,
                                                                                                   strict=True)]
        summary = accuracy.summarize(accuracy.concat(per_prompt))
        generated = accuracy.summarize(accuracy.concat(gen))
        gate_rows = accuracy.check_gates(summary, generated, gates)
        failed += [f"{name}.{g['metric']}" for g in gate_rows if not g["passed"]]
        comparisons[name] = {
            "teacher_forced": summary,
            "prompt_last_position": accuracy.summarize(accuracy.concat(last)),
            "generated_steps": generated,
            "gates": gate_rows,
            "passed": all(g["passed"] for g in gate_rows),
            "routing_near_ties": _worst_routing_ties(per_prompt),
        }
    prompts = []
    for i, run in enumerate(runs):
        start = len(run.prompt_ids) - 1
        entry = {
            "index": i, "text": texts[i], "prompt_tokens": len(run.prompt_ids),
            "device_token_ids": run.generated_ids, "device_text": tokenizer.decode(run.generated_ids),
            "reference_texts": {},
        }
        for name, per_prompt in per_reference.items():
            top1 = per_prompt[i].ref_top1[start:].tolist()
            entry["reference_texts"][name] = tokenizer.decode(top1)
        prompts.append(entry)
        for step, token in enumerate(run.generated_ids):
            row = {"prompt": i, "step": step, "device_token_id": token, "device_token": tokenizer.decode([token])}
            for name, per_prompt in per_reference.items():
                m = per_prompt[i]
                row[name] = {
                    "token_id": int(m.ref_top1[start + step]), "max_abs_diff": float(m.max_abs[start + step]),
                    "match": bool(m.match[start + step]),
                }
            steps.append(row)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "vllm_mlx_loader.validate",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": str(ckpt.directory),
        "architecture": ckpt.architecture,
        "quantization": sorted({f"{m.params.mode} {m.params.bits}-bit g{m.params.group_size}" for m in ckpt.quantized}),
        **env,
        "settings": {
            "dtype": "bfloat16", "max_tokens": args.max_tokens, "chat_template": chat,
            "enable_thinking": args.enable_thinking, "tensor_parallel_size": args.tensor_parallel_size,
            "enforce_eager": args.enforce_eager, "quantization": getattr(args, "quantization", None),
            "greedy": True, "near_tie_nat": accuracy.NEAR_TIE_NAT,
            "device_logits": "raw, captured in vLLM's worker",
            "router_input_bf16_deviation": {str(i): d for i, d in sorted((routing_deviation or {}).items())},
            "router_deviation_device_factor": device_factor,
        },
        "gates": accuracy.gates_dict(gates),
        "comparisons": comparisons,
        "prompts": prompts,
        "steps": steps,
        "failed": failed,
        "passed": not failed,
    }


def _worst_routing_ties(per_prompt: list[accuracy.RowMetrics]) -> list[dict[str, Any]]:
    """The routing near-ties where the device's logits differ most (lowest cosine), worst first."""
    rows = []
    for i, m in enumerate(per_prompt):
        for pos in accuracy.routing_near_ties(m).nonzero().flatten().tolist():
            rows.append({"prompt": i, "position": pos, "routing_slack": float(m.routing_slack[pos]),
                         "cosine": float(m.cosine[pos]), "max_abs_diff": float(m.max_abs[pos]),
                         "top1_match": bool(m.match[pos])})
    return sorted(rows, key=lambda r: r["cosine"])[:WORST_TIES]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|").replace("\n", "\\n") for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    names = list(result["comparisons"])
    v = result["versions"]
    out = [
        f"# Accuracy: {result['model']}", "",
        f"Device: {result['device']['platform']} ({result['device']['name']}), BF16, greedy. "
        f"References: {', '.join(names)}. Quantization: {', '.join(result['quantization'])}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val), "",
        f"**Result: {'PASS' if result['passed'] else 'FAIL (' + ', '.join(result['failed']) + ')'}**", "",
        "## Gates (teacher-forced at every position; |delta logprob| on the tokens the device chose)", "",
    ]
    out += _table(["reference", "metric", "value", "limit", "passed"], [
        [name, g["metric"], g["value"], f"{g['op']} {g['limit']}", g["passed"]]
        for name in names for g in result["comparisons"][name]["gates"]
    ])
    for section, title in (("prompt_last_position", "Prompt logits (last position)"),
                           ("generated_steps", "Generated steps"),
                           ("teacher_forced", "Teacher-forced, every position")):
        out += [f"## {title}", ""]
        out += _table(["reference", *SUMMARY_KEYS], [
            [name, *(result["comparisons"][name][section][k] for k in SUMMARY_KEYS)] for name in names
        ])
    ties = [(name, t) for name in names for t in result["comparisons"][name]["routing_near_ties"]]
    if ties:
        out += ["## Routing near-ties (kept out of the gates: a router's k-th and (k+1)-th experts within BF16 "
                "rounding's reach)", ""]
        out += _table(["reference", "prompt", "position", "routing slack", "cosine", "max abs diff", "top-1 match"], [
            [name, t["prompt"], t["position"], t["routing_slack"], t["cosine"], t["max_abs_diff"], t["top1_match"]]
            for name, t in ties
        ])
    out += ["## Per step", ""]
    header = ["prompt", "step", "device id", "device token"]
    for name in names:
        header += [f"{name} id", f"{name} max diff", f"{name} match"]
    out += _table(header, [
        [s["prompt"], s["step"], s["device_token_id"], repr(s["device_token"]),
         *(x for name in names for x in (s[name]["token_id"], s[name]["max_abs_diff"], s[name]["match"]))]
        for s in result["steps"]
    ])
    out += ["## Texts (device greedy; references: their top-1 at each step of the device's text)", ""]
    out += _table(["prompt", "device", *names], [
        [p["text"][:60] + ("..." if len(p["text"]) > 60 else ""), p["device_text"],
         *(p["reference_texts"][n] for n in names)]
        for p in result["prompts"]
    ])
    return "\n".join(out)


def write(result: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "accuracy.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (directory / "accuracy.md").write_text(markdown(result) + "\n")
