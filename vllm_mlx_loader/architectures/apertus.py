"""Apertus: Hugging Face names and values, but mlx-lm squeezes the xIELU activation's `alpha_p` / `alpha_n` from
`[1]` to scalars (`[]`); the inverse gives them their axis back. (`act_fn.beta` and `eps` are stored as they are.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

from ..stored import Entry, Inverse, Weight
from .base import Adapter

UNSQUEEZE = Inverse("xIELU alpha [] -> [1]", lambda t: t.reshape(1), lambda s: (1,))


class ApertusAdapter(Adapter):
    families: ClassVar[dict[str, str]] = {"apertus": "ApertusForCausalLM"}

    def weights(self, entries: Iterable[Entry], config: dict[str, Any], where: str) -> list[Weight]:
        return [dataclasses.replace(w, inverse=UNSQUEEZE) if w.name.endswith((".alpha_p", ".alpha_n"))
                and w.stored_shape == () else w for w in super().weights(entries, config, where)]
