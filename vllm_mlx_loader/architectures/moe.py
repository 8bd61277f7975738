"""Mixture-of-experts families whose experts mlx-lm stores stacked: `{block}.switch_mlp.{proj}` holds every
expert's projection as one `[experts, out, in_packed]` tensor (and its scales/biases), while vLLM's model
takes the Hugging Face per-expert names. Each expert becomes one weight that reads and dequantizes only its
own slice of the stack, so a whole stack is never dense in memory."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

from ..errors import MLXCheckpointError
from ..stored import Entry
from .base import Adapter, Weight
from .meta_model import build_config, model_shapes, positive_int

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
MAX_EXPERTS = 4096  # the most a served family has is 512 (Qwen3-Next)
# expert matrices the loader names, per projection: experts x MoE layers (Qwen3-Next-80B: 48 x 512 = 24,576)
MAX_EXPERT_MATRICES = 1 << 17
# experts transformers builds on the meta device: only which layers have experts is taken from its model (the
# adapter names every expert itself), and transformers 4.x builds each expert as three modules
META_EXPERTS = 4


class StackedExpertsAdapter(Adapter):
    block = "mlp"  # the module holding the router (`gate`) and the experts
    num_experts_key = "num_experts"
    expert_size_key = "moe_intermediate_size"
    # switch_mlp projection -> the Hugging Face expert projection
    expert_names: ClassVar[dict[str, str]] = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}

    def expected_weights(self, config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
        hf_config = build_config(config, where)
        experts = positive_int(getattr(hf_config, self.num_experts_key, None), self.num_experts_key, where, MAX_EXPERTS)
        inter = positive_int(getattr(hf_config, self.expert_size_key, None), self.expert_size_key, where)
        shapes = model_shapes(config, where, overrides={self.num_experts_key: min(experts, META_EXPERTS)})
        hidden = hf_config.hidden_size  # checked by model_shapes
        # transformers 4.x lists experts one by one, 5.x as fused 3-D parameters: only which layers have
        # experts is taken from the model; the per-expert names are the checkpoints' own
        moe_layers = {m.group(1) for n in shapes if ".experts." in n and (m := _LAYER.match(n))}
        if len(moe_layers) * experts > MAX_EXPERT_MATRICES:
            raise MLXCheckpointError(
                where, f"{len(moe_layers)} mixture-of-experts layers of {experts} experts make "
                f"{len(moe_layers) * experts} expert matrices per projection; at most {MAX_EXPERT_MATRICES} are "
                "expected.", "Check config.json against the model's original one.",
            )
        expected = {
            n: s for n, s in shapes.items()
            if not ((m := _LAYER.match(n)) and m.group(1) in moe_layers and re.search(r"\.(experts|gate)\.", n))
        }
        for layer in sorted(moe_layers, key=int):
            prefix = f"model.layers.{layer}.{self.block}"
            expected[f"{prefix}.gate.weight"] = (experts, hidden)
            for e in range(experts):
                for proj in self.expert_names.values():
                    shape = (hidden, inter) if proj == self.expert_names["down_proj"] else (inter, hidden)
                    expected[f"{prefix}.experts.{e}.{proj}.weight"] = shape
        return expected

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        stack = re.compile(rf"(model\.layers\.\d+\.{re.escape(self.block)})\.switch_mlp\.(\w+)\.weight")
        out = []
        for entry in entries:
            m = stack.fullmatch(entry.name)
            if m is None or m.group(2) not in self.expert_names:
                out.append(Weight(entry.name, entry))
                continue
            if len(entry.shape) != 3:
                raise MLXCheckpointError(
                    _where(entry),
                    f"expected a stack of experts of shape [experts, out, in], found {list(entry.shape)}.",
                    "The checkpoint is damaged: re-download or re-convert it.",
                )
            proj = self.expert_names[m.group(2)]
            out += [Weight(f"{m.group(1)}.experts.{e}.{proj}.weight", entry, e) for e in range(entry.shape[0])]
        return out


def _where(entry: Entry) -> str:
    return getattr(entry, "weight", entry).where()
