"""The MLX reference's large products on torch's BLAS, its values still MLX's own.

The `mlx[cpu]` wheel for Linux links the reference (netlib) BLAS: its float32 GEMM runs at ~2.5 GFLOP/s on one
core, its quantized matmul at ~1.9, and its attention kernel takes 3.9 s per layer for a 1,065-token prompt
(measured on a 2-core x86 host; torch's BLAS: ~150 GFLOP/s). So while the MLX column runs, the layers that hold
the bulk of the arithmetic are computed by torch from MLX's own results: each quantized layer's codes, scales and
biases are dequantized by `mx.dequantize` (nothing of this package's dequantization), then multiplied in float32 by
torch; attention is computed by torch from mlx-lm's queries, keys, values, mask and sinks. Everything else (the
model's code, norms, rotary embeddings, routing, activations) stays mlx-lm's. Peak memory: the packed model, the
activations and one dense layer (one expert of a stack) at a time, or, where the host has the memory, every dense
layer kept for the run (`mx.dequantize` runs on one core: 4.5 s per sequence for a Qwen3-0.6B shape).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def to_torch(a: Any) -> torch.Tensor:
    import mlx.core as mx

    return torch.from_numpy(np.array(a.astype(mx.float32) if a.dtype != mx.float32 else a))


def to_mlx(t: torch.Tensor) -> Any:
    import mlx.core as mx

    return mx.array(t.numpy())


class _Dense:
    """Dequantized weights: the last one only (the output layer is then dequantized once per sequence, not once
    per block of its rows), or with `keep` every one, so each layer is dequantized once per run."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.weights: dict[tuple[int, Any], tuple[Any, torch.Tensor]] = {}  # (id, expert) -> (layer, weight)

    def get(self, layer: Any, index: Any = None) -> torch.Tensor:
        key = (id(layer), index)
        if key not in self.weights:
            if not self.keep:
                self.weights.clear()  # one dense layer at a time
            self.weights[key] = (layer, _dequantize(layer, index))  # the layer is held: its id stays its own
        return self.weights[key][1]


_dense = _Dense(keep=False)


def _dequantized(layer: Any, index: Any = None) -> torch.Tensor:
    """The float32 weight of a quantized layer (of expert `index` of a stack), dequantized by MLX."""
    return _dense.get(layer, index)


def _dequantize(layer: Any, index: Any) -> torch.Tensor:
    import mlx.core as mx

    def part(name: str) -> Any:
        value = layer.get(name) if name != "weight" else layer["weight"]
        return value if value is None or index is None else value[index]

    extra = {}
    global_scale = getattr(layer, "global_scale", None)
    if global_scale is not None:
        extra["global_scale"] = global_scale if index is None or global_scale.size == 1 else global_scale[index]
    return to_torch(mx.dequantize(part("weight"), part("scales"), part("biases"), group_size=layer.group_size,
                                  bits=layer.bits, mode=layer.mode, **extra))


def linear(x: Any, weight: torch.Tensor, bias: Any = None) -> Any:
    """`x @ weight.T (+ bias)` by torch, for MLX `x` of any leading shape."""
    xt = to_torch(x)
    y = to_mlx((xt.reshape(-1, xt.shape[-1]) @ weight.T).reshape(*xt.shape[:-1], weight.shape[0]))
    return y if bias is None else y + bias


def _gather(x: Any, indices: Any, weight_of: Any, bias: Any) -> Any:
    """mlx's `gather_mm` / `gather_qmm` with `rhs_indices`: batch element b multiplies its `[M, K]` rows by the
    transposed matrix of expert `indices[b]` (x's batch dimensions broadcast against `indices`)."""
    import mlx.core as mx

    xt, idx = to_torch(x), torch.from_numpy(np.array(indices)).long()
    batch = torch.broadcast_shapes(xt.shape[:-2], idx.shape)
    xt = xt.broadcast_to(*batch, *xt.shape[-2:]).reshape(-1, *xt.shape[-2:])
    flat = idx.broadcast_to(batch).reshape(-1)
    out = None
    for expert in flat.unique().tolist():
        rows = (flat == expert).nonzero().flatten()
        w = weight_of(expert)
        y = xt[rows] @ w.T
        if out is None:
            out = xt.new_empty(xt.shape[0], xt.shape[1], w.shape[0])
        out[rows] = y
    y = to_mlx(out.reshape(*batch, *out.shape[1:]))
    return y if bias is None else y + mx.expand_dims(bias[indices], -2)


def attention(q: Any, k: Any, v: Any, *, scale: float, mask: Any = None, sinks: Any = None, **_: Any) -> Any:
    """`mx.fast.scaled_dot_product_attention`'s semantics (grouped heads, a "causal" mask aligned lower right, a
    boolean or additive mask array, per-head sinks) in float32 torch."""
    qt, kt, vt = to_torch(q), to_torch(k), to_torch(v)
    groups = qt.shape[1] // kt.shape[1]
    kt, vt = kt.repeat_interleave(groups, 1), vt.repeat_interleave(groups, 1)
    t_q, t_k = qt.shape[-2], kt.shape[-2]
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}")
        allowed = torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q)
    elif mask is not None:
        allowed = torch.from_numpy(np.array(mask))
        allowed = allowed if allowed.dtype == torch.bool else allowed.float()  # additive
    else:
        allowed = None
    if sinks is None:
        return to_mlx(torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=allowed, scale=scale))
    scores = (qt * scale) @ kt.transpose(-1, -2)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf")) if allowed.dtype == torch.bool else scores + allowed
    sink = to_torch(sinks).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return to_mlx(torch.cat([sink, scores], dim=-1).softmax(-1)[..., 1:] @ vt)


@contextmanager
def on_torch_blas(keep_dense: bool = False) -> Iterator[None]:
    """Route mlx's linear layers, expert stacks and attention through torch while the block runs; `keep_dense`:
    keep every dequantized weight until it ends (4 bytes per weight of host memory, each layer dequantized once),
    else one at a time (each layer dequantized once per sequence)."""
    global _dense
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.models import switch_layers

    replaced = [
        (nn.QuantizedLinear, "__call__",
         lambda self, x: linear(x, _dequantized(self), self.get("bias", None))),
        (nn.Linear, "__call__", lambda self, x: linear(x, to_torch(self["weight"]), self.get("bias", None))),
        (nn.QuantizedEmbedding, "as_linear", lambda self, x: linear(x, _dequantized(self))),
        (nn.Embedding, "as_linear", lambda self, x: linear(x, to_torch(self["weight"]))),
        (switch_layers.QuantizedSwitchLinear, "__call__", lambda self, x, indices, sorted_indices=False: _gather(
            x, indices, lambda e: _dequantized(self, e), self.get("bias", None))),
        (switch_layers.SwitchLinear, "__call__", lambda self, x, indices, sorted_indices=False: _gather(
            x, indices, lambda e: to_torch(self["weight"][e]), self.get("bias", None))),
        (mx.fast, "scaled_dot_product_attention", attention),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in replaced]
    _dense = _Dense(keep_dense)
    try:
        for owner, name, function in replaced:
            setattr(owner, name, function)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        _dense = _Dense(keep=False)
