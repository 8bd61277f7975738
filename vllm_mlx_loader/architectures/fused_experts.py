"""Experts that the Hugging Face checkpoints hold fused, as transformers' 3-D parameters, and mlx-lm splits.

Qwen3.5/3.6-MoE store `mlp.experts.gate_up_proj` `[experts, 2 * inter, hidden]` (gate rows, then up rows) and
`mlp.experts.down_proj` `[experts, hidden, inter]`; mlx-lm's `sanitize` cuts `gate_up_proj` at the middle of its rows
into `mlp.switch_mlp.gate_proj` / `up_proj` and renames `down_proj` to `mlp.switch_mlp.down_proj` (Gemma 4: under
`experts.switch_glu`; Granite-MoE: `block_sparse_moe.input_linear` / `output_linear`). Qwen3-VL-MoE's checkpoints
hold the transposes (`[experts, hidden, 2 * inter]`, `[experts, inter, hidden]`), which mlx-lm cuts on the last axis
and swaps back. The inverse dequantizes both halves, joins them (and transposes back where the checkpoints are
transposed): whole stacks, as vLLM's loaders for these families take them and slice them themselves.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch

from ..errors import MLXCheckpointError
from ..stored import Inverse, Weight, missing_partner

_HALVES = "gate_proj and up_proj (the halves of gate_up_proj)"


def _transposed(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).contiguous()


JOIN = Inverse("gate_up_proj from gate_proj and up_proj", lambda g, u: torch.cat([g, u], dim=1),
               lambda g, u: (g[0], g[1] + u[1], g[2]))
JOIN_TRANSPOSED = Inverse(
    "gate_up_proj [experts, hidden, 2 * inter] from gate_proj and up_proj",
    lambda g, u: _transposed(torch.cat([g, u], dim=1)), lambda g, u: (g[0], g[2], g[1] + u[1]),
)
DOWN_TRANSPOSED = Inverse("down_proj as [experts, inter, hidden]", _transposed, lambda d: (d[0], d[2], d[1]))


@dataclass(frozen=True)
class FusedExperts:
    """Where mlx-lm put the halves (`stack`, under a layer) and where the fused parameters belong (`experts`)."""

    stack: str = "mlp.switch_mlp"
    experts: str = "mlp.experts"
    transposed: bool = False  # the checkpoints hold [experts, in, out] (Qwen3-VL-MoE)
    gate_up: str = "gate_up_proj"  # the fused parameters' names under `experts`
    down: str = "down_proj"

    def join(self, weights: list[Weight]) -> list[Weight]:
        """`weights` with each layer's stacked halves joined into the fused Hugging Face parameters."""
        pattern = re.compile(rf"(.*)\.{re.escape(self.stack)}\.(gate_proj|up_proj|down_proj)\.weight")
        out, parts = [], {}
        for w in weights:
            m = pattern.fullmatch(w.name)
            if m is None:
                out.append(w)
            else:
                _check_stack(w)
                parts[m.groups()] = w
        for (prefix, proj), w in sorted(parts.items()):
            fused = f"{prefix}.{self.experts}"
            if proj == "down_proj":
                out.append(dataclasses.replace(
                    w, name=f"{fused}.{self.down}", inverse=DOWN_TRANSPOSED if self.transposed else None))
            elif proj == "gate_proj":
                up = parts.get((prefix, "up_proj"))
                if up is None:
                    raise missing_partner(w, f"{prefix}.{self.stack}.up_proj.weight", _HALVES)
                if up.stored_shape != w.stored_shape:
                    raise MLXCheckpointError(
                        up.where(), f"shape {list(up.stored_shape)} does not pair with {w.name} "
                        f"{list(w.stored_shape)}: the halves of gate_up_proj have one shape.",
                        "The checkpoint is damaged: re-download or re-convert it.",
                    )
                inverse = JOIN_TRANSPOSED if self.transposed else JOIN
                out.append(dataclasses.replace(w, name=f"{fused}.{self.gate_up}", inverse=inverse, others=(up,)))
            elif (prefix, "gate_proj") not in parts:
                raise missing_partner(w, f"{prefix}.{self.stack}.gate_proj.weight", _HALVES)
        return out

    def checkpoint_shapes(self, expected: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """transformers' parameter shapes as the checkpoints hold them (transposed where they are)."""
        if not self.transposed:
            return expected
        fused = (f".{self.experts}.{self.gate_up}", f".{self.experts}.{self.down}")
        return {n: (s[0], s[2], s[1]) if n.endswith(fused) and len(s) == 3 else s for n, s in expected.items()}


def _check_stack(w: Weight) -> None:
    if len(w.stored_shape) != 3:
        raise MLXCheckpointError(
            w.where(), f"expected a stack of experts of shape [experts, out, in], found {list(w.stored_shape)}.",
            "The checkpoint is damaged: re-download or re-convert it.",
        )
