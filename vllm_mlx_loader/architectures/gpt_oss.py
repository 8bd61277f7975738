"""gpt-oss (OpenAI's gpt-oss-20b / 120b): experts kept as transformers' fused 3-D parameters.

mlx-lm's `sanitize` reads OpenAI's layout (`gate_up_proj_blocks` `[experts, 2 * inter, hidden / 32, 16]`, MXFP4)
and splits the interleaved gate/up rows into `mlp.experts.gate_proj` and `mlp.experts.up_proj` (even rows, odd
rows), each `[experts, inter, hidden]`, their biases likewise, and keeps `down_proj` as `[experts, hidden, inter]`.
The Hugging Face model (and vLLM's, which takes the Hugging Face names) wants `gate_up_proj` `[experts, hidden,
2 * inter]` with gate and up interleaved on the last axis and `down_proj` `[experts, inter, hidden]`: the inverse
interleaves the two halves back and transposes. Each stack is made whole (vLLM's gpt-oss loader takes whole
stacks and slices them for tensor parallelism itself).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from ..errors import MLXCheckpointError
from ..stored import Entry, Inverse, Weight, missing_partner
from .base import Adapter

_EXPERTS = re.compile(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)\.(weight|bias)")
_HALVES = "gate_proj and up_proj (the halves of gate_up_proj)"


def _interleaved(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    # gate row i -> row 2i, up row i -> row 2i + 1, on the axis after the experts
    return torch.stack([gate, up], dim=2).flatten(1, 2)


def _gate_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _interleaved(gate, up).transpose(1, 2).contiguous()


def _transposed(down: torch.Tensor) -> torch.Tensor:
    return down.transpose(1, 2).contiguous()


JOIN_GATE_UP = Inverse(
    "gate_up_proj from gate_proj and up_proj", _gate_up, lambda g, u: (g[0], g[2], g[1] + u[1]),
)
JOIN_GATE_UP_BIAS = Inverse(
    "gate_up_proj_bias from gate_proj.bias and up_proj.bias", lambda g, u: _interleaved(g, u).contiguous(),
    lambda g, u: (g[0], g[1] + u[1]),
)
TRANSPOSE_DOWN = Inverse("down_proj as [experts, inter, hidden]", _transposed, lambda d: (d[0], d[2], d[1]))


class GptOssAdapter(Adapter):
    families: ClassVar[dict[str, str]] = {"gpt_oss": "GptOssForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        out, parts = [], {}
        for w in super().weights(entries, config, where):
            m = _EXPERTS.fullmatch(w.name)
            if m is None:
                out.append(w)
            else:
                parts[m.groups()] = w
        for (prefix, proj, kind), w in sorted(parts.items()):
            if proj == "down_proj":
                name = f"{prefix}.down_proj" + ("_bias" if kind == "bias" else "")
                out.append(dataclasses.replace(w, name=name, inverse=None if kind == "bias" else TRANSPOSE_DOWN))
                _check_stack(w, 2 if kind == "bias" else 3)
            elif proj == "gate_proj":
                up = parts.get((prefix, "up_proj", kind))
                if up is None:
                    raise missing_partner(w, f"{prefix}.up_proj.{kind}", _HALVES)
                _check_halves(w, up, 2 if kind == "bias" else 3)
                name, inverse = (f"{prefix}.gate_up_proj_bias", JOIN_GATE_UP_BIAS) if kind == "bias" else (
                    f"{prefix}.gate_up_proj", JOIN_GATE_UP)
                out.append(dataclasses.replace(w, name=name, inverse=inverse, others=(up,)))
            elif (prefix, "gate_proj", kind) not in parts:
                raise missing_partner(w, f"{prefix}.gate_proj.{kind}", _HALVES)
        return out


def _check_stack(w: Weight, ndim: int) -> None:
    if len(w.stored_shape) != ndim:
        raise MLXCheckpointError(
            w.where(), f"expected a stack of experts with {ndim} axes, found shape {list(w.stored_shape)}.",
            "The checkpoint is damaged: re-download or re-convert it.",
        )


def _check_halves(gate: Weight, up: Weight, ndim: int) -> None:
    _check_stack(gate, ndim)
    if up.stored_shape != gate.stored_shape:
        raise MLXCheckpointError(
            up.where(), f"shape {list(up.stored_shape)} does not pair with {gate.name} {list(gate.stored_shape)}: "
            "the halves of gate_up_proj have one shape.",
            "The checkpoint is damaged: re-download or re-convert it.",
        )
