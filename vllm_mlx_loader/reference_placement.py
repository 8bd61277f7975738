"""Where each weight the loader streams (named and shaped as the Hugging Face checkpoint holds it) goes in
transformers' own model, for the float32 torch reference.

transformers 4.x builds a model whose parameters carry the checkpoint's names. transformers 5 converts names
and tensors as it loads a checkpoint: it renames some modules (Mixtral's `block_sparse_moe` -> `mlp`) and fuses
per-expert matrices into 3-D parameters (`mlp.experts.{e}.gate_proj.weight` and `up_proj` become rows of
`mlp.experts.gate_up_proj[e]`, `down_proj` becomes `mlp.experts.down_proj[e]`). Its conversion table says how,
per family; the operations it uses for experts (stack experts along a new first axis, then concatenate the
projections along the next one; transpose a fused stack, Qwen3-VL-MoE's) are applied here as slices of the fused
parameter, one expert at a time. A table entry with any other operation is not followed: the column is then
skipped with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    """The destination of one streamed weight: all of `param` (the weight's axes `transpose` swapped, where given),
    or for one `expert` the `part`-th of `parts` equal blocks of rows of `param[expert]`."""

    param: str
    expert: int | None = None
    part: int = 0
    parts: int = 1
    transpose: tuple[int, int] | None = None

    def fill(self, param: Any, weight: Any) -> None:
        """Write `weight` into its region of `param`."""
        self.view(param).copy_(weight.transpose(*self.transpose) if self.transpose else weight)

    def view(self, tensor: Any) -> Any:
        """The region of `tensor` (the parameter) this weight fills."""
        if self.expert is None:
            return tensor
        rows = tensor.shape[1] // self.parts
        return tensor[self.expert].narrow(0, self.part * rows, rows)


@dataclass(frozen=True)
class _Converter:
    sources: tuple[re.Pattern[str], ...]
    target: str
    transpose: tuple[int, int] | None = None  # a stack stored with two axes swapped (sources: one, no `*`)


def conversion_rules(model: Any, model_type: str = "") -> tuple[list[tuple[str, str]], list[_Converter], list[str]]:
    """transformers' conversion table for `model` (found by its class, its config's model type, or the checkpoint's
    `model_type`, as for a language model built alone): (renamings as regex pairs, expert converters it can follow,
    descriptions of the entries it cannot). Empty on transformers 4.x, which loads checkpoint names as they are."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:
        return [], [], []
    keys = (type(model).__name__, model.config.model_type, model_type)
    mapping = next((m for k in keys if k and (m := get_checkpoint_conversion_mapping(k))), None) or []
    renames, converters, unsupported = [], [], []
    for t in mapping:
        sources, targets = list(t.source_patterns), list(t.target_patterns)
        ops = [(type(o).__name__, getattr(o, "dim", None)) for o in getattr(t, "operations", [])]
        if type(t).__name__ == "WeightRenaming" and len(sources) == len(targets) == 1:
            renames.append((sources[0], targets[0]))
        elif (type(t).__name__ == "WeightConverter" and len(targets) == 1
              and ops in ([("MergeModulelist", 0)], [("MergeModulelist", 0), ("Concatenate", 1)])
              and all(s.count("*") == 1 for s in sources) and (len(sources) == 1) == (len(ops) == 1)):
            converters.append(_Converter(tuple(re.compile(re.escape(s).replace(r"\*", r"(\d+)")) for s in sources),
                                         targets[0]))
        elif (type(t).__name__ == "WeightConverter" and len(sources) == len(targets) == 1 and "*" not in sources[0]
              and [op for op, _ in ops] == ["Transpose"]):
            op = t.operations[0]
            converters.append(_Converter((re.compile(re.escape(sources[0])),), targets[0], (op.dim0, op.dim1)))
        else:
            unsupported.append(f"{sources} -> {targets} by {[op for op, _ in ops]}")
    return renames, converters, unsupported


def placement(name: str, renames: list[tuple[str, str]], converters: list[_Converter]) -> Placement:
    """Where the checkpoint's `name` goes in transformers' model, by its conversion rules."""
    for source, target in renames:
        name = re.sub(source, target, name)
    for converter in converters:
        for part, pattern in enumerate(converter.sources):
            if m := pattern.search(name):
                param = name[: m.start()] + converter.target + name[m.end():]
                if converter.transpose:
                    return Placement(param, transpose=converter.transpose)
                return Placement(param, int(m.group(1)), part, len(converter.sources))
    return Placement(name)


def plan(weights: Iterable[tuple[str, tuple[int, ...]]], model: Any, tensors: dict[str, tuple[int, ...]],
         model_type: str = "") -> dict[str, Placement] | str:
    """Each streamed weight's placement in the model whose tensors (by name, as the weights will be looked up) have
    these shapes, or why the model cannot take them all: a name it lacks, a shape that does not fit, a fused
    parameter some expert or projection would leave unwritten."""
    renames, converters, unsupported = conversion_rules(model, model_type)
    out: dict[str, Placement] = {}
    filled: dict[str, set[tuple[int, int]]] = {}
    for name, shape in weights:
        p = placement(name, renames, converters)
        want = tensors.get(p.param)
        if want is None:
            more = f" (transformers converts {unsupported[0]}, which this reference does not follow)" if unsupported \
                else ""
            return f"{name!r} has no place in transformers' model{more}"
        if p.transpose and tuple(want) == tuple(shape):  # transformers' check_dims: already in its layout
            p = Placement(p.param)
        if p.transpose:
            shape = list(shape)
            shape[p.transpose[0]], shape[p.transpose[1]] = shape[p.transpose[1]], shape[p.transpose[0]]
        fits = tuple(want) == tuple(shape) if p.expert is None else (
            len(want) == len(shape) + 1 and p.expert < want[0] and want[1] == p.parts * shape[0]
            and tuple(want[2:]) == tuple(shape[1:]))
        if not fits:
            return f"{name!r} {list(shape)} does not fit transformers' {p.param!r} {list(want)}"
        if p.expert is not None:
            filled.setdefault(p.param, set()).add((p.expert, p.part))
        out[name] = p
    for param, got in filled.items():
        experts, parts = tensors[param][0], next(p.parts for p in out.values() if p.param == param)
        if len(got) != experts * parts:
            return f"transformers' {param!r} would be left partly unwritten ({len(got)} of {experts * parts} blocks)"
    return out
