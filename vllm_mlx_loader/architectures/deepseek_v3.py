"""DeepSeek-V3 / R1 / Kimi-K2-style MLA models: experts stacked under `mlp.switch_mlp` (`moe.py`), and the
attention's `kv_b_proj` split in two.

mlx-lm's `sanitize` reshapes `kv_b_proj` `[heads * (qk_nope + v), kv_lora_rank]` per head and stores
`self_attn.embed_q` `[heads, kv_lora_rank, qk_nope]` (the key half, transposed) and `self_attn.unembed_out`
`[heads, v, kv_lora_rank]` (the value half), each quantized on its own; it also drops the multi-token-prediction
layer 61. The inverse dequantizes both halves and stacks them back per head, which is exactly the projection
MLX's absorbed attention computes with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from ..errors import MLXCheckpointError
from ..stored import Entry, Inverse, Weight, missing_partner
from .moe import StackedExpertsAdapter

_KEY, _VALUE = ".self_attn.embed_q.weight", ".self_attn.unembed_out.weight"
_HALVES = "the two halves of kv_b_proj"


def _joined(wk: torch.Tensor, wv: torch.Tensor) -> torch.Tensor:
    # per head: the key rows [qk_nope, r] (wk is stored transposed), then the value rows [v, r]
    return torch.cat([wk.transpose(1, 2), wv], dim=1).reshape(-1, wv.shape[-1]).contiguous()


def _joined_shape(wk: tuple[int, ...], wv: tuple[int, ...]) -> tuple[int, ...]:
    return (wk[0] * (wk[2] + wv[1]), wv[2])


JOIN_KV_B = Inverse("kv_b_proj from embed_q and unembed_out", _joined, _joined_shape)


class DeepseekV3Adapter(StackedExpertsAdapter):
    # GLM-4.7-Flash: mlx-lm's glm4_moe_lite splits kv_b_proj exactly as DeepSeek-V3's does
    families: ClassVar[dict[str, str]] = {
        "deepseek_v3": "DeepseekV3ForCausalLM", "kimi_k2": "DeepseekV3ForCausalLM",
        "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
    }
    num_experts_key = "n_routed_experts"

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        weights = super().weights(entries, config, where)
        values = {w.name[: -len(_VALUE)]: w for w in weights if w.name.endswith(_VALUE)}
        out = []
        for w in weights:
            if w.name.endswith(_VALUE):
                continue
            if w.name.endswith(_KEY):
                prefix = w.name[: -len(_KEY)]
                if prefix not in values:
                    raise missing_partner(w, f"{prefix}{_VALUE}", _HALVES)
                wv = values.pop(prefix)
                _check_halves(w, wv)
                w = dataclasses.replace(w, name=f"{prefix}.self_attn.kv_b_proj.weight", inverse=JOIN_KV_B, others=(wv,))
            out.append(w)
        for prefix, wv in values.items():
            raise missing_partner(wv, f"{prefix}{_KEY}", _HALVES)
        return out


def _check_halves(wk: Weight, wv: Weight) -> None:
    k, v = wk.stored_shape, wv.stored_shape
    if len(k) != 3 or len(v) != 3 or k[0] != v[0] or k[1] != v[2]:
        raise MLXCheckpointError(
            wk.where(), f"shape {list(k)} does not pair with {wv.name} {list(v)}: expected [heads, kv_lora_rank, "
            "qk_nope_head_dim] and [heads, v_head_dim, kv_lora_rank].",
            "The checkpoint is damaged: re-download or re-convert it.",
        )


