"""Mixture-of-experts families whose experts mlx-lm stores stacked: `{block}.switch_mlp.{proj}` holds every
expert's projection as one `[experts, out, in_packed]` tensor (and its scales/biases), while vLLM's model
takes the Hugging Face per-expert names. Each expert becomes one weight that reads and dequantizes only its
own slice of the stack, so a whole stack is never dense in memory."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

from ..errors import MLXCheckpointError
from ..stored import Entry, Weight
from .base import Adapter
from .meta_model import build_config, config_field, model_shapes, positive_int

# a decoder layer's name (Nemotron-H's checkpoints call the model `backbone`)
_LAYER = re.compile(r"(?:model|backbone)\.layers\.(\d+)\.")
# an expert's own parameters in transformers' model: per expert (4.x) or fused 3-D (5.x), named by the adapter
_EXPERT = re.compile(r"\.experts\.(\d+\.|gate_up_proj|down_proj|gate_proj|up_proj)")
MAX_EXPERTS = 4096  # the most a served family has is 512 (Qwen3-Next)
# expert matrices the loader names, per projection: experts x MoE layers (Qwen3-Next-80B: 48 x 512 = 24,576)
MAX_EXPERT_MATRICES = 1 << 17
# experts transformers builds on the meta device: only which layers have experts is taken from its model (the
# adapter names every expert itself), and transformers 4.x builds each expert as three modules
META_EXPERTS = 4
# a router's tensors, one row per expert (`e_score_correction_bias`: a buffer in transformers' model)
ROUTER_TENSORS = (".gate.weight", ".e_score_correction_bias", ".expert_bias")


class StackedExpertsAdapter(Adapter):
    """Experts stacked under `{block}.switch_mlp`; a family that differs only in these names is a configuration
    (`STACKED_EXPERT_FAMILIES`), not a file."""

    block = "mlp"  # the module holding the router (`gate`) and the experts
    stack = "switch_mlp"  # where mlx-lm put the stacks, under the block
    num_experts_key = "num_experts"
    expert_size_key = "moe_intermediate_size"
    # switch_mlp projection -> the Hugging Face expert projection; which stored one is the down projection
    expert_names: ClassVar[dict[str, str]] = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}
    down = "down_proj"
    # names mlx-lm's sanitize gave tensors beside the experts: stored suffix -> the checkpoints' (Laguna's router)
    stored_renames: ClassVar[dict[str, str]] = {}

    def __init__(self, families: dict[str, str] | None = None, **names: Any) -> None:
        super().__init__(families)
        for key, value in names.items():
            if not hasattr(type(self), key):
                raise TypeError(f"{type(self).__name__} has no setting {key!r}")
            setattr(self, key, value)

    def expected_weights(self, config: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
        hf_config = build_config(config, where)
        experts = positive_int(config_field(hf_config, self.num_experts_key), self.num_experts_key, where, MAX_EXPERTS)
        inter = positive_int(config_field(hf_config, self.expert_size_key), self.expert_size_key, where)
        shapes = model_shapes(config, where, overrides={self.num_experts_key: min(experts, META_EXPERTS)})
        hidden = hf_config.hidden_size  # checked by model_shapes
        # transformers 4.x lists experts one by one, 5.x as fused 3-D parameters: only which layers have
        # experts is taken from the model; the per-expert names are the checkpoints' own
        moe_layers = {m.group(1): m.group(0) for n in shapes if _EXPERT.search(n) and (m := _LAYER.match(n))}
        if len(moe_layers) * experts > MAX_EXPERT_MATRICES:
            raise MLXCheckpointError(
                where, f"{len(moe_layers)} mixture-of-experts layers of {experts} experts make "
                f"{len(moe_layers) * experts} expert matrices per projection; at most {MAX_EXPERT_MATRICES} are "
                "expected.", "Check config.json against the model's original one.",
            )
        expected = {}
        for name, shape in shapes.items():
            if (m := _LAYER.match(name)) and m.group(1) in moe_layers:
                if _EXPERT.search(name):
                    continue  # named below, expert by expert
                if name.endswith(ROUTER_TENSORS):  # one row per expert: widened from the meta model's few
                    shape = (experts, *shape[1:])
            expected[name] = shape
        for layer in sorted(moe_layers, key=int):
            prefix = f"{moe_layers[layer]}{self.block}"
            for e in range(experts):
                for stored, proj in self.expert_names.items():
                    shape = (hidden, inter) if stored == self.down else (inter, hidden)
                    expected[f"{prefix}.experts.{e}.{proj}.weight"] = shape
        return expected

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        stack = re.compile(rf"((?:model|backbone)\.layers\.\d+\.{re.escape(self.block)})\.{self.stack}\.(\w+)\.weight")
        out = []
        for entry in entries:
            m = stack.fullmatch(entry.name)
            if m is None or m.group(2) not in self.expert_names:
                suffix = next((s for s in self.stored_renames if entry.name.endswith(s)), None)
                name = entry.name[: -len(suffix)] + self.stored_renames[suffix] if suffix else entry.name
                out.append(Weight(name, entry))
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


# Families whose mlx-lm `sanitize` only stacks the experts (and drops multi-token-prediction layers): each is the
# stacked-experts adapter with its own names. Routers' `e_score_correction_bias` (a buffer transformers' model
# holds) is stored under its Hugging Face name.
STACKED_EXPERT_FAMILIES = (
    StackedExpertsAdapter({"qwen2_moe": "Qwen2MoeForCausalLM"}),
    StackedExpertsAdapter({"olmoe": "OlmoeForCausalLM"}, expert_size_key="intermediate_size"),
    StackedExpertsAdapter({"glm4_moe": "Glm4MoeForCausalLM"}, num_experts_key="n_routed_experts"),
    StackedExpertsAdapter(
        {"minimax_m2": "MiniMaxM2ForCausalLM", "phimoe": "PhiMoEForCausalLM"}, block="block_sparse_moe",
        num_experts_key="num_local_experts", expert_size_key="intermediate_size",
        expert_names={"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"},
    ),
    # stacks straight under `mlp.experts` (no switch_mlp); Afmoe's router is `mlp.router.gate`
    StackedExpertsAdapter({"dots1": "Dots1ForCausalLM"}, num_experts_key="n_routed_experts", stack="experts"),
    StackedExpertsAdapter({"afmoe": "AfmoeForCausalLM"}, stack="experts"),
    # Laguna: mlx-lm renamed the router `gate` -> `gate.proj` and moved its bias from `experts` to `gate`
    StackedExpertsAdapter({"laguna": "LagunaForCausalLM"}, stored_renames={
        ".mlp.gate.proj.weight": ".mlp.gate.weight",
        ".mlp.gate.e_score_correction_bias": ".mlp.experts.e_score_correction_bias",
    }),
    # EXAONE-MoE: mlx-lm moved the router's bias into `gate`
    StackedExpertsAdapter({"exaone_moe": "ExaoneMoeForCausalLM"}, stored_renames={
        ".mlp.gate.e_score_correction_bias": ".mlp.e_score_correction_bias",
    }),
)
