"""Logit-level comparison of a device run against a reference: metrics per position, summaries, gates.

Inputs are full-vocabulary logits, one row per teacher-forced position (row i predicts token i + 1 of
the text), float32. Probabilities are computed in float64 so the metrics measure the logits, not us.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

NEAR_TIE_NAT = 0.3  # a top-1 flip where the reference's top-2 gap is smaller is "soft" (bf16 noise)


@dataclass(frozen=True)
class Gates:
    min_cosine: float = 0.999
    min_top1: float = 0.99
    max_hard_flips: int = 0
    max_mean_kl: float = 1e-3
    max_dlogprob: float = 0.1


@dataclass(frozen=True)
class RowMetrics:
    """Per-position metrics, each a 1-D tensor over positions."""

    max_abs: torch.Tensor
    mean_abs: torch.Tensor
    rmse: torch.Tensor
    cosine: torch.Tensor
    match: torch.Tensor  # argmax equal
    hard_flip: torch.Tensor  # argmax differs and the reference's top-2 gap >= NEAR_TIE_NAT
    kl: torch.Tensor  # KL(reference || device), nat
    dlogprob: torch.Tensor  # |logp_device - logp_reference| of the token the text continues with
    ref_top1: torch.Tensor
    dev_top1: torch.Tensor
    # the reference's routing slack (`routing.py`): negative where a router's choice was a near-tie; +inf for a
    # dense model
    routing_slack: torch.Tensor
    # the device's row holds NaN or an infinity (its other metrics are then computed as if it equalled the reference's)
    nonfinite: torch.Tensor
    # a routing near-tie came earlier in the sequence (`with_routing_reach`): attention carries either choice here
    after_routing_tie: torch.Tensor


def row_metrics(reference: torch.Tensor, device: torch.Tensor, next_tokens: torch.Tensor,
                routing_slack: torch.Tensor | None = None) -> RowMetrics:
    """Compare `[n, vocab]` logits row by row; `next_tokens[i]` is the token that follows row i, `routing_slack[i]`
    the reference's routing slack at row i (None: a dense model)."""
    if reference.shape != device.shape or reference.shape[0] != next_tokens.shape[0]:
        raise ValueError(f"shapes differ: reference {tuple(reference.shape)}, device {tuple(device.shape)}, "
                         f"tokens {tuple(next_tokens.shape)}")
    ref, dev = reference.double(), device.double()
    nonfinite = ~torch.isfinite(dev).all(-1)
    dev = torch.where(nonfinite.unsqueeze(-1), ref, dev)
    diff = (dev - ref).abs()
    ref_lp, dev_lp = ref.log_softmax(-1), dev.log_softmax(-1)
    top2 = ref.topk(2, dim=-1)
    ref_top1, dev_top1 = top2.indices[:, 0], dev.argmax(-1)
    match = ref_top1 == dev_top1
    gap = top2.values[:, 0] - top2.values[:, 1]
    chosen = next_tokens.long().unsqueeze(-1)
    return RowMetrics(
        max_abs=diff.amax(-1),
        mean_abs=diff.mean(-1),
        rmse=diff.square().mean(-1).sqrt(),
        cosine=torch.nn.functional.cosine_similarity(ref, dev, dim=-1),
        match=match,
        hard_flip=~match & (gap >= NEAR_TIE_NAT),
        kl=(ref_lp.exp() * (ref_lp - dev_lp)).sum(-1).clamp_min(0.0),
        dlogprob=(dev_lp.gather(-1, chosen) - ref_lp.gather(-1, chosen)).abs().squeeze(-1),
        ref_top1=ref_top1,
        dev_top1=dev_top1,
        routing_slack=torch.full((ref.shape[0],), math.inf, dtype=torch.float64) if routing_slack is None
        else routing_slack.double(),
        nonfinite=nonfinite,
        after_routing_tie=torch.zeros(ref.shape[0], dtype=torch.bool),
    )


def with_routing_reach(m: RowMetrics) -> RowMetrics:
    """Mark the positions after a sequence's first routing near-tie (`m`: one whole sequence, in order)."""
    ties = routing_near_ties(m)
    return replace(m, after_routing_tie=(ties.cumsum(0) > 0) & ~ties)


def select(m: RowMetrics, rows: slice) -> RowMetrics:
    return RowMetrics(**{k: getattr(m, k)[rows] for k in RowMetrics.__dataclass_fields__})


def concat(parts: list[RowMetrics]) -> RowMetrics:
    return RowMetrics(**{k: torch.cat([getattr(p, k) for p in parts]) for k in RowMetrics.__dataclass_fields__})


def routing_near_ties(m: RowMetrics) -> torch.Tensor:
    return m.routing_slack < 0


def summarize(m: RowMetrics) -> dict[str, float | int | None]:
    """Summaries over every position but the routing near-ties (which `routing_near_ties` counts: a device may
    route those to another expert, as a top-1 flip between near-tied logits is not a hard flip) and the positions
    where the device's logits are not finite (`nonfinite_positions`, a gate of its own).

    `min_cosine` and the top-1 figures, which judge single positions, are taken before a sequence's first routing
    near-tie: after it, attention carries the other expert choice into every later position (`after_routing_ties`
    counts them), two computations that are both right. Hard flips, KL and |delta logprob| still cover those
    positions. None where no position is left to take a figure from."""
    n = int(m.match.numel())
    ties, nonfinite = routing_near_ties(m), m.nonfinite
    left_out = ties | nonfinite
    after = m.after_routing_tie & ~left_out
    clear = ~(left_out | m.after_routing_tie)
    if bool(left_out.any()) and not bool(left_out.all()):
        m = select(m, ~left_out)
        clear = clear[~left_out]
    single = select(m, clear) if bool(clear.any()) else None
    return {
        "positions": n,
        "nonfinite_positions": int(nonfinite.sum()),
        "routing_near_ties": int(ties.sum()),
        "after_routing_ties": int(after.sum()),
        "max_abs_diff": float(m.max_abs.max()),
        "mean_abs_diff": float(m.mean_abs.mean()),
        "rmse": float(m.rmse.square().mean().sqrt()),
        "min_cosine": None if single is None else float(single.cosine.min()),
        "mean_cosine": float(m.cosine.mean()),
        "top1_agreement": None if single is None else float(single.match.double().mean()),
        "top1_mismatches": None if single is None else int((~single.match).sum()),
        "hard_flips": int(m.hard_flip.sum()),
        "mean_kl": float(m.kl.mean()),
        "max_kl": float(m.kl.max()),
        "max_dlogprob": float(m.dlogprob.max()),
    }


def check_gates(
    teacher_forced: dict[str, float | int], generated: dict[str, float | int], gates: Gates
) -> list[dict[str, object]]:
    """One row per gate: metric, value, limit, passed.

    The |delta logprob| gate is on the tokens the device chose (generated steps): on prompt tokens the
    model finds unlikely, delta logprob is about the raw logit error, which `max_abs_diff` reports. Device logits
    that are NaN or infinite at any position fail `nonfinite_positions`, whatever the other gates say. A figure
    with no position to take it from (None: every position follows a routing near-tie) passes, shown as n/a.
    """
    rows = [
        ("nonfinite_positions", teacher_forced["nonfinite_positions"], "<=", 0),  # NaN or inf: always a failure
        ("min_cosine", teacher_forced["min_cosine"], ">=", gates.min_cosine),
        ("top1_agreement", teacher_forced["top1_agreement"], ">=", gates.min_top1),
        ("hard_flips", teacher_forced["hard_flips"], "<=", gates.max_hard_flips),
        ("mean_kl", teacher_forced["mean_kl"], "<=", gates.max_mean_kl),
        ("max_dlogprob_chosen", generated["max_dlogprob"], "<=", gates.max_dlogprob),
    ]
    return [
        {"metric": name, "value": value, "op": op, "limit": limit,
         "passed": value is None or bool(value >= limit if op == ">=" else value <= limit)}
        for name, value, op, limit in rows
    ]


def gates_dict(gates: Gates) -> dict[str, float | int]:
    return asdict(gates)
