"""The mixture-of-experts method of `--quantization mlx`: experts kept 4-bit, computed expert by expert through the
platform's int4 linear kernel (`w4a16/experts.py` says why not a fused kernel).

Parameters as MLX stores each expert, stacked over this rank's experts like vLLM's own: `w13_weight`
`[E, 2I, H/8]` int32 (gate rows then up rows), `w13_scales` / `w13_biases` `[E, 2I, H/G]`, `w2_*` likewise for
down `[E, H, I/8]`. The method loads them itself (one `weight_loader`, the same on vLLM 0.18, 0.23 and 0.32):
tensor parallelism takes this rank's I rows of gate and up and its I columns of down (whole groups), as vLLM shards
the dense experts.

The forward is a torch custom op (`vllm_mlx_loader::experts_4bit`): it groups tokens by expert on the host, which
vLLM's compiled graphs (`torch.compile(fullgraph=True)` on the CPU) cannot trace, so they call it as one opaque op.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Parameter
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase
from vllm.model_executor.utils import set_weight_attrs

from ..w4a16.experts import expert, moe_forward, stack_prepared
from ..w4a16.kernel import Int4Kernel, check_layer
from . import compat
from .linear_method import PACK, PARTS

PROJECTIONS = ("w13", "w2")
_METHODS: dict[str, MLXMoEMethod] = {}  # the op's layer name -> its method, in this process


@torch.library.custom_op("vllm_mlx_loader::experts_4bit", mutates_args=())
def experts_4bit(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer: str) -> torch.Tensor:
    method = _METHODS[layer]
    return moe_forward(method.kernel, method.tensors["w13"], method.tensors["w2"], x, topk_weights, topk_ids,
                       method.group_size)


@experts_4bit.register_fake
def _(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, layer: str) -> torch.Tensor:
    return torch.empty_like(x)


def refusal(kernel: Int4Kernel, layer: torch.nn.Module, group_size: int) -> str | None:
    """Why the experts of `layer` (a vLLM fused-MoE layer) cannot stay 4-bit; None where they can."""
    config = layer.moe_config
    parallel = config.moe_parallel_config
    activation = getattr(config.activation, "value", config.activation)
    if activation != "silu" or not getattr(config, "is_act_and_mul", True):
        return f"{activation} experts (4-bit experts compute SiLU-gated ones)"
    if config.has_bias:
        return "experts with biases"
    if parallel.use_ep:
        return "expert parallelism"
    if getattr(layer, "routed_scaling_factor", 1.0) != 1.0 or getattr(layer, "apply_router_weight_on_input", False):
        return "a scaled or input-side router weight"
    if compat.device_graphs_captured():
        return "device graphs capture the layer (serve with --enforce-eager to keep the experts 4-bit)"
    hidden = config.hidden_dim
    inter = getattr(config, "intermediate_size_per_partition", None) or config.intermediate_size // parallel.tp_size
    if hidden % group_size or inter % group_size:
        return f"this rank's {hidden} x {inter} experts are not whole groups of {group_size}"
    return kernel.refusal(2 * inter, hidden, group_size, config.in_dtype) or kernel.refusal(
        hidden, inter, group_size, config.in_dtype)


class MLXMoEMethod(FusedMoEMethodBase):
    def __init__(self, moe: Any, kernel: Int4Kernel, group_size: int, sources: list[str], layer: str) -> None:
        super().__init__(moe)
        self.layer = layer  # vLLM's name of the layer: the custom op's key
        self.kernel = kernel
        self.group_size = group_size
        self.sources = sources  # the checkpoint's (Hugging Face) expert module names
        self.tp_rank = moe.moe_parallel_config.tp_rank
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}  # w13 / w2 -> the kernel's layout, after loading
        self.route = compat.cpu_moe_routing()  # where vLLM routes inside the method (0.18 / 0.23 on the CPU)

    @property
    def is_monolithic(self) -> bool:
        return self.route is not None

    def create_weights(self, layer: torch.nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype, **extra: Any) -> None:
        inter, g = intermediate_size_per_partition, self.group_size
        shapes = {"w13": (2 * inter, hidden_size), "w2": (hidden_size, inter)}
        for proj, (n, k) in shapes.items():
            for part in PARTS:
                dtype, width = (torch.int32, k // PACK) if part == "weight" else (params_dtype, k // g)
                param = Parameter(torch.empty(num_experts, n, width, dtype=dtype), requires_grad=False)
                set_weight_attrs(param, {"weight_loader": self.weight_loader})
                layer.register_parameter(f"{proj}_{part}", param)

    def weight_loader(self, param: Parameter, loaded_weight: torch.Tensor, weight_name: str = "",
                      shard_id: str = "", expert_id: int = 0, return_success: bool = False, **_: Any) -> bool | None:
        """One expert's stored gate (w1), up (w3) or down (w2) codes, scales or biases: this rank's share."""
        dest = param.data[expert_id]
        if shard_id == "w2":  # down: this rank's columns, in the stored tensor's own units (words or groups)
            width = dest.shape[1]
            share = loaded_weight[:, self.tp_rank * width : (self.tp_rank + 1) * width]
        else:  # gate and up: this rank's rows, gate in the first half of w13, up in the second
            rows = dest.shape[0] // 2
            dest = dest[:rows] if shard_id == "w1" else dest[rows:]
            share = loaded_weight[self.tp_rank * rows : (self.tp_rank + 1) * rows]
        if share.shape != dest.shape:
            raise ValueError(
                f"{weight_name} (expert {expert_id}, {shard_id}): this rank's share of the stored tensor "
                f"{tuple(loaded_weight.shape)} is {tuple(share.shape)}, the 4-bit expert layer takes "
                f"{tuple(dest.shape)}; the checkpoint does not match config.json"
            )
        dest.copy_(share)
        return True if return_success else None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        for proj in PROJECTIONS:
            stored = [getattr(layer, f"{proj}_{part}").data for part in PARTS]
            prepared = stack_prepared(self.kernel, *stored, self.group_size)
            if self.kernel.self_check:
                for e in range(stored[0].shape[0]):
                    check_layer(self.kernel, expert(prepared, e), *(t[e] for t in stored), self.group_size,
                                f"{self.layer} expert {e} {proj}")
            for part in PARTS:
                delattr(layer, f"{proj}_{part}")
            for name, tensor in prepared.items():
                layer.register_parameter(f"{proj}_{name}", Parameter(tensor, requires_grad=False))
            self.tensors[proj] = {name: getattr(layer, f"{proj}_{name}") for name in prepared}
        _METHODS[self.layer] = self

    def get_fused_moe_quant_config(self, layer: torch.nn.Module) -> None:
        return None

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              *args: Any, **kwargs: Any) -> torch.Tensor:
        return experts_4bit(x, topk_weights, topk_ids, self.layer)

    def apply_monolithic(self, layer: torch.nn.Module, x: torch.Tensor, router_logits: torch.Tensor,
                         *args: Any, **kwargs: Any) -> torch.Tensor:
        topk_weights, topk_ids = self.route(layer, x, router_logits)
        return experts_4bit(x, topk_weights, topk_ids, self.layer)
