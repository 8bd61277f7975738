"""Mixture-of-experts layers with 4-bit experts: each expert's gate/up and down projections computed through the
platform's int4 linear kernel, expert by expert.

No int4 fused-MoE kernel takes MLX's layout as it is: the fused kernels vLLM and vllm-ascend have take integer zero
points (or none), and the split form's correction must be added to each projection before the activation, which
they run inside. Run expert by expert, each projection is one linear layer of the kernel (its correction included),
so every backend's kernel serves: the same math as the linear layers, the memory of 4-bit experts, and one kernel
call per projection of each expert a batch routes to (a fused kernel would make one per layer). No vLLM import here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernel import Int4Kernel, Tensors


def stack_prepared(kernel: Int4Kernel, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor,
                   group_size: int) -> Tensors:
    """Every expert of `[E, N, K/8]` codes with `[E, N, K/G]` scales and biases laid out by `kernel`, stacked: one
    `[E, ...]` tensor per name of the kernel's layout (each expert's layout has the same shapes)."""
    prepared = [kernel.prepare(weight[e], scales[e], biases[e], group_size) for e in range(weight.shape[0])]
    return {name: torch.stack([p[name] for p in prepared]) for name in prepared[0]}


def expert(tensors: Tensors, e: int) -> Tensors:
    return {name: t[e] for name, t in tensors.items()}


def moe_forward(kernel: Int4Kernel, w13: Tensors, w2: Tensors, x: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor, group_size: int) -> torch.Tensor:
    """Σ over each token's k experts of weight · down(silu(gate(x)) · up(x)), `[M, H]` in x's dtype.

    `w13` holds gate and up (rows [0, I) and [I, 2I) of each expert, as vLLM's w13), `w2` down; `topk_ids` `[M, k]`
    (an id outside [0, E) is an expert this rank does not hold: skipped); `group_size` of both (the checkpoint's
    experts are quantized alike, or the layer keeps the BF16 path). Expert outputs
    are computed and summed in float32 (each kernel takes float32 x and returns float32: its own rounding only) and
    rounded once."""
    tokens, k = topk_ids.shape
    out = torch.zeros(tokens, x.shape[-1], dtype=torch.float32, device=x.device)
    experts = len(next(iter(w13.values())))
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)  # rows of (token, slot) grouped by expert, ids below 0 first
    held = flat[flat >= 0]
    counts = torch.bincount(held, minlength=experts).tolist() if held.numel() else []
    start = flat.numel() - held.numel()
    for e, count in enumerate(counts):
        rows = order[start : start + count]
        start += count
        if count == 0 or e >= experts:
            continue
        token = rows // k
        # float32 from the kernels' output to the sum: their own rounding is the only one (a BF16 gate/up and
        # activation moved validate's min cosine from 0.99914 to 0.99828 on the Qwen3-MoE fixture)
        gate_up = kernel.apply(expert(w13, e), x[token].float(), group_size)
        gate, up = gate_up.chunk(2, dim=-1)
        down = kernel.apply(expert(w2, e), F.silu(gate) * up, group_size)
        weights = topk_weights.reshape(-1)[rows].float().unsqueeze(-1)
        out.index_add_(0, token, down * weights)
    return out.to(x.dtype)
